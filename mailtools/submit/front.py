"""The sendmail command line: `mailtools submit`, and the program when it is called `sendmail`
or `mailq`.

Parsed like sendmail's getopt, not with click/typer (they cannot express `-oi`, `-odi`,
`-FCronDaemon`, `-B8BITMIME` the way callers send them) and without importing typer, rich,
email, asyncio or argparse: cron, PHP, git and mutt run this once per message, so start-up time
is the feature (tests/test_submit_cli.py checks the imports; tests/bench/bench_sendmail.py the
time). The server (`--listen`, `-bs`) and queue runs (`-q`) load their modules when asked for.
"""

from __future__ import annotations

import os
import sys

from mailtools.core import exitcodes
from mailtools.core.exitcodes import DataError, TempFail, UsageError

# getopt letters. Value options take the rest of the word or the next word ("-froot", "-f root").
_VALUE = frozenset("BbCFfhLNORrVXo")
_FLAG = frozenset("itvnUmq")
# Long options of the fast front; the typer definition (mailtools/cli/submit.py) must have the
# same ones (tests/test_submit_cli.py checks), so --help, the man page and completions agree.
LONG_OPTIONS = ("--listen", "--tls-listen", "--workers", "--json", "--install-sendmail")
_DSN_NOTIFY = {"NEVER", "SUCCESS", "FAILURE", "DELAY"}

USAGE = """\
Usage: sendmail [-t] [-i|-oi] [-f SENDER] [-F NAME] [-N DSN] [-R RET] [-V ENVID] [-B TYPE]
                [-bm|-bp|-bs] [-q] [-v] [--] [RECIPIENT...]
       mailtools submit --listen HOST:PORT [--tls-listen HOST:PORT] [--workers N]
       mailq [--json]
       mailtools submit --install-sendmail PATH
Reads a message on standard input and queues it for delivery; see mailtools-submit(1).
"""


class Options:
    __slots__ = ("mode", "extract", "ignore_dots", "sender", "full_name", "notify", "ret",
                 "envid", "body", "verbose", "queue_run", "listen", "tls_listen", "json",
                 "recipients", "help", "install", "workers")

    def __init__(self) -> None:
        self.mode = "m"  # -bm deliver (default), -bp list the queue, -bs SMTP on stdin/stdout
        self.extract = False  # -t
        self.ignore_dots = False  # -i / -oi
        self.sender: str | None = None  # -f / -r
        self.full_name: str | None = None  # -F
        self.notify: str | None = None  # -N
        self.ret: str | None = None  # -R
        self.envid: str | None = None  # -V
        self.body: str | None = None  # -B
        self.verbose = False  # -v
        self.queue_run = False  # -q
        self.listen: list[str] = []
        self.tls_listen: list[str] = []
        self.json = False
        self.recipients: list[str] = []
        self.help = False
        self.install: str | None = None  # --install-sendmail PATH
        self.workers: int | None = None  # --workers N: server processes


def parse(argv: list[str]) -> Options:
    """Parse a sendmail command line; raises UsageError (exit 64) for anything refused."""
    o = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            o.recipients.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in ("--listen", "--tls-listen", "--install-sendmail", "--workers"):
                if not eq:
                    if i >= len(argv):
                        what = {"--install-sendmail": "PATH", "--workers": "N"}.get(name, "HOST:PORT")
                        raise UsageError(f"option {name} needs {what}")
                    value, i = argv[i], i + 1
                if name == "--install-sendmail":
                    o.install = value
                elif name == "--workers":
                    if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= 256:
                        raise UsageError(f"--workers takes a number of processes (1-256), not {value!r}")
                    o.workers = int(value)
                else:
                    (o.listen if name == "--listen" else o.tls_listen).append(value)
            elif name == "--json" and not eq:
                o.json = True
            elif name == "--help" and not eq:
                o.help = True
            else:
                raise UsageError(f"unknown option {name} (see mailtools-submit(1))")
            continue
        if len(arg) < 2 or arg[0] != "-":
            o.recipients.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c == "q":  # -q, -q30m, -qR...: run the queue once (an interval is ignored)
                o.queue_run = True
                break
            if c in _VALUE:
                value = arg[j:]
                if not value:
                    if i >= len(argv):
                        raise UsageError(f"option -{c} needs a value")
                    value, i = argv[i], i + 1
                _value_option(o, c, value)
                break
            if c in _FLAG:
                if c == "t":
                    o.extract = True
                elif c == "i":
                    o.ignore_dots = True
                elif c == "v":
                    o.verbose = True
                # -n (no aliasing), -U (initial submission), -m (me too): accepted, ignored
                continue
            raise UsageError(f"unknown option -{c} (see mailtools-submit(1))")
    return o


