"""The submission server's policy (RFC 6409 MSA) on top of mailtools.smtpd.

- Who may submit: only authenticated users (530 5.7.0 otherwise, RFC 4954 6); AUTH PLAIN/LOGIN
  against the users file (core/auth) in a worker thread, failures delayed and logged.
- What they may claim: with [submit] restrict_senders, the envelope sender and every From
  address must be the user's own address (a "+tag" in the local part is theirs too), else
  553 5.7.1 (RFC 6409 6.1).
- What the message gets: a Received header `with ESMTPSA` (RFC 3848) naming the TLS version and
  cipher and the user, then the same fix-ups as the sendmail command line (prepare.py).
- Accepted means fsynced: `Queue.enqueue` returns only after file and directory are on disk,
  and only then does the client see 250 (a failure is 451 4.3.0, the client keeps the message).

`start(cfg, listen, tls_listen)` is what `serve` calls; `serve(cfg, ...)` runs it alone;
`stdio(cfg)` is `sendmail -bs` (SMTP on stdin/stdout for a local user, no AUTH needed).
"""

from __future__ import annotations

import os
import sys

from mailtools.core.log import say
from mailtools.core.message import get_header, split_header
from mailtools.core.queue import new_id
from mailtools.smtpd import replies as R
from mailtools.smtpd.received import protocol_keyword, received_head, received_tail
from mailtools.smtpd.session import ConnInfo, Handler, Limits, Transaction
from mailtools.submit import prepare


def log(line: str) -> None:
    """One line per event, Postfix's shape: `submit[PID]: QUEUEID: from=<...>, size=..., nrcpt=...`."""
    say("submit", line)


def owns(user: str, address: str) -> bool:
    """Does `address` belong to `user` (both full addresses)? Case-insensitive, and
    'alice+lists@example.test' belongs to 'alice@example.test'."""
    a_local, _, a_domain = address.rpartition("@")
    u_local, _, u_domain = user.rpartition("@")
    if a_domain.lower().rstrip(".") != u_domain.lower().rstrip("."):
        return False
    a_local, u_local = a_local.lower(), u_local.lower()
    return a_local == u_local or a_local.split("+", 1)[0] == u_local


def from_values(header: bytes) -> list[str]:
    """get_header(header, "From"), with a quick path for a header without folded lines (what
    mail programs send): the same values, without unfolding and checking every field."""
    if b"\n " in header or b"\n\t" in header or header[:1] in (b" ", b"\t"):
        return get_header(header, "From")
    out = []
    for line in header.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        colon = line.find(b":")
        if colon > 0 and line[:colon].rstrip(b" \t").lower() == b"from":
            out.append(line[colon + 1:].strip(b" \t").decode("utf-8", "surrogateescape"))
    return out


def _client(info: ConnInfo) -> str:
    return f"unknown[{info.peer_ip}]"


