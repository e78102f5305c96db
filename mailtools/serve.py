"""`mailtools serve`: the whole mail flow with one command, on an embedded default.

A fresh data root gets a commented mailtools.toml, a self-signed certificate and the standard
folders; then one asyncio loop hosts the listeners (inbound SMTP, IMAP and POP3 with and without
TLS) and the relay queue runner. Submission (STARTTLS and implicit TLS) runs in that loop too on
a one-CPU machine; with two or more usable CPUs it runs in worker processes of its own (the
same parent and workers `submit --listen` runs, core/prefork, in a child process started with
the listening sockets): one Python process is one core, and taking a message in (TLS, SMTP, the MSA
fix-ups, the queue's writes) costs about half of what the whole flow costs serve. The
submission workers queue and nudge the queue runner over the queue's FIFO, as `submit` does for
`relay --daemon`. Each piece is the same code its own subcommand runs: this module only wires
them together.

Signals: SIGTERM/SIGINT stop accepting, let in-flight sessions finish (bounded), stop the queue
runner after its current delivery, and exit 0; a second one exits at once (accepted mail is
already fsynced in the queue or a Maildir, and a claimed queue entry is recovered on the next
start). SIGHUP reloads the configuration and the users file (forwarded to the submission
processes). The submission processes drain when serve closes their pipe (it stops, or is gone:
a SIGKILLed serve leaves no server behind); one that dies is started again.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from mailtools.core import config as cfgmod
from mailtools.core.exitcodes import ConfigError, Unavailable, UsageError
from mailtools.core.listen import parse_listen

# The embedded default: unprivileged ports on loopback (DESIGN.md, `serve`).
DEFAULT_LISTENERS = {
    "smtp": "127.0.0.1:2525",
    "submission": "127.0.0.1:5870",
    "submissions": "127.0.0.1:4650",
    "imap": "127.0.0.1:1143",
    "imaps": "127.0.0.1:9930",
    "pop3": "127.0.0.1:1100",
    "pop3s": "127.0.0.1:9950",
}

CONFIG_TEMPLATE = """\
# mailtools configuration, written by `mailtools serve` for a fresh data root.
# Every key is documented in mailtools.toml(5); delete a line to get the built-in default.
# Other commands find this file through MAILTOOLS_HOME={root} (or --config {root}/mailtools.toml).

hostname = "{hostname}"            # banners, Received headers, Message-IDs
root = "."                          # this directory: queue/, mail/DOMAIN/USER/, users
local_domains = {local_domains}     # delivered here; everything else is relayed

[dns]
nameservers = []                    # empty: the system resolver; or ["127.0.0.1:53"]
timeout = 5

[relay]
listen = ["{smtp}"]                 # inbound SMTP for local_domains (25 on a real server)
remote_port = 25                    # port used on remote MX hosts
smarthost = ""                      # "host:port" to send everything through one relay
retry = ["5m", "15m", "30m", "1h", "2h", "4h"]
max_queue_time = "5d"

[submit]
listen = ["{submission}"]           # submission with STARTTLS + AUTH (587 on a real server)
tls_listen = ["{submissions}"]      # submission over implicit TLS (465 on a real server)

[imap]
listen = ["{imap}"]                 # IMAP with STARTTLS (143)
tls_listen = ["{imaps}"]            # IMAP over TLS (993)

[pop3]
listen = ["{pop3}"]                 # POP3 with STLS (110)
tls_listen = ["{pop3s}"]            # POP3 over TLS (995)

[tls]
cert = "tls/cert.pem"               # self-signed for {hostname}; replace with a real one
key = "tls/key.pem"

