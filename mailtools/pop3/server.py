"""The thin asyncio layer around `mailtools.pop3.session.Session`: it only moves bytes.

One asyncio.Protocol per connection feeds the session what the client sent and carries out
the events it hands back: write, log in (password check and maildrop load in a thread), wait
(failed logins), upgrade to TLS (STLS), close. It also owns what needs a clock or a count of
sockets: the autologout timer (RFC 1939 3) and the connection limit.

    servers = await start(cfg, listen=["127.0.0.1:1100"], tls_listen=["127.0.0.1:9950"])
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys

from mailtools.core.log import say as _say
from mailtools.pop3 import replies as R
from mailtools.core.listen import bound_addresses, is_loopback, parse_listen
from mailtools.pop3.session import (
    AuthFailed, Close, Delay, InUse, Login, MaildropError, Session, StartTLS)

HANDSHAKE_TIMEOUT = 30.0
MAX_PENDING_INPUT = 1 << 20
log = logging.getLogger("mailtools.pop3")


def say(line: str) -> None:
    """One log line per event on stderr, Dovecot's shape: `pop3[PID]: Login: user=<...>, rip=...`."""
    _say("pop3", line)


class _Listener:
    """What the connections of one `start` share."""

    def __init__(self, cfg, backend, ssl_context):
        self.cfg = cfg
        self.backend = backend
        self.ssl_context = ssl_context
        self.active: set[POP3Protocol] = set()


class POP3Protocol(asyncio.Protocol):
    def __init__(self, listener: _Listener, implicit_tls: bool):
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.peer = "?"
        self.session: Session | None = None
        self._busy = False  # an event (login, delay, TLS) is being carried out
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._closed = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 600.0
        # While STLS's handshake runs: the first command a client sends right behind its TLS
        # Finished (GnuTLS clients put both in one segment) reaches data_received, decrypted,
        # before start_tls() returns; it is kept here and fed after tls_started().
        self._starting_tls = False
        self._early = bytearray()

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        L = self.listener
        cfg = L.cfg
        if len(L.active) >= cfg.pop3.max_connections:
            transport.write(R.line(R.ERR_TOO_MANY_CONNECTIONS))
            transport.close()
            self._closed = True
            return
        L.active.add(self)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.peer = str((transport.get_extra_info("peername") or ("?",))[0])
        self.session = Session(
            L.backend,
            hostname=cfg.hostname,
            tls_active=self.implicit_tls,
            tls_available=L.ssl_context is not None,
            plaintext_ok=is_loopback(local) or cfg.pop3.allow_plaintext_auth,
            fail_delay=cfg.auth.fail_delay,
        )
        self._timeout = float(cfg.pop3.idle_timeout)
        self._last = self.loop.time()
        self._timer = self.loop.call_at(self._last + self._timeout, self._check_timeout)
        self._run(self.session.greeting())

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._starting_tls:
            self._early += data
            return
        self._last = self.loop.time()
        self.session.receive(data)
        self._pump()
        # A client pipelining faster than we answer (or while a login is checked) is made to
        # wait by TCP instead of filling our memory.
        if not self._closed and not self._read_paused and self.session.pending() > MAX_PENDING_INPUT:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self):
        # A script may pipeline USER..QUIT and close its sending side at once: answer what it
        # sent (QUIT included) before closing; a plain EOF closes at once, deleting nothing.
        self._eof = True
        if self.session is not None and not self._closed and (self._busy or self.session.pending()):
            return True
        return False

    def connection_lost(self, exc) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.listener.active.discard(self)
        s = self.session
        if s is None:
            return
        if s.state == "AUTHORIZATION":
            if s.auth_failures:
                say(f"Aborted login (auth failed, {s.auth_failures} attempts): rip={self.peer}")
        else:
            c = s.counts
            how = "Logged out" if s.state == "UPDATE" else "Disconnected, nothing deleted"
            say(f"Disconnected: {how} top={c['top']}/{c['top_bytes']}, retr={c['retr']}/{c['retr_bytes']}, "
                f"del={len(s.deleted) if s.state == 'UPDATE' else 0}/{s.maildrop_size}, "
                f"user=<{s.login_name}>, rip={self.peer}")
        s.connection_lost()  # releases the maildrop, deletes nothing

    def pause_writing(self) -> None:
        self._write_paused = True  # the client reads slowly: stop taking commands

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last = self.loop.time()  # a client reading a large message is not idle
        self._pump()

    # --- events ------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle buffered commands one by one until an event must wait for something."""
        while not (self._busy or self._closed or self._write_paused):
            try:
                events = self.session.next_events()
            except Exception:  # noqa: BLE001 - a bug ends this session, never the server
                log.exception("pop3: internal error in a session")
                events = self.session.internal_error()
            if events is None:
                if self._eof:
                    self._closed = True
                    self.transport.close()
                    return
                if self._read_paused:
                    self._read_paused = False
                    self.transport.resume_reading()
                return
            self._run(events)

    def _run(self, events: list) -> None:
        for i, ev in enumerate(events):
            if self._closed:
                return
            if type(ev) is bytes:
                self.transport.write(ev)
            elif isinstance(ev, Close):
                self._closed = True
                self.transport.close()
                return
            else:
                self._busy = True
                if isinstance(ev, StartTLS):
                    self.transport.pause_reading()  # nothing plaintext reaches the session now
                self.loop.create_task(self._carry_out(ev, events[i + 1:]))
                return

    async def _carry_out(self, ev, rest: list) -> None:
        try:
            await self._carry_out_1(ev, rest)
        except Exception:  # noqa: BLE001 - a bug ends this session, never the server
            log.exception("pop3: internal error in a session")
            self._busy = False
            if not self._closed:
                self._run(self.session.internal_error())

    async def _carry_out_1(self, ev, rest: list) -> None:
        if isinstance(ev, Delay):
            await asyncio.sleep(ev.seconds)
        elif isinstance(ev, Login):
            rest = await self._login(ev) + rest
        elif isinstance(ev, StartTLS):
            if not await self._start_tls():
                return
        self._busy = False
        if self._closed:
            return
        self._last = self.loop.time()
        self._run(rest)
        self._pump()

    async def _login(self, ev: Login) -> list:
        try:
            result = await self.loop.run_in_executor(None, self.listener.backend.login, ev.user, ev.password)
        except Exception as exc:  # noqa: BLE001 - AuthFailed, InUse, MaildropError, or a bug: a reply
            if not isinstance(exc, (AuthFailed, InUse, MaildropError)):
                log.exception("pop3: login for %r failed", ev.user)
            result = exc
        if self._closed:  # the client left while we were checking
            if not isinstance(result, BaseException):
                result.close()
            return []
        if not isinstance(result, BaseException):
            tls = ", TLS" if self.session.tls_active else ""
            say(f"Login: user=<{ev.user}>, rip={self.peer}{tls}, messages={len(result)}")
        elif isinstance(result, InUse):
            say(f"Login refused (maildrop in use): user=<{ev.user}>, rip={self.peer}")
        elif isinstance(result, MaildropError):
            say(f"Login failed: user=<{ev.user}>, rip={self.peer}: {result}")
        return self.session.login_result(result)

    async def _start_tls(self) -> bool:
        self._starting_tls = True
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.listener.ssl_context, server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError):
            transport = None
        finally:
            self._starting_tls = False
        early, self._early = bytes(self._early), bytearray()
        if transport is None:
            self._closed = True
            self.transport.abort()
            self.session.connection_lost()
            return False
        self.transport = transport
        self.session.tls_started()  # drops plaintext pipelined behind STLS (RFC 2595 4)...
        if early:
            self.session.receive(early)  # ...but not what came over TLS during the handshake
        return True

    # --- RFC 1939 3: the autologout timer ----------------------------------------------------

    def _check_timeout(self) -> None:
        if self._closed:
            return
        idle = self.loop.time() - self._last
        if self._busy or idle < self._timeout:
            self._timer = self.loop.call_later(max(1.0, self._timeout - idle), self._check_timeout)
            return
        self._run(self.session.timeout())

    def shutdown(self) -> None:
        if not (self._closed or self._busy):
            self._run(self.session.shutdown())