def _value_option(o: Options, c: str, value: str) -> None:
    if c in "CX":  # another config file / a traffic log: never acted on
        raise UsageError(f"option -{c} is not supported (refused for safety)")
    if c in "fr":
        o.sender = value
    elif c == "F":
        o.full_name = value
    elif c == "o":
        if value == "i":
            o.ignore_dots = True
        elif value[:1] == "Q":  # another queue directory: refused, like -C
            raise UsageError("option -oQ is not supported (refused for safety)")
        # -oem, -odi, -odb, -om, -oXXX: sendmail options with no meaning here, ignored
    elif c == "b":
        if value in ("m", "p", "s", "d"):  # -bd: the server on the configured listeners
            o.mode = value
        elif value == "i":  # newaliases: there is no alias database, nothing to do
            o.mode = "i"
        else:
            raise UsageError(f"mode -b{value} is not supported (only -bm, -bp, -bs, -bd, -bi)")
    elif c == "B":
        body = value.upper()
        if body not in ("7BIT", "8BITMIME"):
            raise UsageError(f"-B takes 7BIT or 8BITMIME, not {value!r}")
        o.body = body
    elif c == "N":
        parts = {p.strip().upper() for p in value.split(",") if p.strip()}
        if not parts or not parts <= _DSN_NOTIFY or ("NEVER" in parts and len(parts) > 1):
            raise UsageError(f"-N takes never or a list of success,failure,delay, not {value!r}")
        o.notify = ",".join(sorted(parts))
    elif c == "R":
        ret = value.upper()
        if ret not in ("HDRS", "FULL"):
            raise UsageError(f"-R takes hdrs or full, not {value!r}")
        o.ret = ret
    elif c == "V":
        if not value.isprintable() or " " in value or len(value) > 100:
            raise UsageError("-V takes a printable envelope id without spaces")
        o.envid = value
    # -h hop count, -L syslog label, -O option=value: accepted, ignored


# --- entry points ---------------------------------------------------------------------------
def submit_main(argv: list[str]) -> int:
    """`mailtools submit ...` (the fast front; `--help` goes to typer)."""
    return exitcodes.run("mailtools submit", _main, argv, "submit")


def sendmail_main(argv: list[str], prog: str = "sendmail") -> int:
    """The program called as `sendmail` (or `mailq`, which is `-bp`)."""
    if prog == "mailq":
        argv = ["-bp", *argv]
    return exitcodes.run(prog, _main, argv, prog)


def process_main(argv: list[str], prog: str = "sendmail") -> int:
    """sendmail (or mailq) as the whole process: the `sendmail` link (through
    mailtools.__main__) and the launcher. Not for callers that go on running afterwards.

    Queuing one message is a process of a few milliseconds that is over once the entry is
    fsynced, so it runs without the cyclic garbage collector and ends with os._exit() right
    after flushing stdout and stderr: the interpreter's teardown (freeing every module, a last
    collection) cost a sixth of the launcher's instructions and a seventh of the link's. Only
    when no other thread is alive and no exit handler is registered (a sitecustomize or
    coverage's .pth may add one); every file of ours is closed by then. Other modes (-q, -bs,
    -bp, the servers) end normally."""
    exitcodes.standard_fds()
    try:
        o = parse(argv) if prog == "sendmail" else None
    except UsageError:
        o = None  # sendmail_main reports it
    quick = (o is not None and o.mode == "m" and not (o.queue_run or o.listen or o.tls_listen)
             and o.install is None and not o.help)
    import gc

    if quick:
        gc.disable()
    else:
        gc.enable()  # the launcher starts with it off
    rc = sendmail_main(argv, prog)
    if quick:
        _quick_exit(rc)
    return rc


