"""The thin asyncio layer around `mailtools.smtpd.session.Session`: it only moves bytes.

One asyncio.Protocol per connection feeds received bytes to the session and carries out the
events it returns: write, upgrade to TLS (STARTTLS), run a blocking hook in a thread (password
hashing, fsync to the queue), sleep (failed AUTH), close. It also enforces what needs a clock or
a count of sockets: the idle/DATA timeouts (421 4.4.2) and the connection limit (421 4.7.0).

    servers = await start_server(factory, ["127.0.0.1:587"], ["127.0.0.1:465"], ssl_ctx,
                                 hostname="mx.example.test", limits=Limits(...))

`handler_factory()` is called once per connection and returns a `Handler`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
from typing import Callable

from mailtools.core.listen import is_loopback, parse_listen
from mailtools.smtpd import replies as R
from mailtools.smtpd.session import (
    Call, Close, ConnInfo, Handler, Limits, Send, Session, Sleep, StartTLS)

_MAX_PENDING_INPUT = 1 << 20  # pause reading when this much input waits behind a blocking hook
# Reads go into one buffer per listener (SMTPProtocol is a BufferedProtocol). asyncio's
# data_received path allocates 256 KiB per read (recv(256 KiB); over TLS SSLObject.read(256
# KiB), twice): glibc serves that with mmap, then mremap and munmap and page faults, ~25 us of
# CPU per read here, 4 reads per message, on the loop's thread; recv_into a buffer: ~4 us.
_READ_SIZE = 64 * 1024
# Blocking hooks (fsync to the queue, password hashing) run here. Many threads on purpose: an
# fsync mostly waits on the disk, and concurrent fsyncs share journal commits (ext4), so the
# queue takes several times more messages per second with 32 writers than with the loop's
# default pool of cpu+4.
_BLOCKING_THREADS = 32
_executor = None
# How long a thread that wants the GIL waits before it asks the holder to let go (Python's
# default is 5 ms). The loop's thread runs Python most of the time; a thread back from one of
# a message's blocking calls (enqueue's writes and fsyncs, a delivery's) waits for it up to
# that long, a dozen times per message, and with a few sessions each waiting for its 250 that
# latency, not CPU, set the rate. Set when the hook threads start (so in every server: submit
# and relay --listen, their workers, serve). 0.5 ms gave serve's e2e bench 5 wins out of 5
# alternating runs, +2% to +38% (median +20%) end to end, at no measurable cost in CPU per
# message.
SWITCH_INTERVAL = 0.0005


def _blocking_pool():
    global _executor
    if _executor is None:
        import sys
        from concurrent.futures import ThreadPoolExecutor

        sys.setswitchinterval(SWITCH_INTERVAL)
        _executor = ThreadPoolExecutor(_BLOCKING_THREADS, thread_name_prefix="smtpd-hook")
    return _executor
_ids = itertools.count(1)


def tls_details(ssl_object) -> dict | None:
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher() or ("", "", 0)
    return {"version": ssl_object.version(), "cipher": cipher[0], "bits": cipher[2]}


class _Listener:
    """What the connections of one start_server call share."""

    def __init__(self, handler_factory, hostname, limits, ssl_context, max_connections,
                 handshake_timeout):
        self.handler_factory = handler_factory
        self.hostname = hostname
        self.limits = limits
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.active: set["SMTPProtocol"] = set()
        self.on_close: Callable[[], None] | None = None  # adopt(): tell the parent (prefork)
        # get_buffer() hands it out, buffer_updated() copies the bytes out at once: one loop,
        # one read at a time, so the connections can share it
        self.read_buffer = memoryview(bytearray(_READ_SIZE))


class SMTPProtocol(asyncio.BufferedProtocol):
    def __init__(self, listener: _Listener, implicit_tls: bool):
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.loop = asyncio.get_running_loop()
        self._busy = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._paused = False
        self._early: bytearray | None = None  # bytes that came over TLS during the handshake
        self._eof = False  # the client half-closed while a blocking step held its input back

    # --- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        L = self.listener
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        if len(L.active) >= L.max_connections:
            transport.write(R.TOO_MANY_CONNECTIONS.to_bytes())
            transport.close()
            self._closed = True
            return
        L.active.add(self)
        info = ConnInfo(
            peer=tuple(peer[:2]), local=tuple(local[:2]), hostname=L.hostname,
            tls=tls_details(transport.get_extra_info("ssl_object")) if self.implicit_tls else None,
            tls_available=L.ssl_context is not None, loopback=is_loopback(local),
            session_id=f"{os.getpid():x}.{next(_ids):x}",
        )
        try:
            handler = L.handler_factory()
        except Exception:  # noqa: BLE001 - refuse the connection, keep serving
            transport.write(R.LOCAL_ERROR.with_text("Local error, try again later").to_bytes())
            transport.close()
            return
        self.session = Session(handler, info, L.limits)
        self._last = self.loop.time()
        self._arm_timer()
        self._handle(self.session.start())

    def get_buffer(self, sizehint: int):
        return self.listener.read_buffer  # see _READ_SIZE

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.listener.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self._closed or self.session is None:
            return
        if self._early is not None:  # STARTTLS handshake running: only decrypted bytes get here
            self._early += data
            return
        self._last = self.loop.time()
        events = self.session.feed(data)
        if self._busy and len(self.session._buf) > _MAX_PENDING_INPUT and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._handle(events)

    def eof_received(self):
        # A client that sent everything and then half-closed (a script piping its pipelined
        # commands into nc; RFC 2920 lets it send them all at once) is still answered when a
        # blocking step (AUTH's hash, DATA's fsync) held the rest of its input back, as Postfix
        # answers it; then the connection closes. Else close our side too. (TLS cannot
        # half-close: asyncio closes it whatever this returns.)
        if (self._busy and not self._closed and self.transport is not None
                and self.transport.get_extra_info("ssl_object") is None):
            self._eof = True
            return True
        return False

    def connection_lost(self, exc) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.listener.active.discard(self)
        if self.listener.on_close is not None:
            self.listener.on_close()
        if self.session is not None:
            try:
                self.session.handler.disconnect(self.session.info)
            except Exception:  # noqa: BLE001
                pass

    # --- events ----------------------------------------------------------------------------
    def _handle(self, events: list) -> None:
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, Send):
                out.append(ev.data)
                continue
            if out:
                self._write(b"".join(out))
                out = []
            if isinstance(ev, Call):
                self._busy = True
                self._start_call(ev.fn)
            elif isinstance(ev, Sleep):
                self._busy = True
                self.loop.call_later(ev.seconds, self._resume, None)
            elif isinstance(ev, StartTLS):
                self._busy = True
                self.loop.create_task(self._starttls())
            elif isinstance(ev, Close):
                self._close()
        if out:
            self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()

    def _resume(self, result) -> None:
        self._busy = False
        if self._closed:
            return
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._last = self.loop.time()
        self._handle(self.session.resume(result))
        if self._eof and not self._busy:
            self._close()  # what the client sent before its half-close is answered

    def _start_call(self, fn: Callable) -> None:
        # The pool's own future and one call_soon_threadsafe back: no asyncio future chained to
        # it (run_in_executor), no Task; the hot path of every message.
        _blocking_pool().submit(fn).add_done_callback(self._call_finished)

    def _call_finished(self, fut) -> None:
        """In the worker thread: hand the result to the loop."""
        try:
            self.loop.call_soon_threadsafe(self._call_done, fut)
        except RuntimeError:
            pass  # the loop is closed: the server is gone

    def _call_done(self, fut) -> None:
        try:
            result = fut.result()
        except Exception:  # noqa: BLE001 - a failing hook is a 451, not a dead server
            result = R.LOCAL_ERROR
        self._resume(result)

    async def _starttls(self) -> None:
        L = self.listener
        # start_tls() pauses the plain transport at once, so from here on data_received sees
        # only what arrives over TLS. A client's first command often rides in one segment with
        # its TLS Finished (GnuTLS: msmtp, mutt); asyncio hands it over before start_tls()
        # returns. Keep it for the TLS session; plaintext pipelined behind STARTTLS is still
        # dropped by tls_started() (RFC 3207 4.2).
        self._early = bytearray()
        try:
            transport = await self.loop.start_tls(
                self.transport, self, L.ssl_context, server_side=True,
                ssl_handshake_timeout=L.handshake_timeout)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError):
            transport = None
            if self.transport is not None:
                self.transport.abort()
        early, self._early = bytes(self._early), None
        if transport is None:
            self._closed = True
            return
        self.transport = transport
        self._busy = False
        self._last = self.loop.time()
        self._handle(self.session.tls_started(tls_details(transport.get_extra_info("ssl_object"))))
        if early:
            self.data_received(early)

    # --- timeouts (RFC 5321 4.5.3.2) -------------------------------------------------------
    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(self._last + self.session.timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        if self._closed:
            return
        if not self._busy and self.loop.time() - self._last >= self.session.timeout:
            self._handle(self.session.timed_out())
            return
        if self._busy:  # a blocking hook is running: its time does not count against the client
            self._timer = self.loop.call_later(1.0, self._check_timeout)
        else:
            self._arm_timer()

    def shutdown(self) -> None:
        """Server going down: 421 to an idle client (RFC 5321 3.8)."""
        if not self._closed and not self._busy and self.session is not None:
            self._handle(self.session.shutdown())


async def start_server(
    handler_factory: Callable[[], Handler],
    listen: list[str],
    tls_listen: list[str],
    ssl_context: ssl.SSLContext | None,
    *,
    hostname: str = "localhost",
    limits: Limits | None = None,
    max_connections: int = 100,
    handshake_timeout: float = 30.0,
) -> list[asyncio.base_events.Server]:
    """Listen on every address; `listen` offers STARTTLS when ssl_context is set, `tls_listen`
    is implicit TLS (RFC 8314) and needs ssl_context. Returns the asyncio servers (serving)."""
    if tls_listen and ssl_context is None:
        raise ValueError("implicit TLS listeners need a certificate ([tls] cert and key)")
    loop = asyncio.get_running_loop()
    listener = make_listener(handler_factory, ssl_context, hostname=hostname, limits=limits,
                             max_connections=max_connections, handshake_timeout=handshake_timeout)
    servers = []
    for specs, implicit in ((listen, False), (tls_listen, True)):
        for spec in specs:
            host, port = parse_listen(spec)
            server = await loop.create_server(
                lambda implicit=implicit: SMTPProtocol(listener, implicit),
                host, port, ssl=ssl_context if implicit else None, reuse_address=True,
                ssl_handshake_timeout=handshake_timeout if implicit else None, backlog=256)
            server._mailtools_listener = listener  # for shutdown()
            servers.append(server)
    return servers


def make_listener(handler_factory: Callable[[], Handler], ssl_context: ssl.SSLContext | None, *,
                  hostname: str = "localhost", limits: Limits | None = None,
                  max_connections: int = 100, handshake_timeout: float = 30.0,
                  on_close: Callable[[], None] | None = None) -> _Listener:
    """What adopt() needs: the connections' shared settings (start_server's, without sockets).
    on_close() is called once for every adopted connection when it ends."""
    listener = _Listener(handler_factory, hostname, limits or Limits(), ssl_context,
                         max_connections, handshake_timeout)
    listener.on_close = on_close
    return listener


async def adopt(listener: _Listener, sock, implicit_tls: bool) -> None:
    """Serve a connection accepted by another process (mailtools.core.prefork hands it over);
    with implicit_tls the TLS handshake comes first, as on a tls_listen socket."""
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(
            lambda: SMTPProtocol(listener, implicit_tls), sock,
            ssl=listener.ssl_context if implicit_tls else None,
            ssl_handshake_timeout=listener.handshake_timeout if implicit_tls else None)
    except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError):
        sock.close()  # a failed TLS handshake: the protocol never saw the connection
        if listener.on_close is not None:
            listener.on_close()


def finish_hooks() -> None:
    """Wait for the blocking hooks still running (a worker process about to os._exit)."""
    if _executor is not None:
        _executor.shutdown(wait=True)


def shutdown(servers) -> None:
    """Stop listening and send 421 to idle sessions (busy ones finish their reply first)."""
    for server in servers:
        server.close()
        listener = getattr(server, "_mailtools_listener", None)
        if listener is not None:
            for proto in list(listener.active):
                proto.shutdown()


def listeners_of(servers) -> list:
    """The connection sets of servers made by start_server() (one per call), for drain()."""
    out: list = []
    for server in servers:
        listener = getattr(server, "_mailtools_listener", None)
        if listener is not None and all(listener is not seen for seen in out):
            out.append(listener)
    return out


async def drain(listeners, timeout: float = 30.0) -> None:
    """Stop gently, after shutdown(): a session that is idle (or becomes idle: a hook such as
    the queue's fsync finishes and its 250 goes out first) gets 421 4.3.2 and is closed (RFC
    5321 3.8). Await it before the loop ends: a reply still due then is never sent, and a
    client that never saw the 250 of a message taken in sends it again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(lst.active for lst in listeners) and loop.time() < deadline:
        for lst in listeners:
            for proto in list(lst.active):
                proto.shutdown()
        await asyncio.sleep(0.05)