class SubmitHandler(Handler):
    """One connection's policy. `local=True` is `sendmail -bs`: the local user is trusted as
    the local sendmail command line is, so no AUTH is needed or offered."""

    def __init__(self, cfg, queue, *, local: bool = False, logger=log, nudger=None):
        self.cfg = cfg
        self.queue = queue
        self.nudger = nudger  # a core.queue.Nudger shared by the connections, or None
        self.local = local
        self.log = logger
        self.auth_mechanisms = () if local else ("PLAIN", "LOGIN")
        self.allow_plaintext_auth = bool(cfg.submit.allow_plaintext_auth)

    def connect(self, info: ConnInfo):
        if not self.local:
            self.log(f"connect from {_client(info)}" + (" (TLS)" if info.tls else ""))
        return None

    def disconnect(self, info: ConnInfo) -> None:
        if not self.local:
            self.log(f"disconnect from {_client(info)}")

    def auth(self, info, authzid, user, password):
        # Runs in a worker thread: the hash check may take tens of milliseconds.
        from mailtools.core.auth import load_users

        try:
            ok = load_users(self.cfg).verify(user, password)
        except OSError as exc:
            self.log(f"warning: {_client(info)}: cannot read the users file: {exc}")
            return R.TEMP_AUTH_FAILURE
        if ok:
            self.log(f"{_client(info)}: sasl_username={user}")
        else:
            self.log(f"warning: {_client(info)}: SASL authentication failed: user=<{user}>")
        return ok

    def mail_from(self, info: ConnInfo, tx: Transaction, address: str):
        if self.local:
            return None
        if info.auth_user is None:
            return R.AUTH_REQUIRED  # RFC 6409 4.3, RFC 4954 6: no anonymous submission
        if address and self.cfg.submit.restrict_senders and not owns(info.auth_user, address):
            self.log(f"NOQUEUE: reject: MAIL from {_client(info)}: 553 5.7.1 <{address}>: "
                     f"not owned by user {info.auth_user}")
            return R.SENDER_NOT_OWNED.with_text(
                f"<{address}>: Sender address rejected: not owned by user {info.auth_user}")
        return None

    def rcpt_to(self, info: ConnInfo, tx: Transaction, address: str):
        if address.lower() == "postmaster":
            return None
        if address.startswith("-"):
            return R.BAD_ADDRESS_SYNTAX
        return None  # authenticated users may send anywhere

    def _received_head(self, info: ConnInfo) -> str:
        """The connection's part of the Received header, made once per connection (and again
        if what it says changes: HELO, TLS, AUTH)."""
        tls = info.tls
        key = (info.helo, info.esmtp, info.auth_user,
               tls and (tls.get("version"), tls.get("cipher"), tls.get("bits")))
        cached = info.extra.get("received_head")
        if cached is None or cached[0] != key:
            head = received_head(
                helo=info.helo, peer_ip=info.peer_ip, by_host=self.cfg.hostname,
                protocol=protocol_keyword(info.esmtp, tls is not None, info.auth_user is not None),
                tls=tls, auth_user=info.auth_user)
            cached = info.extra["received_head"] = (key, head)
        return cached[1]

    def data(self, info: ConnInfo, tx: Transaction, message: bytes):
        # Runs in a worker thread: enqueue() fsyncs.
        cfg = self.cfg
        if not self.local and cfg.submit.restrict_senders and info.auth_user:
            owned = info.extra.setdefault("owned_from", set())  # From values seen to be theirs
            for value in from_values(split_header(message)[0]):
                if (info.auth_user, value) in owned:
                    continue
                for addr in prepare.parse_address_list(value):
                    if not owns(info.auth_user, addr):
                        self.log(f"NOQUEUE: reject: DATA from {_client(info)}: 553 5.7.1 "
                                 f"From: <{addr}> not owned by user {info.auth_user}")
                        return R.SENDER_NOT_OWNED.with_text(
                            f"From: <{addr}>: address not owned by user {info.auth_user}")
                if len(owned) < 100:
                    owned.add((info.auth_user, value))
        sender = tx.sender
        qid = new_id()  # chosen now, so that our Received header can name it as Postfix's does
        if self.local:
            helo = info.helo or "localhost"
            received = (f"from {helo} (userid {os.getuid()})\r\n\tby {cfg.hostname} (mailtools) "
                        f"with {protocol_keyword(info.esmtp, False, False)} id {qid};\r\n\t"
                        f"{prepare.rfc5322_date()}")
        else:
            received = received_tail(self._received_head(info),
                                     tx.recipients[0] if len(tx.recipients) == 1 else None,
                                     queue_id=qid)
        from_address = sender or info.auth_user or f"MAILER-DAEMON@{cfg.hostname}"
        data = prepare.fixup(message, from_address=from_address, hostname=cfg.hostname,
                             trace=[("Received", received)])
        dsn = {}
        if tx.body != "7BIT":
            dsn["body"] = tx.body
        if tx.smtputf8:
            dsn["smtputf8"] = True
        # RFC 5321 4.5.1: a bare "postmaster" (the only recipient the session takes without a
        # domain) is ours, qualified as the command line qualifies bare names; left bare it
        # went to the relay as a domain named "postmaster" and bounced
        rcpts = [r if "@" in r else f"{r}@{cfg.hostname}" for r in tx.recipients]
        try:
            self.queue.enqueue(sender, rcpts, data, dsn=dsn or None, qid=qid)
        except OSError as exc:
            self.log(f"warning: {_client(info)}: queue write failed: {exc}")
            return R.QUEUE_FAILED  # 451: the client keeps the message and retries
        except ValueError as exc:
            return R.MESSAGE_REFUSED.with_text(f"Message refused: {exc}")
        if self.nudger is not None:
            self.nudger()
        else:
            from mailtools.core.queue import nudge

            nudge(cfg.queue_dir)
        who = f", sasl_username={info.auth_user}" if info.auth_user else ""
        self.log(f"{qid}: client={_client(info)}{who}, from=<{sender}>, size={len(data)}, "
                 f"nrcpt={len(tx.recipients)} (queue active)")
        return R.QUEUED.with_text(f"Ok: queued as {qid}")


