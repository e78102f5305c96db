"""The thin asyncio transport around `mailtools.imap.session.Session`: it only moves bytes.

It owns what needs a clock or a socket: STARTTLS and implicit TLS, the delay after a failed
login, the autologout timer (RFC 3501 5.4: at least 30 minutes), the IDLE wake-up (a cheap
poll of the selected folder's directory mtimes every IDLE_POLL seconds, so a delivery by
`deliver` or `relay` is pushed within a second), and the connection limit.

    servers = await start(cfg, listen=["127.0.0.1:1143"], tls_listen=["127.0.0.1:9930"])
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from mailtools.core.listen import is_loopback, parse_listen
from mailtools.imap.session import SELECTED, CheckPassword, Close, Delay, Resume, Session, StartTLS

log = logging.getLogger("mailtools.imap")
AUTOLOGOUT = 30 * 60.0
COMMAND_TIMEOUT = 5 * 60.0  # a half-sent command, or a client that never logs in
IDLE_POLL = 0.5
HANDSHAKE_TIMEOUT = 30.0
WRITE_BUFFER = 2 * 1024 * 1024


class _Shared:
    def __init__(self, cfg, ssl_context):
        self.cfg = cfg
        self.ssl_context = ssl_context
        self.active: set[_Connection] = set()  # for the limit, and shutdown() on stop


class _Connection(asyncio.Protocol):
    """One client: bytes from the socket go straight into the session and its answer straight
    out, in the same callback (asyncio streams cost a task wake-up and a timer per read: about
    100 us per round trip here, as much as Dovecot's whole NOOP). Actions that must wait
    (Delay, StartTLS, CheckPassword, Resume) are carried out by a task while reading is paused.
    Backpressure: when the client does not read, reading stops too (pause_writing)."""

    def __init__(self, shared: _Shared, implicit_tls: bool):
        self.shared = shared
        self.implicit_tls = implicit_tls
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.sess: Session | None = None
        self.task: asyncio.Task | None = None  # carrying out actions; input waits in backlog
        self.backlog: list[bytes] = []
        self.write_paused = False
        self.writable: asyncio.Future | None = None
        self.last_input = self.loop.time()  # when the client last sent or was last answered
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0

    # -- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        cfg = self.shared.cfg
        if len(self.shared.active) >= cfg.imap.max_connections:
            transport.write(b"* BYE [UNAVAILABLE] Too many connections\r\n")
            transport.close()
            return
        self.shared.active.add(self)
        self.sess = Session(
            cfg,
            secure=self.implicit_tls,
            loopback=is_loopback(transport.get_extra_info("sockname")),
            tls_available=self.shared.ssl_context is not None and not self.implicit_tls,
        )
        self.sess.threaded_auth = True
        self.sess.cooperative = True
        # a paused FETCH goes on making output until this much waits unsent
        transport.set_write_buffer_limits(high=WRITE_BUFFER)
        transport.write(self.sess.greeting())
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.sess is None or self.sess.closed:
            return
        if self.task is not None:
            self.backlog.append(data)
            return
        self.last_input = self.loop.time()
        self._guard(lambda: self._out(self.sess.feed(data)))

    def eof_received(self):
        return False  # close

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.task is None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.task is None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
        if self.writable is not None and not self.writable.done():
            self.writable.cancel()
        sess, self.sess = self.sess, None
        if sess is None:
            return
        self.shared.active.discard(self)
        if sess.folder is not None:
            try:
                sess.folder.flush(background=True)
            except Exception:
                pass

    def shutdown(self) -> None:
        """Server going down (smtpd.server's shutdown() and drain() call it, again and again):
        a session between commands gets an untagged BYE (RFC 3501 7.1.5, as Dovecot says it)
        and is closed; one carrying out a command finishes it first."""
        if self.task is None and self.sess is not None and not self.sess.closed:
            self._close(b"* BYE Server shutting down.\r\n")

    # -- output and actions ---------------------------------------------------------------
    def _guard(self, fn) -> None:
        """One broken session must never take the server down."""
        try:
            fn()
        except Exception:
            log.exception("imap session failed")
            self._close(b"* BYE Internal server error\r\n")

    def _close(self, last: bytes = b"") -> None:
        if self.sess is not None:
            self.sess.closed = True
        if not self.transport.is_closing():
            if last:
                self.transport.write(last)
            self.transport.close()  # sends what is buffered first

    def _out(self, out: list) -> None:
        """Write the session's bytes; the first action that needs waiting goes to a task with
        everything after it (the session puts such actions last)."""
        chunk: list[bytes] = []
        for i, item in enumerate(out):
            if isinstance(item, bytes):
                chunk.append(item)
                continue
            if chunk:
                self.transport.write(b"".join(chunk))
                chunk = []
            if isinstance(item, Close):
                self._close()
                return
            self.transport.pause_reading()
            self.task = self.loop.create_task(self._actions(out[i:]))
            return
        if chunk:
            self.transport.write(b"".join(chunk))
        if self.sess.closed:
            self._close()
            return
        self._arm()

    async def _drain(self) -> None:
        if self.write_paused:
            self.writable = self.loop.create_future()
            await self.writable

    async def _actions(self, out: list) -> None:
        try:
            i = 0
            while i < len(out):
                j = i
                while j < len(out) and isinstance(out[j], bytes):
                    j += 1
                if j > i:
                    self.transport.write(b"".join(out[i:j]))
                if j == len(out):
                    break
                item, i = out[j], j + 1
                nxt = None
                if isinstance(item, Close):
                    self._close()
                    return
                if isinstance(item, Resume):
                    # a long FETCH/SEARCH paused: the client reads what is sent while the rest is
                    # made, and every other connection gets its turn (sleep(0)) in between
                    await self._drain()
                    await asyncio.sleep(0)
                    nxt = self.sess.resume()
                elif isinstance(item, Delay):
                    await asyncio.sleep(item.seconds)
                elif isinstance(item, StartTLS):
                    await self._drain()
                    # RFC 3501 6.2.1: nothing sent before TLS survives it (the session dropped
                    # what it had buffered; input that came meanwhile is dropped here)
                    self.backlog.clear()
                    self.transport = await asyncio.wait_for(self.loop.start_tls(
                        self.transport, self, self.shared.ssl_context, server_side=True,
                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT), HANDSHAKE_TIMEOUT)
                    self.transport.set_write_buffer_limits(high=WRITE_BUFFER)
                    self.sess.tls_started()
                elif isinstance(item, CheckPassword):
                    ok = await asyncio.to_thread(_verify, item)
                    nxt = self.sess.finish_login(ok)
                if self.sess is None or self.transport.is_closing():
                    return
                if nxt:
                    out, i = nxt + out[i:], 0
        except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.TimeoutError):
            self._close()
            return
        except Exception:
            log.exception("imap session failed")
            self._close(b"* BYE Internal server error\r\n")
            return
        self.task = None
        if self.sess is None or self.transport.is_closing():
            return
        if self.sess.closed:
            self._close()
            return
        if not self.write_paused:
            self.transport.resume_reading()
        self.last_input = self.loop.time()
        self._arm()
        if self.backlog:
            data = b"".join(self.backlog)
            self.backlog.clear()
            self.data_received(data)

    # -- timeouts -------------------------------------------------------------------------
    def _idling(self) -> bool:
        return self.sess.idle_tag is not None and self.sess.state == SELECTED

    def _wait(self) -> float:
        sess = self.sess
        if self._idling():
            return IDLE_POLL
        r = sess.reader
        if r.buf or r.parts or r.literal_left or (sess.state != SELECTED and not sess.user):
            return COMMAND_TIMEOUT  # a half-sent command, or a client that never logs in
        return AUTOLOGOUT

    def _arm(self) -> None:
        """Make sure the timer fires no later than the current state's wait from now (one
        timer per connection, moved only when the wait gets shorter)."""
        due = self.loop.time() + self._wait()
        if self.timer is None or due < self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.deadline = due
            self.timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.sess is None or self.sess.closed:
            return
        now = self.loop.time()
        if self.task is not None:  # a command is being carried out: not the client's silence
            self.deadline = now + IDLE_POLL
            self.timer = self.loop.call_at(self.deadline, self._tick)
            return
        wait = self._wait()
        silent = now - self.last_input
        if self._idling() and silent < AUTOLOGOUT:
            # RFC 2177: clients re-issue IDLE within 29 minutes; silence beyond that is a dead peer
            self._guard(lambda: self._out(self.sess.poll()))
            if self.timer is None and self.sess is not None and not self.sess.closed:
                self._arm()
            return
        if not self._idling() and silent < wait:
            self.deadline = self.last_input + wait
            self.timer = self.loop.call_at(self.deadline, self._tick)
            return
        self._close(b"* BYE Autologout; idle for too long\r\n")  # RFC 3501 5.4


def _verify(item: CheckPassword) -> bool:
    try:
        return bool(item.users.verify(item.user, item.password))
    except ValueError:
        return False


async def start(cfg, listen=None, tls_listen=None) -> list:
    """Listen on every address (plain with STARTTLS, and implicit TLS); return the servers."""
    from mailtools.core.exitcodes import ConfigError
    from mailtools.core.tls import context_from_config

    listen = cfg.imap.listen if listen is None else listen
    tls_listen = cfg.imap.tls_listen if tls_listen is None else tls_listen
    ctx = context_from_config(cfg)
    if tls_listen and ctx is None:
        raise ConfigError("imap: a TLS listener needs [tls] cert and key")
    shared = _Shared(cfg, ctx)
    loop = asyncio.get_running_loop()
    servers = []
    for specs, tls in ((listen, False), (tls_listen, True)):
        for spec in specs:
            try:
                host, port = parse_listen(spec)
            except ValueError as exc:
                raise ConfigError(f"imap: {exc}") from None

            server = await loop.create_server(
                lambda tls=tls: _Connection(shared, tls), host, port, ssl=ctx if tls else None,
                reuse_address=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
            )
            server._mailtools_listener = shared  # its sessions, for shutdown() and drain()
            servers.append(server)
    return servers


def run(cfg, listen=None, tls_listen=None, announce=print) -> int:
    """Run imap-serve alone until SIGTERM/SIGINT."""
    import signal

    async def main():
        from mailtools.core.exitcodes import Unavailable

        # The handlers first: a SIGTERM sent as soon as the port answers is a stop, not death
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            servers = await start(cfg, listen, tls_listen)
        except OSError as exc:
            raise Unavailable(f"cannot listen: {exc.strerror or exc}") from None
        for s in servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                announce(f"imap-serve: listening on {host}:{port}")
        await stop.wait()
        from mailtools.smtpd.server import drain, listeners_of, shutdown

        shutdown(servers)  # sessions between commands: BYE; the others after their command
        await drain(listeners_of(servers), 10.0)

    asyncio.run(main())
    return 0