def _quick_exit(rc: int) -> None:
    # Exit handlers: let them run. Registering one takes importing atexit, so where nothing
    # did (sendmail's own path) there is none and nothing to import.
    atexit = sys.modules.get("atexit")
    if atexit is not None and getattr(atexit, "_ncallbacks", lambda: 1)():
        return
    threading = sys.modules.get("threading")
    # Another live thread, or threading's own exit hooks (concurrent.futures): a normal exit.
    if threading is not None and (threading.active_count() > 1
                                  or getattr(threading, "_threading_atexits", [None])):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(rc)


def launcher_main(argv: list[str]) -> int:
    """The script `--install-sendmail` writes (`#!python -IS`, mailtools/submit/launcher.py):
    sendmail, or `sendmail -bp` through a link named mailq."""
    return process_main(argv[1:], "mailq" if os.path.basename(argv[0]) == "mailq" else "sendmail")


def run_parsed(argv: list[str]) -> int:
    """For the typer definition: run a rebuilt argv (errors propagate to its wrapper)."""
    return _main(argv, "submit")


def _main(argv: list[str], prog: str) -> int:
    o = parse(argv)
    if o.help:
        sys.stdout.write(USAGE)
        return exitcodes.OK
    if o.install is not None:
        return install_launcher(o.install)
    if sys.flags.no_site and (o.listen or o.tls_listen or o.queue_run or o.mode in ("d", "s")):
        # The -I -S launcher: these modes need third-party packages (aiosmtpd, dnspython...)
        # from site-packages, which only `site` puts on sys.path (its documented entry point).
        import site

        site.main()
    from mailtools.core import config

    cfg = config.load()
    if o.listen or o.tls_listen or o.mode == "d":
        from mailtools.submit import msa

        return msa.serve(cfg, o.listen, o.tls_listen, o.workers)
    if o.workers is not None:
        raise UsageError("--workers goes with --listen, --tls-listen or -bd")
    if o.mode == "p":
        return list_queue(cfg, o.json)
    if o.mode == "i":
        return exitcodes.OK
    if o.mode == "s":
        from mailtools.submit import msa

        return msa.stdio(cfg, verbose=o.verbose)
    if o.queue_run and not o.recipients and not o.extract:
        return run_queue(cfg, o.verbose)
    rc = submit(cfg, o)
    if o.queue_run:
        run_queue(cfg, o.verbose)
    return rc


def install_launcher(path: str) -> int:
    from mailtools.submit import launcher

    launcher.install(path)
    sys.stdout.write(f"{path}: sendmail launcher for {sys.executable} -I -S, mailtools in "
                     f"{launcher.package_dir()}\n")
    return exitcodes.OK


def run_queue(cfg, verbose: bool) -> int:
    from mailtools.relay import runner

    stats = runner.run_once(cfg)
    if stats is None:
        if verbose:
            sys.stderr.write("submit: another queue run is in progress\n")
        return exitcodes.OK
    if verbose:
        sys.stderr.write(f"submit: queue run: {stats}\n")
    return exitcodes.OK


# --- queuing a message from stdin -----------------------------------------------------------
def local_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("LOGNAME") or os.environ.get("USER") or f"uid{os.getuid()}"


