"""`mailtools mx-lookup`: where mail for a domain goes, and (with --check) whether it is healthy.

The lookup itself lives in mailtools.core.dns (relay routes with the same code); this module
reads the names, runs the lookups concurrently with bounded concurrency, and writes the results
in input order: plain lines in a pipe, JSON lines with --json, a rich table on a terminal.

Plain output, one line per exchanger in delivery order (equal preferences sorted by name):

    PREF HOST ADDRESS...            one name on the command line
    DOMAIN PREF HOST ADDRESS...     several names, or '-' (names from stdin)
    DOMAIN STATUS                   several names: a domain with no exchanger to show

"-" stands for "no address". Warnings go to stderr, prefixed with the domain.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys

from mailtools.core import dns as mxdns
from mailtools.core.exitcodes import UsageError, error
from mailtools.core.output import emit_json, is_tty

PROG = "mailtools mx-lookup"
CONCURRENCY = 200  # default DNS queries in flight (and names being resolved) in bulk mode: 200
# hides a 20 ms resolver (10,000 queries/s) and still fits a local server's default socket
# buffer (a burst of 512 overflowed dnsmasq's, costing retransmissions)
WINDOW = 8192  # results buffered for in-order output behind a slow name

# Exit status when several names give different answers: the most urgent wins.
_SEVERITY = {0: 0, 64: 1, 68: 2, 75: 3}


class Invalid:
    """A line from stdin that is not a domain or address (reported, exit 64)."""

    def __init__(self, text: str, reason: str):
        self.input, self.reason = text, reason
        self.exit_code = 64


def run(
    names: list[str],
    *,
    json_mode: bool = False,
    nameservers: list[str] | None = None,
    timeout: float | None = None,
    check: bool = False,
    port: int = 25,
    concurrency: int | None = None,
) -> int:
    """The whole command; returns the exit status (raises UsageError for bad arguments)."""
    if not names:
        raise UsageError("give a domain, an address, or '-' to read names from stdin")
    for name in names:  # all arguments are checked before any query is sent
        if name == "-":
            continue
        try:
            mxdns.normalise_domain(name)
        except ValueError as exc:
            raise UsageError(f"{name!r}: {exc}") from None
    if timeout is not None and not 0 < timeout <= 3600:  # also refuses nan and inf
        raise UsageError("--timeout must be a number of seconds between 0 and 3600")
    if not 0 < port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    if concurrency is None:
        concurrency = CONCURRENCY
    if not 0 < concurrency <= 10_000:
        raise UsageError("--concurrency must be between 1 and 10000")
    try:
        resolver = mxdns.make_resolver(nameservers or None, timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    multi = len(names) > 1 or "-" in names
    if json_mode:
        out = JsonOutput()
    elif is_tty():
        from mailtools.mxview import RichOutput

        out = RichOutput(multi=multi, progress="-" in names and is_tty(sys.stderr))
    else:
        out = PlainOutput(multi=multi)
    checker = None
    if check:
        from mailtools.mxcheck import Checker

        checker = Checker(resolver, port=port, timeout=resolver.timeout)
    resolver.max_inflight = concurrency
    start, eof = b"", False
    if names == ["-"] and checker is None and isinstance(out, (JsonOutput, PlainOutput)):
        # many names waiting on stdin and several cores: worker processes (mailtools.mxsplit)
        from mailtools import mxsplit

        n = min(mxsplit.workers(), concurrency)  # --concurrency is the total in flight
        if n > 1:
            start, eof = mxsplit.read_start()
            if mxsplit.worth_splitting(start):
                return mxsplit.run(start, eof, resolver, json_mode=json_mode, concurrency=concurrency, workers=n)
    return asyncio.run(_run(names, resolver, out, checker, concurrency, inputs=_inputs(names, start, eof)))


async def _run(names, resolver, out, checker, limit: int = CONCURRENCY, inputs=None) -> int:
    """Look up `names` (or the names `inputs` yields, an async iterator) and write the results
    through `out` in input order; returns the worst exit status."""
    if checker is not None:
        return await _run_checks(names, resolver, out, checker)
    # Bulk: every name is a callback chain (core.dns.start_lookup), no task per name. At most
    # `limit` names are being resolved at once and WINDOW results wait behind a slow one; the
    # results are written in input order as soon as the oldest one is done.
    loop = asyncio.get_running_loop()
    # The objects of start-up (modules, config) are never garbage: out of the collector's way.
    # Bulk mode makes no reference cycles of its own, so young collections are rarer too.
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 20_000), *thresholds[1:])
    done: dict[int, object] = {}  # input index -> result not written yet
    state = {"next": 0, "written": 0, "active": 0, "worst": 0, "error": None}
    wake: list[asyncio.Future] = []  # the producer, when it waits for room

    def resume() -> None:
        while wake:
            fut = wake.pop()
            if not fut.done():
                fut.set_result(None)

    def room() -> bool:
        return state["active"] < limit and state["next"] - state["written"] < WINDOW

    def finished(index: int, result) -> None:
        done[index] = result
        state["active"] -= 1
        i = state["written"]
        if index != i:
            if state["active"] <= limit * 3 // 4 and room():  # wake the producer in batches
                resume()
            return
        try:
            while i in done:
                result = done.pop(i)
                if isinstance(result, BaseException):  # a bug, not a DNS outcome: stop
                    raise result
                out.result(result)
                code = result.exit_code
                if _SEVERITY[code] > _SEVERITY[state["worst"]]:
                    state["worst"] = code
                i += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised by the producer
            state["error"] = exc
            resume()
            return
        state["written"] = i
        if state["active"] <= limit * 3 // 4 and room():
            resume()

    async def wait() -> None:
        fut = loop.create_future()
        wake.append(fut)
        await fut
        if state["error"] is not None:
            raise state["error"]

    out.start()
    try:
        async for text in inputs if inputs is not None else _inputs(names):
            index = state["next"]
            state["next"] = index + 1
            state["active"] += 1
            out.queued()
            try:
                mxdns.start_lookup(text, resolver, functools.partial(finished, index))
            except ValueError as exc:
                finished(index, Invalid(text, str(exc)))
            if state["error"] is not None:
                raise state["error"]
            if not room():  # wait until a quarter of the names resolving are done
                await wait()
        while state["written"] < state["next"]:
            await wait()
    finally:
        gc.set_threshold(*thresholds)
        out.finish()
        resolver.close()
    return state["worst"]


async def _run_checks(names, resolver, out, checker) -> int:
    """--check: a task per name (each connects to its exchangers), 8 names at once."""
    worst = 0
    # At most `limit` names are being resolved at once: the producer takes a slot before it
    # starts a name (so only it ever waits on the semaphore), the name gives it back when done.
    limit = 8
    slots = asyncio.Semaphore(limit)

    async def one(text: str):
        try:
            try:
                mxdns.normalise_domain(text)
            except ValueError as exc:
                return Invalid(text, str(exc))
            result = await mxdns.lookup(text, resolver)
            result.checks = await checker.check(result)
            return result
        finally:
            slots.release()

    def emit(result) -> None:
        nonlocal worst
        out.result(result)
        if _SEVERITY[result.exit_code] > _SEVERITY[worst]:
            worst = result.exit_code

    # The producer starts a task per name (at most WINDOW ahead of the output); the consumer
    # writes results in input order as soon as the oldest one is done.
    queue: asyncio.Queue = asyncio.Queue(maxsize=WINDOW)

    async def produce():
        try:
            async for text in _inputs(names):
                await slots.acquire()
                await queue.put(asyncio.ensure_future(one(text)))
                out.queued()
        finally:
            await queue.put(None)

    out.start()
    producer = asyncio.ensure_future(produce())
    try:
        while True:
            task = await queue.get()
            if task is None:
                break
            emit(await task)
        await producer
    finally:
        producer.cancel()
        while not queue.empty():
            task = queue.get_nowait()
            if task is not None:
                task.cancel()
        out.finish()
        resolver.close()
    return worst


async def _inputs(names, start: bytes = b"", eof: bool = False):
    """The names in order; '-' expands to stdin's lines (blank lines and # comments skipped),
    read in chunks by a thread so a slow writer never stalls the lookups in flight. `start` is
    what was already read from stdin (and `eof` whether that was all of it)."""
    for name in names:
        if name != "-":
            yield name
            continue
        loop = asyncio.get_running_loop()
        stdin = sys.stdin.buffer
        reader = getattr(stdin, "read1", stdin.read)
        rest = b""
        while True:
            if start or eof:
                chunk, start = start, b""
            else:
                chunk = await loop.run_in_executor(None, reader, 65536)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                text = _line(line)
                if text:
                    yield text
            await asyncio.sleep(0)
        text = _line(rest)
        if text:
            yield text


def _line(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return "" if text.startswith("#") else text


# --- output -----------------------------------------------------------------------------------


class JsonOutput:
    """One JSON object per input (DESIGN.md fields; --check adds "checks")."""

    def start(self):
        pass

    def queued(self):
        pass

    def finish(self):
        pass

    def result(self, r) -> None:
        if isinstance(r, Invalid):
            error(PROG, f"{r.input!r}: {r.reason}")
            return
        doc = r.to_json()
        checks = getattr(r, "checks", None)
        if checks is not None:
            doc["checks"] = checks
        emit_json(doc)


class PlainOutput:
    def __init__(self, multi: bool):
        self.multi = multi
        self.buf: list[str] = []
        self.write = sys.stdout.write

    def start(self):
        pass

    def queued(self):
        pass

    def finish(self):
        self.flush()

    def flush(self):
        if self.buf:
            self.write("".join(self.buf))
            self.buf.clear()
            sys.stdout.flush()

    def result(self, r) -> None:
        if isinstance(r, Invalid):
            self.flush()
            error(PROG, f"{r.input!r}: {r.reason}")
            return
        prefix = f"{r.domain} " if self.multi else ""
        for ex in r.exchangers:
            addrs = " ".join(ex.addresses) or "-"
            self.buf.append(f"{prefix}{ex.preference} {ex.host} {addrs}\n")
        if self.multi and not r.exchangers:
            self.buf.append(f"{r.domain} {r.status}\n")
        checks = getattr(r, "checks", None)
        if checks is not None:
            from mailtools.mxcheck import plain_lines

            self.buf.extend(prefix + line + "\n" for line in plain_lines(checks))
        if len(self.buf) > 512 or not self.multi:
            self.flush()
        notes = [] if (self.multi and not r.exchangers) else list(r.warnings)
        for ex in r.exchangers:
            notes += [f"{ex.host}: {w}" for w in ex.warnings]
        if notes:
            self.flush()
            for note in notes:
                error(PROG, f"{r.domain}: {note}")


# --- fast front (no typer: start-up time matters when a script runs this per name) -----------

_FLAGS = {"--json": "json_mode", "--check": "check"}
_VALUED = {"--nameserver": "nameservers", "--timeout": "timeout", "--port": "port", "--concurrency": "concurrency"}


def parse_args(argv: list[str]) -> tuple[list[str], dict]:
    """The same options as the typer command (mailtools.cli.mx); raises UsageError."""
    names: list[str] = []
    opts: dict = {"nameservers": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            names.extend(argv[i:])
            break
        if arg in _FLAGS:
            opts[_FLAGS[arg]] = True
            continue
        key, eq, value = arg.partition("=")
        if key in _VALUED:
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"option {key} needs a value")
                value = argv[i]
                i += 1
            dest = _VALUED[key]
            if dest == "nameservers":
                opts[dest].append(value)
                continue
            try:
                opts[dest] = float(value) if dest == "timeout" else int(value)
            except ValueError:
                raise UsageError(f"option {key}: not a number: {value!r}") from None
            continue
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"no such option: {arg} (try 'mailtools mx-lookup --help')")
        names.append(arg)
    return names, opts


def fast_main(argv: list[str]) -> int:
    from mailtools.core.exitcodes import run as run_command

    def go() -> int:
        names, opts = parse_args(argv)
        return run(names, **opts)

    return run_command(PROG, go)