[auth]
users = "users"                     # `mailtools user add me@localhost` writes it
"""


def init_root(root: Path, hostname: str | None = None) -> Path:
    """Create a data root with its config, certificate and folders; returns the config path.

    Existing files are never overwritten, so running serve again keeps the admin's edits.
    """
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("queue", "mail", "tls"):
        try:
            (root / sub).mkdir()
        except FileExistsError:
            continue
        if sub == "mail":
            # chattr +T, as on the queue's active/: each domain's Maildirs go to a block group of
            # the kernel's choosing instead of the data root's, whose recently deleted inodes
            # (on ext4 without a journal) make every file creation there scan (a root in a
            # busy /tmp: ~0.3 ms of CPU per delivered message, 0.04 ms elsewhere)
            from mailtools.core.queue import spread_subdirs

            spread_subdirs(str(root / sub))
    hostname = hostname or cfgmod.default_hostname()
    conf = root / "mailtools.toml"
    if not conf.exists():
        domains = sorted({"localhost", hostname})
        text = CONFIG_TEMPLATE.format(
            root=root, hostname=hostname, local_domains="[" + ", ".join(f'"{d}"' for d in domains) + "]",
            **DEFAULT_LISTENERS,
        )
        tmp = conf.with_suffix(".toml.tmp")
        tmp.write_text(text)
        os.replace(tmp, conf)
    cert, key = root / "tls" / "cert.pem", root / "tls" / "key.pem"
    if not cert.exists() or not key.exists():
        from mailtools.core.tls import make_self_signed

        make_self_signed(hostname, cert, key)
    return conf


def resolve_config(root: str | None) -> cfgmod.Config:
    """The configuration serve runs with (see mailtools-serve(1) for the rules)."""
    explicit = cfgmod._explicit_path or os.environ.get("MAILTOOLS_CONFIG")
    if root is not None:
        os.environ["MAILTOOLS_HOME"] = str(Path(root).resolve())
    if explicit:
        return cfgmod.load(explicit, reload=True)
    if root is None:
        found = cfgmod.find_path()
        if found:
            return cfgmod.load(found, reload=True)
    path = init_root(Path(root).resolve() if root else cfgmod.default_root())
    return cfgmod.load(str(path), reload=True)


@dataclass
class Component:
    label: str  # what the banner calls it
    start: str  # "module:function" -> async start(cfg, listen=, tls_listen=) -> list[Server]
    listen: list[str]
    tls_listen: list[str]
    note: str
    tls_note: str


def components(cfg) -> list[Component]:
    return [
        Component("smtp", "mailtools.relay.inbound:start", cfg.relay.listen, [],
                  "inbound SMTP for " + ", ".join(cfg.local_domains), ""),
        Component("submission", "mailtools.submit.msa:start", cfg.submit.listen, cfg.submit.tls_listen,
                  "submission, STARTTLS + AUTH", "submission, implicit TLS + AUTH"),
        Component("imap", "mailtools.imap.server:start", cfg.imap.listen, cfg.imap.tls_listen,
                  "IMAP, STARTTLS", "IMAP over TLS"),
        Component("pop3", "mailtools.pop3.server:start", cfg.pop3.listen, cfg.pop3.tls_listen,
                  "POP3, STLS", "POP3 over TLS"),
    ]


def _load(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _users_exist(cfg) -> bool:
    try:
        with open(cfg.users_file, encoding="utf-8", errors="replace") as f:
            return any(line.strip() and not line.startswith("#") for line in f)
    except OSError:
        return False


def submission_workers(cfg, workers: int | None = None) -> int:
    """--submission-workers N, else [serve] submission_workers: how many submission worker
    processes run beside serve's own (0: submission in serve's own loop); -1, the default,
    means 1 when this process may use two or more CPUs, else 0."""
    n = int(cfg.serve.submission_workers) if workers is None else workers
    if n < -1 and workers is not None:  # the command line's: a usage error (64), not the file's (78)
        raise UsageError(f"--submission-workers must be -1 (automatic), 0 or more, not {n}")
    if n < -1:
        raise ConfigError(f"[serve] submission_workers must be -1 (automatic), 0 or more, not {n}")
    if n == -1:
        from mailtools.core.prefork import usable_cpus

        return 1 if usable_cpus() > 1 else 0
    return n


class SubmissionProcess:
    """Submission in worker processes under a child of serve's (mailtools.submit.msa.supervise).
    The listeners are bound here, so an address in use is serve's error 69 as for every other
    listener, and kept open here, so a child that dies is started again on the same sockets."""

    RESTART_PAUSE_MAX = 30.0

    def __init__(self, cfg, n: int):
        from mailtools.submit import msa

        self.cfg, self.n = cfg, n
        try:
            self.socks = msa.bind(cfg, list(cfg.submit.listen), list(cfg.submit.tls_listen))[0]
        except OSError as exc:
            raise Unavailable(f"cannot listen for submission: {exc.strerror or exc}") from None
        self.proc = None
        self.pid = 0
        self.stop_w = -1
        self.stopping = False
        self.started = 0.0
        self.pause = 0.0

    def start(self) -> None:
        """Start the child: a fresh interpreter running submission_child() on our sockets,
        draining when stop_w is closed. Not a fork: serve has threads by the time it restarts
        one, and a fork would carry their locks (a buffered stderr mid-write, an executor
        whose threads are gone) into the child."""
        import json
        import subprocess
        import time

        from mailtools.core.prefork import _FORWARDED

        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        fds = [sock.fileno() for sock, _ in self.socks]
        spec = json.dumps({"config": self.cfg.source, "pinned": self.cfg.__dict__.get("_pinned", {}),
                           "workers": self.n, "stop_fd": stop_r,
                           "listeners": [[fd, implicit] for fd, (_, implicit) in zip(fds, self.socks)]})
        code = ("import sys; from mailtools.core.exitcodes import run; from mailtools.serve import "
                "submission_child; sys.exit(run('mailtools serve', submission_child, sys.argv[1]))")
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the start, so inherited blocked: the child's signals wait until it
        # has its handlers (prefork.Supervisor.run unblocks them), never kill it half started.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            # -P: not the working directory first on sys.path (as -c or -m would put it)
            proc = subprocess.Popen([sys.executable, "-P", "-c", code, spec], pass_fds=[*fds, stop_r])
        except OSError:
            os.close(stop_w)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            os.close(stop_r)
        self.proc, self.pid, self.stop_w, self.started = proc, proc.pid, stop_w, time.monotonic()

    def stop(self) -> None:
        """Drain and exit (idempotent: the pipe closes once)."""
        self.stopping = True
        if self.stop_w >= 0:
            os.close(self.stop_w)
            self.stop_w = -1

    def signal(self, sig: int) -> None:
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def reaped(self) -> int | None:
        """The child's exit status if it has ended (reaped now), else None."""
        if not self.pid:
            return 0
        code = self.proc.poll()
        if code is not None:
            self.pid = 0
        return code

    async def watch(self) -> None:
        """Start the child again when it ends while serve runs (at once, or after a pause
        growing from 1 s to 30 s when it keeps dying within a second of its start)."""
        import time

        while not self.stopping:
            await asyncio.sleep(0.5)
            code = self.reaped()
            if code is None or self.stopping:
                continue
            lived = time.monotonic() - self.started
            self.pause = 0.0 if lived >= 1.0 else min(max(self.pause * 2, 1.0), self.RESTART_PAUSE_MAX)
            _say(f"mailtools serve: warning: the submission process ended ({code}); starting it again"
                 + (f" in {self.pause:.0f} s" if self.pause else ""))
            if self.pause:
                await asyncio.sleep(self.pause)
            if not self.stopping:
                if self.stop_w >= 0:
                    os.close(self.stop_w)
                    self.stop_w = -1
                try:
                    self.start()
                except OSError as exc:  # no fork now (a process limit, memory): try again
                    _say(f"mailtools serve: warning: cannot start the submission process: {exc}")
                    self.started = time.monotonic()  # as a quick death: the pause grows

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the child to end; whether it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.reaped() is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def close_sockets(self) -> None:
        for sock, _ in self.socks:
            sock.close()


