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
        self.active = 0


async def _connection(shared: _Shared, implicit_tls: bool, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    cfg = shared.cfg
    if shared.active >= cfg.imap.max_connections:
        writer.write(b"* BYE [UNAVAILABLE] Too many connections\r\n")
        writer.close()
        return
    shared.active += 1
    sess = Session(
        cfg,
        secure=implicit_tls,
        loopback=is_loopback(writer.get_extra_info("sockname")),
        tls_available=shared.ssl_context is not None and not implicit_tls,
    )
    sess.threaded_auth = True
    sess.cooperative = True
    # a paused FETCH goes on making output until this much waits unsent (then drain() waits)
    writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
    try:
        writer.write(sess.greeting())
        loop = asyncio.get_running_loop()
        last_input = loop.time()
        while not sess.closed:
            idling = sess.idle_tag is not None and sess.state == SELECTED
            r = sess.reader
            mid_command = bool(r.buf or r.parts or r.literal_left)
            wait = IDLE_POLL if idling else COMMAND_TIMEOUT if mid_command or sess.state != SELECTED and not sess.user else AUTOLOGOUT
            try:
                async with asyncio.timeout(wait):  # cheaper than wait_for: no task per read
                    data = await reader.read(262144)
                last_input = loop.time()
            except asyncio.TimeoutError:
                # RFC 2177: clients re-issue IDLE within 29 minutes; silence beyond that is a dead peer
                if idling and loop.time() - last_input < AUTOLOGOUT:
                    out = sess.poll()
                    if out:
                        await _emit(out, writer, sess, shared, reader)
                    continue
                writer.write(b"* BYE Autologout; idle for too long\r\n")  # RFC 3501 5.4
                break
            if not data:
                break
            out = sess.feed(data)
            if await _emit(out, writer, sess, shared, reader):
                break
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError, asyncio.CancelledError):
        pass
    except Exception:  # one broken session must never take the server down
        log.exception("imap session failed")
        try:
            writer.write(b"* BYE Internal server error\r\n")
        except Exception:
            pass
    finally:
        shared.active -= 1
        if sess.folder is not None:
            try:
                sess.folder.flush()
            except Exception:
                pass
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        except Exception:
            pass


async def _emit(out: list, writer, sess: Session, shared: _Shared, reader) -> bool:
    """Carry out what the session asked for; True when the connection should close.
    CheckPassword and Resume come last in a list: the session's answer to them is the next."""
    while out is not None:
        todo, out = out, None
        chunk: list[bytes] = []
        for item in todo:
            if isinstance(item, bytes):
                chunk.append(item)
                continue
            if chunk:
                writer.write(b"".join(chunk))
                chunk = []
            if isinstance(item, Resume):
                # a long FETCH/SEARCH paused: the client reads what is sent while the rest is
                # made, and every other connection gets its turn (sleep(0)) in between
                await writer.drain()
                await asyncio.sleep(0)
                out = sess.resume()
            elif isinstance(item, Delay):
                await writer.drain()
                await asyncio.sleep(item.seconds)
            elif isinstance(item, StartTLS):
                await writer.drain()
                reader._buffer.clear()  # RFC 3501 6.2.1: nothing sent before TLS survives it
                await asyncio.wait_for(writer.start_tls(shared.ssl_context), HANDSHAKE_TIMEOUT)
                writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
                sess.tls_started()
            elif isinstance(item, CheckPassword):
                ok = await asyncio.to_thread(_verify, item)
                out = sess.finish_login(ok)
            elif isinstance(item, Close):
                await writer.drain()
                return True
        if chunk:
            writer.write(b"".join(chunk))
    await writer.drain()
    return False


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
    servers = []
    for specs, tls in ((listen, False), (tls_listen, True)):
        for spec in specs:
            try:
                host, port = parse_listen(spec)
            except ValueError as exc:
                raise ConfigError(f"imap: {exc}") from None

            def handler(r, w, tls=tls):
                return _connection(shared, tls, r, w)

            servers.append(await asyncio.start_server(
                handler, host, port, ssl=ctx if tls else None, reuse_address=True,
                limit=262144, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
            ))
    return servers


def run(cfg, listen=None, tls_listen=None, announce=print) -> int:
    """Run imap-serve alone until SIGTERM/SIGINT."""
    import signal

    async def main():
        from mailtools.core.exitcodes import Unavailable

        try:
            servers = await start(cfg, listen, tls_listen)
        except OSError as exc:
            raise Unavailable(f"cannot listen: {exc.strerror or exc}") from None
        for s in servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                announce(f"imap-serve: listening on {host}:{port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for s in servers:
            s.close()

    asyncio.run(main())
    return 0