def limits_from(cfg) -> Limits:
    return Limits(max_message_size=cfg.submit.max_message_size,
                  max_recipients=cfg.submit.max_recipients,
                  auth_fail_delay=float(cfg.auth.fail_delay))


async def start(cfg, listen=None, tls_listen=None):
    """Start the submission listeners in the running loop; returns the asyncio servers."""
    from mailtools.core.exitcodes import ConfigError
    from mailtools.core.queue import Nudger, Queue
    from mailtools.smtpd.server import start_server

    listen = list(cfg.submit.listen if listen is None else listen)
    tls_listen = list(cfg.submit.tls_listen if tls_listen is None else tls_listen)
    ctx = _tls_context(cfg, listen, tls_listen)
    queue = Queue(cfg.queue_dir)
    nudger = Nudger(cfg.queue_dir)
    try:
        return await start_server(
            lambda: SubmitHandler(cfg, queue, nudger=nudger), listen, tls_listen, ctx,
            hostname=cfg.hostname, limits=limits_from(cfg),
            max_connections=cfg.submit.max_connections)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _tls_context(cfg, listen: list[str], tls_listen: list[str]):
    """The server's TLS context (None without [tls] cert); ConfigError when implicit-TLS
    listeners are asked for without one, a warning when STARTTLS cannot be offered."""
    from mailtools.core import tls as tlsmod
    from mailtools.core.exitcodes import ConfigError

    ctx = tlsmod.context_from_config(cfg)
    if tls_listen and ctx is None:
        raise ConfigError("--tls-listen needs a certificate: set [tls] cert and key")
    if ctx is None and listen and not cfg.submit.allow_plaintext_auth:
        log("warning: no [tls] cert: STARTTLS is not offered, so AUTH (and submission) works "
            "only on loopback listeners")
    return ctx


def worker_count(cfg, workers: int | None) -> int:
    """--workers N, else [submit] workers, where 0 (the default) means one per CPU."""
    from mailtools.core.exitcodes import ConfigError

    n = int(cfg.submit.workers) if workers is None else workers
    if n < 0:
        raise ConfigError(f"[submit] workers must be 0 (one per CPU) or more, not {n}")
    if n:
        return n
    from mailtools.core.prefork import usable_cpus

    return usable_cpus()