async def start(cfg, listen=None, tls_listen=None) -> list:
    """Listen on every address (`listen`: plain with STLS when [tls] has a certificate;
    `tls_listen`: implicit TLS, RFC 8314). None means the [pop3] lists from the config."""
    from mailtools.core import tls
    from mailtools.core.exitcodes import ConfigError, UsageError
    from mailtools.pop3.maildrop import MaildirBackend

    # A bad address given on the command line is a usage error (64); one from the config, 78.
    bad_listen = {False: ConfigError if listen is None else UsageError,
                  True: ConfigError if tls_listen is None else UsageError}
    listen = list(cfg.pop3.listen if listen is None else listen)
    tls_listen = list(cfg.pop3.tls_listen if tls_listen is None else tls_listen)
    ssl_context = tls.context_from_config(cfg)
    if tls_listen and ssl_context is None:
        raise ConfigError("pop3: a TLS listener needs a certificate ([tls] cert and key)")
    listener = _Listener(cfg, MaildirBackend(cfg), ssl_context)
    loop = asyncio.get_running_loop()
    servers = []
    try:
        for specs, implicit in ((listen, False), (tls_listen, True)):
            for spec in specs:
                try:
                    host, port = parse_listen(spec)
                except ValueError as exc:
                    raise bad_listen[implicit](f"pop3: {exc}") from None
                server = await loop.create_server(
                    lambda implicit=implicit: POP3Protocol(listener, implicit),
                    host, port, ssl=ssl_context if implicit else None, reuse_address=True,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if implicit else None, backlog=128)
                server._mailtools_listener = listener
                server._mailtools_implicit = implicit
                servers.append(server)
    except BaseException:
        for s in servers:
            s.close()
        raise
    return servers


def shutdown(servers) -> None:
    """Stop listening; idle sessions get -ERR [SYS/TEMP] and are closed (nothing deleted)."""
    for server in servers:
        server.close()
        listener = getattr(server, "_mailtools_listener", None)
        if listener is not None:
            for proto in list(listener.active):
                proto.shutdown()


def run(cfg, listen=None, tls_listen=None) -> int:
    """`mailtools pop3-serve`: serve until SIGTERM/SIGINT; print each listening address."""
    import signal

    from mailtools.core.exitcodes import Unavailable

    async def main() -> int:
        # The handlers first: a SIGTERM sent as soon as the port answers is a stop, not death
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            servers = await start(cfg, listen, tls_listen)
        except OSError as exc:
            raise Unavailable(f"cannot listen: {exc.strerror or exc}") from None
        if not servers:
            raise Unavailable("no listeners (--listen / --tls-listen, or [pop3] listen)")
        for server in servers:
            kind = "POP3 over TLS" if server._mailtools_implicit else "POP3"
            for addr in bound_addresses([server]):
                sys.stdout.write(f"mailtools pop3-serve: listening on {addr} ({kind})\n")
        sys.stdout.flush()
        await stop.wait()
        shutdown(servers)
        await asyncio.sleep(0.05)  # let the goodbye lines go out
        return 0

    return asyncio.run(main())