def envelope_address(value: str, hostname: str, what: str) -> str:
    """One command-line address: '<a@b>', 'Name <a@b>' or a bare local name ('root', qualified
    with the host name). Refuses what could be an option or break a line (exit 64/65)."""
    value = value.strip()
    if value.startswith("-"):
        raise UsageError(f"{what} {value!r} starts with '-': refused")
    if any(c in value for c in "\r\n\0"):
        raise DataError(f"{what} contains a line break or NUL: refused")
    if "<" in value:
        lt, gt = value.find("<"), value.rfind(">")
        value = value[lt + 1 : gt if gt > lt else len(value)].strip()
    if not value:
        return ""
    if value.startswith("-") or " " in value or len(value) > 320:
        raise UsageError(f"{what} {value!r} is not an address")
    if "@" not in value:
        value = f"{value}@{hostname}"
    elif value.endswith("@") or value.startswith("@"):
        raise UsageError(f"{what} {value!r} is not an address")
    return value


def read_message(fd: int, stop_at_dot: bool) -> bytes:
    """stdin up to EOF, or (without -i) up to a line holding a lone '.'."""
    buf = bytearray()
    scan = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            return bytes(buf)
        buf += chunk
        if stop_at_dot:
            if buf[:2] == b".\n" or buf[:3] == b".\r\n":
                return b""
            for marker in (b"\n.\n", b"\n.\r\n"):
                k = buf.find(marker, scan)
                if k >= 0:
                    return bytes(buf[: k + 1])
            scan = max(len(buf) - 3, 0)


def _dedupe(addresses: list[str]) -> list[str]:
    seen, out = set(), []
    for a in addresses:
        local, _, domain = a.rpartition("@")
        key = f"{local}@{domain.lower()}"
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def submit(cfg, o: Options) -> int:
    from mailtools.core.message import split_header
    from mailtools.submit import prepare

    hostname = cfg.hostname
    if o.sender is not None:  # -f (cron, git, mutt): no passwd lookup at all
        sender = envelope_address(o.sender, hostname, "sender")
    else:
        sender = f"{local_user()}@{hostname}"
    recipients: list[str] = []
    for arg in o.recipients:
        for part in prepare.parse_address_list(arg) if ("," in arg or "<" in arg) else [arg]:
            recipients.append(envelope_address(part, hostname, "recipient"))
    data = read_message(sys.stdin.fileno(), stop_at_dot=not o.ignore_dots)
    if data.startswith(b"From "):  # an mbox separator line is not a header field: drop it
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    if not data.strip():
        raise DataError("empty message: nothing queued")
    longest = prepare.longest_line(data)
    if longest > prepare.MAX_LINE:
        raise DataError(f"a line is {longest} octets long; RFC 5322 allows 998: nothing queued "
                        "(wrap it, or send it as quoted-printable/base64)")
    if o.extract:  # -t: To/Cc/Bcc join the command-line recipients (Postfix's behaviour)
        header, _ = split_header(data)
        for addr in prepare.header_recipients(header):
            recipients.append(envelope_address(addr, hostname, "recipient"))
    recipients = _dedupe(r for r in recipients if r)
    if not recipients:
        raise UsageError("no recipients: give them as arguments, or use -t with To/Cc/Bcc")
    from mailtools.core.queue import Queue, Recipient, new_id, nudge

    from_address = sender or f"MAILER-DAEMON@{hostname}"
    qid = new_id()  # named in our Received header, as Postfix's sendmail names its queue id
    trace = [("Received", f"by {hostname} (mailtools submit, from userid {os.getuid()})\r\n\t"
                          f"id {qid}; {prepare.rfc5322_date()}")]
    message = prepare.fixup(data, from_address=from_address, hostname=hostname,
                            full_name=o.full_name, trace=trace)

    dsn = {}
    if o.body:
        dsn["body"] = o.body
    if o.ret:
        dsn["ret"] = o.ret
    if o.envid:
        dsn["envid"] = o.envid
    rcpts = [Recipient(r, notify=o.notify) for r in recipients]
    queue_dir = cfg.data_path("queue")  # a str: cfg.queue_dir would import pathlib
    try:
        Queue(queue_dir).enqueue(sender, rcpts, message, dsn=dsn or None, qid=qid)
    except OSError as exc:
        raise TempFail(f"cannot write to the queue {queue_dir}: {exc.strerror or exc}; "
                       "nothing queued, try again") from None
    except ValueError as exc:
        raise DataError(str(exc)) from None
    nudge(queue_dir)
    log(f"{qid}: uid={os.getuid()} from=<{sender}>, size={len(message)}, nrcpt={len(rcpts)} (queued)",
        o.verbose, cfg.log)
    return exitcodes.OK