def serve(cfg, listen: list[str], tls_listen: list[str], workers: int | None = None) -> int:
    """`submit --listen/--tls-listen` (or `-bd`, with the config's listeners): run the
    submission server alone until SIGTERM/SIGINT; SIGHUP reloads the configuration and the
    users file. Command-line listener lists replace the config's (DESIGN.md). With more than
    one worker (the default: one per CPU) the listeners are shared by worker processes
    (mailtools.core.prefork); with one, this process serves them itself."""
    if not (listen or tls_listen):
        listen, tls_listen = list(cfg.submit.listen), list(cfg.submit.tls_listen)
    n = worker_count(cfg, workers)
    if n > 1:
        return _serve_workers(cfg, listen, tls_listen, n)
    import asyncio

    from mailtools.core.exitcodes import TempFail
    from mailtools.core.listen import bound_addresses
    from mailtools.smtpd.server import drain, shutdown

    async def main() -> None:
        # The handlers first: a SIGTERM sent as soon as the port answers is a stop, not death
        stop = asyncio.Event()
        listeners: list = []
        _signals(asyncio.get_running_loop(), stop, lambda: reload(cfg, listeners, 1))
        try:
            servers = await start(cfg, listen, tls_listen)
        except OSError as exc:
            raise TempFail(f"cannot listen: {exc.strerror or exc}") from None
        for addr in bound_addresses(servers):
            log(f"listening on {addr}")
        listeners += [s._mailtools_listener for s in servers[:1]]  # one per start_server call
        await stop.wait()
        shutdown(servers)
        await drain(listeners)
        log("stopped")

    asyncio.run(main())
    return 0


def _serve_workers(cfg, listen: list[str], tls_listen: list[str], n: int) -> int:
    """The parent: bind, then hand connections to N worker processes (core/prefork)."""
    from mailtools.core import prefork

    from mailtools.core.exitcodes import TempFail

    prefork.hold_signals()  # until the parent can handle them (the port answers before that)
    try:
        socks, ctx = bind(cfg, listen, tls_listen)
    except OSError as exc:
        raise TempFail(f"cannot listen: {exc.strerror or exc}") from None
    return supervise(cfg, socks, ctx, n)


def bind(cfg, listen: list[str], tls_listen: list[str]):
    """Bind the listeners for worker processes: ([(socket, 1 if implicit TLS else 0)], TLS
    context). OSError when one cannot be bound (the others are closed: the caller says which
    exit status that is), ConfigError for a bad address or implicit TLS without a certificate."""
    from mailtools.core import prefork
    from mailtools.core.exitcodes import ConfigError

    ctx = _tls_context(cfg, listen, tls_listen)
    socks: list = []
    try:
        for specs, implicit in ((listen, 0), (tls_listen, 1)):
            for spec in specs:
                socks += [(sock, implicit) for sock in prefork.bind(spec)]
    except (ValueError, OSError) as exc:
        for sock, _ in socks:
            sock.close()
        if isinstance(exc, ValueError):
            raise ConfigError(str(exc)) from None
        raise
    return socks, ctx


def supervise(cfg, socks: list, ctx, n: int, *, stop_fd: int | None = None, announce: bool = True) -> int:
    """Run N worker processes on bound listeners until stopped (core/prefork.Supervisor);
    `stop_fd`: a pipe whose end (its writer closed: `serve` stopping, or gone) is one more
    way to say "drain"."""
    from mailtools.core import prefork

    if announce:
        from types import SimpleNamespace

        from mailtools.core.listen import bound_addresses

        for addr in bound_addresses([SimpleNamespace(sockets=[sock for sock, _ in socks])]):
            log(f"listening on {addr}")

    # What the workers run is imported here, before the first fork: a worker started later
    # (a restart) runs the same code as the others even if the files changed on disk since,
    # and starts without import time.
    import asyncio
    import threading

    import mailtools.core.auth  # noqa: F401
    import mailtools.core.queue  # noqa: F401
    from mailtools.smtpd.server import finish_hooks

    def worker_main(channel) -> int:
        try:
            return asyncio.run(_worker(cfg, ctx, channel, n))
        finally:
            finish_hooks()
            for t in threading.enumerate():  # the queue's remover, if it ran
                if t is not threading.current_thread() and not t.daemon:
                    t.join(60)

    sup = prefork.Supervisor(socks, n, worker_main, log=log, stop_fd=stop_fd,
                             on_hup=lambda: reload(cfg, (), n))
    log(f"{n} worker processes")
    return sup.run()


