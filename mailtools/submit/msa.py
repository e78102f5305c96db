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
        if self.local:
            helo = info.helo or "localhost"
            received = (f"from {helo} (userid {os.getuid()})\r\n\tby {cfg.hostname} (mailtools) "
                        f"with {protocol_keyword(info.esmtp, False, False)};\r\n\t{prepare.rfc5322_date()}")
        else:
            received = received_tail(self._received_head(info),
                                     tx.recipients[0] if len(tx.recipients) == 1 else None)
        from_address = sender or info.auth_user or f"MAILER-DAEMON@{cfg.hostname}"
        data = prepare.fixup(message, from_address=from_address, hostname=cfg.hostname,
                             trace=[("Received", received)])
        dsn = {}
        if tx.body != "7BIT":
            dsn["body"] = tx.body
        if tx.smtputf8:
            dsn["smtputf8"] = True
        try:
            qid = self.queue.enqueue(sender, list(tx.recipients), data, dsn=dsn or None)
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
    from mailtools.core import tls as tlsmod
    from mailtools.core.exitcodes import ConfigError
    from mailtools.core.queue import Nudger, Queue
    from mailtools.smtpd.server import start_server

    listen = list(cfg.submit.listen if listen is None else listen)
    tls_listen = list(cfg.submit.tls_listen if tls_listen is None else tls_listen)
    ctx = tlsmod.context_from_config(cfg)
    if tls_listen and ctx is None:
        raise ConfigError("--tls-listen needs a certificate: set [tls] cert and key")
    if ctx is None and listen and not cfg.submit.allow_plaintext_auth:
        log("warning: no [tls] cert: STARTTLS is not offered, so AUTH (and submission) works "
            "only on loopback listeners")
    queue = Queue(cfg.queue_dir)
    nudger = Nudger(cfg.queue_dir)
    try:
        return await start_server(
            lambda: SubmitHandler(cfg, queue, nudger=nudger), listen, tls_listen, ctx,
            hostname=cfg.hostname, limits=limits_from(cfg),
            max_connections=cfg.submit.max_connections)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def serve(cfg, listen: list[str], tls_listen: list[str]) -> int:
    """`submit --listen/--tls-listen` (or `-bd`, with the config's listeners): run the
    submission server alone until SIGTERM/SIGINT. Command-line listener lists replace the
    config's (DESIGN.md)."""
    import asyncio
    import signal

    from mailtools.core.exitcodes import TempFail
    from mailtools.core.listen import bound_addresses
    from mailtools.smtpd.server import shutdown

    async def main() -> None:
        try:
            servers = await start(cfg, listen if (listen or tls_listen) else None,
                                  tls_listen if (listen or tls_listen) else None)
        except OSError as exc:
            raise TempFail(f"cannot listen: {exc.strerror or exc}") from None
        for addr in bound_addresses(servers):
            log(f"listening on {addr}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        shutdown(servers)
        for s in servers:
            await s.wait_closed() if sys.version_info < (3, 12) else None
        log("stopped")

    asyncio.run(main())
    return 0


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