def log(line: str, verbose: bool = False, target: str = "stderr") -> None:
    """`submit[PID]: QUEUEID: from=<...>, size=..., nrcpt=...` to syslog (mail facility), and
    to stderr with -v. Never fails the command. The config's `log` decides only when it names
    a file or "off": a sendmail caller's stderr is the caller's, so "stderr" means syslog here,
    as for Postfix's postdrop."""
    if target not in ("stderr", "syslog"):
        from mailtools.core.log import say

        say("submit", line)  # load() pointed it at the file, or "off"
    elif os.path.exists("/dev/log"):  # no syslog daemon: the C library would drop the line
        try:  # (the check spares loading the syslog extension module for nothing)
            import syslog

            syslog.openlog("submit", syslog.LOG_PID, syslog.LOG_MAIL)
            syslog.syslog(syslog.LOG_INFO, line)
        except Exception:  # noqa: BLE001 - logging is best effort
            pass
    if verbose:
        try:
            sys.stderr.write(f"submit[{os.getpid()}]: {line}\n")
        except (OSError, ValueError):
            pass


# --- mailq ----------------------------------------------------------------------------------
def list_queue(cfg, as_json: bool) -> int:
    """`-bp` / `mailq`: Postfix's plain layout, or one JSON object per entry (DESIGN.md)."""
    from mailtools.core.queue import Queue

    queue = Queue(cfg.queue_dir)
    entries = sorted(queue.entries(), key=lambda e: e.queued_at) if os.path.isdir(cfg.queue_dir) else []
    rc = exitcodes.OK
    if getattr(queue, "unreadable", 0):  # Postfix's mailq shows everyone everything; we cannot
        exitcodes.error("mailq", f"{queue.unreadable} queue entr{'y' if queue.unreadable == 1 else 'ies or directories'} "
                        f"in {cfg.queue_dir} not readable by this user: the list is incomplete (run it as root)")
        rc = exitcodes.NOPERM
    out = sys.stdout
    if as_json:
        import json

        for e in entries:
            out.write(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
        return rc
    if not entries:
        out.write("Mail queue is empty\n" if rc == exitcodes.OK else "No readable queue entries\n")
        return rc
    import time

    width = max(10, max(len(e.id) for e in entries) + 1)
    out.write(f"{'-Queue ID-':<{width}} --Size-- ----Arrival Time---- -Sender/Recipient-------\n")
    total = 0
    for e in entries:
        mark = "!" if e.held else ("*" if e.state_dir == "active" else " ")
        when = time.strftime("%a %b %d %H:%M:%S", time.localtime(e.queued_at))
        out.write(f"{e.id + mark:<{width}} {e.size:>8} {when}  {e.sender or 'MAILER-DAEMON'}\n")
        pad = " " * (width + 32)
        for r in e.recipients:
            if r.final:
                continue
            if r.last_reply:
                out.write(f"{pad}({r.last_reply[:70]})\n")
            out.write(f"{pad}{r.address}\n")
        out.write("\n")
        total += e.size
    n = len(entries)
    out.write(f"-- {(total + 1023) // 1024} Kbytes in {n} Request{'s' if n != 1 else ''}.\n")
    return rc