def submission_child(spec: str) -> int:
    """The submission process SubmissionProcess.start() runs: the parent and workers of
    `submit --listen` (msa.supervise) on the listening sockets serve passed down."""
    import json
    import socket

    from mailtools.submit import msa

    args = json.loads(spec)
    cfg = cfgmod.load(args["config"], reload=True) if args["config"] else cfgmod.load()
    for key, value in args["pinned"].items():  # what serve's command line said (--hostname)
        cfgmod.pin(cfg, key, value)
    socks = [(socket.socket(fileno=fd), implicit) for fd, implicit in args["listeners"]]
    from mailtools.core.tls import context_from_config

    ctx = context_from_config(cfg)  # (serve checked it: msa.bind)
    return msa.supervise(cfg, socks, ctx, args["workers"], stop_fd=args["stop_fd"], announce=False)


class Server:
    """The running system: listeners + queue runner in one loop (submission perhaps in a
    SubmissionProcess)."""

    def __init__(self, cfg, submission: SubmissionProcess | None = None):
        self.cfg = cfg
        self.submission = submission
        self.watch_task: asyncio.Task | None = None
        self.servers: list = []
        self.runner_task: asyncio.Task | None = None
        self.stop_event = asyncio.Event()
        self.signals = 0

    async def start(self) -> None:
        cfg = self.cfg
        lines = [f"mailtools serve: data root {cfg.root}, hostname {cfg.hostname}"]
        for comp in components(cfg):
            if not comp.listen and not comp.tls_listen:
                continue
            where = ""
            if comp.label == "submission" and self.submission is not None:
                n = self.submission.n
                where = f" ({n} worker process{'es' if n > 1 else ''})"
                self.watch_task = asyncio.create_task(self.submission.watch())
            else:
                start = _load(comp.start)
                try:
                    servers = await start(cfg, listen=comp.listen, tls_listen=comp.tls_listen)
                except OSError as exc:
                    await self.close()
                    raise Unavailable(f"cannot listen for {comp.label}: {exc.strerror or exc}") from None
                self.servers.extend(servers)
            for addr in comp.listen:
                lines.append(f"  {comp.label:<12} {addr:<22} {comp.note}{where}")
            for addr in comp.tls_listen:
                lines.append(f"  {comp.label + 's':<12} {addr:<22} {comp.tls_note}{where}")
        daemon = _load("mailtools.relay.runner:daemon")
        self.runner_task = asyncio.create_task(daemon(cfg, self.stop_event))
        route = f"smarthost {cfg.relay.smarthost}" if cfg.relay.smarthost else "MX lookup"
        lines.append(f"  {'relay':<12} {'queue ' + str(cfg.queue_dir):<22} outbound via {route}")
        if not _users_exist(cfg):
            domain = "localhost" if "localhost" in cfg.local_domains else (cfg.local_domains or [cfg.hostname])[0]
            if cfg.source == os.path.join(str(cfg.root), "mailtools.toml"):  # the root's own file
                command = f"MAILTOOLS_HOME={shlex.quote(str(cfg.root))} mailtools user add me@{domain}"
            else:
                command = f"mailtools --config {shlex.quote(cfg.source)} user add me@{domain}"
            lines += ["No users yet. Create one (it asks for a password) with:", f"  {command}"]
        lines.append("Ready. Stop with Ctrl-C (SIGTERM); reload config and users with SIGHUP.")
        _say("\n".join(lines))

    async def close(self, grace: float = 10.0) -> None:
        from mailtools.smtpd.server import drain, listeners_of, shutdown

        # Every server stops listening; an SMTP session (inbound, and submission in this loop)
        # finishes the step under way (a login's hash, a message's fsync: its reply goes out)
        # and gets 421, as under `submit --listen`; POP3 and IMAP sessions, same shape, get
        # -ERR and BYE. (wait_closed() does not wait for sessions in Python 3.11, and once the
        # loop ends a reply still due is never sent: a client that never saw its 250 sends
        # the queued message again.)
        shutdown(self.servers)
        self.stop_event.set()
        listeners = listeners_of(self.servers)
        waits = [s.wait_closed() for s in self.servers]
        if listeners:
            waits.append(drain(listeners, grace))
        if self.submission is not None:
            self.submission.stop()
            # its listeners too: the submission process closes its copies as it drains, and
            # ours would take new connections that nobody accepts any more (they hung
            # unanswered until serve exited)
            self.submission.close_sockets()
            waits.append(self.submission.wait(grace))
        if self.runner_task is not None:
            waits.append(self.runner_task)
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), grace)
            except asyncio.TimeoutError:
                pass
        if self.submission is not None and not await self.submission.wait(0):
            self.submission.signal(signal.SIGTERM)  # its second stop: the workers exit now
            await self.submission.wait(5)

    def on_stop_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 1:
            # Accepted mail is already durable; a claimed entry is recovered on the next start.
            _say("mailtools serve: second signal, exiting now")
            if self.submission is not None:
                self.submission.stop()
                self.submission.signal(signal.SIGTERM)  # its second stop: no drain
            os._exit(0)
        _say(f"mailtools serve: {signal.Signals(signum).name}, finishing in-flight work")
        self.stop_event.set()

    def on_hup(self) -> None:
        from mailtools.core import auth

        try:
            cfgmod.reload_into(self.cfg)
        except Exception as exc:  # noqa: BLE001 - keep serving with the old config
            _say(f"mailtools serve: reload failed, keeping the old configuration: {exc}")
            return
        auth.forget_users()  # also a users file edited in place with the same size and time
        if self.submission is not None:
            self.submission.signal(signal.SIGHUP)
        _say("mailtools serve: configuration and users reloaded")