async def _worker(cfg, ctx, channel, n: int) -> int:
    """One worker process: serve the connections the parent hands over until told to stop."""
    import asyncio

    from mailtools.core.queue import Nudger, Queue
    from mailtools.smtpd.server import adopt, drain, make_listener

    loop = asyncio.get_running_loop()
    queue = Queue(cfg.queue_dir)
    nudger = Nudger(cfg.queue_dir)
    listener = make_listener(lambda: SubmitHandler(cfg, queue, nudger=nudger), ctx,
                             hostname=cfg.hostname, limits=limits_from(cfg),
                             max_connections=_share(cfg, n), on_close=channel.closed)
    pending: set = set()  # implicit TLS handshakes still running

    def on_connection(sock, index: int) -> None:
        task = loop.create_task(adopt(listener, sock, index == 1))
        pending.add(task)
        task.add_done_callback(pending.discard)

    stop = asyncio.Event()
    _signals(loop, stop, lambda: reload(cfg, [listener], n), worker=True)
    channel.attach(loop, on_connection, stop.set)  # the parent gone: drain and exit too
    await stop.wait()
    channel.detach()
    for task in list(pending):
        task.cancel()
    await drain([listener])
    await channel.released()  # what the parent sent before it read detach() went back to it
    nudger.close()
    return 0


def _share(cfg, n: int) -> int:
    """Each of n workers takes its share of [submit] max_connections (the parent gives every
    new connection to the least busy one, so the total is the configured limit)."""
    return max(1, -(-int(cfg.submit.max_connections) // n))


def _signals(loop, stop, on_hup, worker: bool = False) -> None:
    """SIGTERM and SIGINT: stop (a second one: exit at once; accepted mail is fsynced already);
    SIGHUP: on_hup(). A worker (see core/prefork) leaves SIGINT to its parent, takes every
    SIGTERM as the one drain, and exits at once on the parent's SIGQUIT."""
    import signal

    def on_stop() -> None:
        if stop.is_set() and not worker:
            os._exit(0)
        stop.set()

    for sig in (signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if worker:
        loop.add_signal_handler(signal.SIGQUIT, lambda: os._exit(0))
    loop.add_signal_handler(signal.SIGHUP, on_hup)


def reload(cfg, listeners, n: int) -> None:
    """SIGHUP: read the configuration again (values read per connection, message or login take
    effect at once; listener addresses and the number of workers need a restart) and the
    users file (even one whose size and time stamp did not change)."""
    from mailtools.core import auth
    from mailtools.core import config as cfgmod

    try:
        cfgmod.reload_into(cfg)
    except Exception as exc:  # noqa: BLE001 - keep serving with the old configuration
        log(f"warning: reload failed, keeping the old configuration: {exc}")
        return
    auth.forget_users()  # load_users() re-reads at the next login
    for listener in listeners:
        listener.limits = limits_from(cfg)
        listener.max_connections = _share(cfg, n)
    log("reloaded the configuration and the users file")


def stdio(cfg, verbose: bool = False) -> int:
    """`sendmail -bs`: one SMTP session on stdin/stdout for the local user."""
    from mailtools.core.queue import Queue
    from mailtools.smtpd.session import Session, run_blocking

    info = ConnInfo(peer=("127.0.0.1", 0), local=("127.0.0.1", 0), hostname=cfg.hostname,
                    loopback=True, session_id="stdio")
    handler = SubmitHandler(cfg, Queue(cfg.queue_dir), local=True,
                            logger=log if verbose else (lambda line: None))
    session = Session(handler, info, limits_from(cfg))
    out = sys.stdout.buffer

    def send(data: bytes) -> None:
        out.write(data)
        out.flush()

    alive = run_blocking(session, session.start(), send)
    fd = sys.stdin.fileno()
    last_cr = False
    while alive:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        # A local pipe, not the network: a script writing bare LF lines is trusted to mean
        # CRLF (as Postfix's -bs does), so "\n.\n" ends its message here and only here.
        fixed = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if last_cr and chunk.startswith(b"\n"):
            fixed = fixed[1:]  # the CR came at the end of the previous read
        last_cr = chunk.endswith(b"\r")
        alive = run_blocking(session, session.feed(fixed), send)
    return 0
