"""`mailtools relay`: the command's modes (list, operator actions, one pass, daemon + listeners)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Optional

from mailtools.core import exitcodes
from mailtools.core.exitcodes import TempFail, Unavailable, UsageError


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run(*, once=False, listen=None, list_=False, json_mode=False, flush=False, smarthost=None,
        hold=None, release=None, delete=None) -> int:
    from mailtools.core import config

    cfg = config.load()
    actions = [a for a in (hold, release, delete) if a]
    modes = sum(bool(x) for x in (list_, bool(actions), once or flush, bool(listen)))
    if len(actions) > 1 or modes > 1:
        raise UsageError("use one of --list, --hold/--release/--delete, --once/--flush, --listen")
    if json_mode and not list_:
        raise UsageError("--json goes with --list")
    if smarthost is not None:
        _check_hostport(smarthost)
    if list_:
        from mailtools.submit.front import list_queue

        return list_queue(cfg, json_mode)
    if actions:
        return _operator(cfg, hold, release, delete)
    if once or flush:
        from mailtools.relay.runner import lock_path, run_once

        stats = run_once(cfg, flush=flush, smarthost=smarthost)
        if stats is None:
            _say(f"mailtools relay: another queue run holds {lock_path(cfg)}; nothing to do")
            return exitcodes.OK
        return exitcodes.OK
    return asyncio.run(_serve(cfg, listen, smarthost))


def _check_hostport(value: str) -> None:
    from mailtools.relay.runner import _split_hostport

    try:
        host, port = _split_hostport(value)
    except ValueError:
        raise UsageError(f"--smarthost wants HOST:PORT, not {value!r}") from None
    if not host or not 0 < port < 65536:
        raise UsageError(f"--smarthost wants HOST:PORT, not {value!r}")


def _operator(cfg, hold: Optional[str], release: Optional[str], delete: Optional[str]) -> int:
    from mailtools.core.queue import Queue, QueueError

    q = Queue(cfg.queue_dir)
    try:
        if hold:
            q.hold(hold)
            _say(f"{hold}: held")
        elif release:
            q.release_hold(release)
            _say(f"{release}: released")
            from mailtools.core.queue import nudge

            nudge(cfg.queue_dir)
        else:
            q.delete(delete)
            _say(f"{delete}: deleted")
    except QueueError as exc:
        msg = str(exc)
        if "no such" in msg or "not a queue id" in msg:
            raise exitcodes.MailtoolsError(msg, exitcodes.NOINPUT if "no such" in msg else exitcodes.USAGE) from None
        raise TempFail(msg) from None
    return exitcodes.OK


async def _serve(cfg, listen, smarthost) -> int:
    from mailtools.relay import inbound, runner
    from mailtools.core.listen import bound_addresses
    from mailtools.smtpd.server import drain, listeners_of, shutdown

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Each inbound message is written and fsynced in a worker thread: enough of them that every
    # session's fsync can wait on the disk at once (the journal commits them together).
    from concurrent.futures import ThreadPoolExecutor

    loop.set_default_executor(ThreadPoolExecutor(max_workers=32,
                                                 thread_name_prefix="relay-deliver"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    addrs = list(cfg.relay.listen if listen is None else listen)
    if addrs:
        try:
            servers = await inbound.start(cfg, listen=addrs)
        except OSError as exc:
            raise Unavailable(f"cannot listen on {', '.join(addrs)}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for a in bound_addresses(servers):
            _say(f"mailtools relay: listening on {a} (inbound SMTP for {', '.join(cfg.local_domains)})")
    task = asyncio.ensure_future(runner.daemon(cfg, stop, smarthost=smarthost))
    await stop.wait()
    shutdown(servers)
    await drain(listeners_of(servers))  # a DATA step under way finishes and is answered
    try:
        await asyncio.wait_for(task, 30)
    except asyncio.TimeoutError:
        pass  # claimed entries are recovered by the next runner
    return exitcodes.OK


_FLAGS = {"--once": "once", "--flush": "flush", "--list": "list_", "--json": "json_mode"}
_VALUES = {"--smarthost": "smarthost", "--hold": "hold", "--release": "release", "--delete": "delete"}


def fast_main(argv: list[str]):
    """The light front (no typer: `relay --once` runs from cron every few minutes). Handles the
    queue modes; anything else (--listen, --help, a typo) goes to typer (NotImplemented)."""
    kw: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg in _FLAGS:
            kw[_FLAGS[arg]] = True
        elif name in _VALUES:
            if not eq:
                if i + 1 >= len(argv):
                    return NotImplemented
                i += 1
                value = argv[i]
            kw[_VALUES[name]] = value
        else:
            return NotImplemented
        i += 1
    if not kw:
        return NotImplemented  # the daemon: typer prints nothing extra, but keep one path
    return run(**kw)