async def _main(cfg, submission: SubmissionProcess | None = None) -> int:
    from mailtools.smtpd.server import SWITCH_INTERVAL

    sys.setswitchinterval(SWITCH_INTERVAL)  # for its delivery threads too (see there)
    srv = Server(cfg, submission)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, srv.on_stop_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, srv.on_hup)
    await srv.start()
    await srv.stop_event.wait()
    await srv.close()
    _say("mailtools serve: stopped")
    return 0


def run(root: str | None = None, overrides: dict[str, str] | None = None, hostname: str | None = None,
        workers: int | None = None) -> int:
    cfg = resolve_config(root)
    if hostname:
        cfgmod.pin(cfg, "hostname", hostname)
    for name, addr in (overrides or {}).items():
        if not addr:
            continue
        table, key = {
            "smtp": ("relay", "listen"), "submission": ("submit", "listen"),
            "submissions": ("submit", "tls_listen"), "imap": ("imap", "listen"),
            "imaps": ("imap", "tls_listen"), "pop3": ("pop3", "listen"), "pop3s": ("pop3", "tls_listen"),
        }[name]
        if addr != "off":
            try:
                parse_listen(addr)
            except ValueError as exc:
                raise UsageError(f"--{name}: {exc}") from None
        setattr(getattr(cfg, table), key, [] if addr == "off" else [addr])
    for comp in components(cfg):  # the rest came from the configuration file
        for addr in (*comp.listen, *comp.tls_listen):
            try:
                parse_listen(addr)
            except ValueError as exc:
                raise ConfigError(f"{cfg.source}: {comp.label}: {exc}") from None
    n = submission_workers(cfg, workers)
    submission = None
    if n and (cfg.submit.listen or cfg.submit.tls_listen):
        # Bound and started before the banner (an address in use is exit 69 here, as for the
        # listeners the loop opens)
        submission = SubmissionProcess(cfg, n)
        submission.start()
    try:
        return asyncio.run(_main(cfg, submission))
    finally:
        if submission is not None:
            submission.stop()
            submission.close_sockets()
