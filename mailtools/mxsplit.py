"""Bulk `mx-lookup -` over worker processes, for long lists on a machine with several cores.

One process is bound by the interpreter, not by DNS, when the name server is close (a warm
loopback cache answers in microseconds). So when at least SPLIT_MIN names are waiting on stdin
at start, the parent forks `workers()` children (at most 2, never more than the cores this
process may run on), hands the names out in batches, round-robin, and writes each batch's
output in input order. Each worker runs the same bulk lookup (mx._run) with its own resolver
(sockets, cache) and a share of --concurrency, and sends back per batch its worst exit status
and what it wrote to stdout and stderr, in the order it wrote it; the parent writes that
unchanged, so the output is exactly what one process writes.

Exit status: the most urgent of all batches (mx._SEVERITY). A worker that ends before it has
answered every batch it was given, or ends with a non-zero status, is an error (exit 70, after
the output of the batches before the missing one): names are never silently lost.

Pipes: parent -> worker: b"COUNT\\n" then COUNT names, one a line. Worker -> parent, per batch:
a _FRAME header (status, length) then segments of _SEG (stream 1|2, length) + bytes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import signal
import struct
import sys
from collections import deque

from mailtools.core.exitcodes import SOFTWARE, MailtoolsError

SPLIT_MIN = 2000  # names waiting on stdin at start before workers are worth their fork
BATCH = 256  # names per batch
AHEAD = 64  # batches handed out and not yet written, at most (bounds memory behind a slow name)
MAX_WORKERS = 2

_FRAME = struct.Struct("!BI")  # worst exit status of the batch, payload length
_SEG = struct.Struct("!BI")  # stream (1 stdout, 2 stderr), length


def workers() -> int:
    """How many worker processes a large bulk run uses (1: none)."""
    from mailtools.core.prefork import usable_cpus

    return max(1, min(MAX_WORKERS, usable_cpus()))


def read_start(fd: int = 0) -> tuple[bytes, bool]:
    """What stdin holds right now, up to about SPLIT_MIN lines: (the bytes, end of input seen).
    Blocks only for the first read, as the one-process reader would."""
    chunks: list[bytes] = []
    lines = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        lines += chunk.count(b"\n")
        if lines >= SPLIT_MIN or not select.select([fd], [], [], 0)[0]:
            return b"".join(chunks), False


def worth_splitting(start: bytes) -> bool:
    return start.count(b"\n") >= SPLIT_MIN


def run(start: bytes, eof: bool, resolver, *, json_mode: bool, concurrency: int, workers: int, stdin_fd: int = 0) -> int:
    """The bulk lookup of stdin (of which `start` is already read) over `workers` processes;
    returns the worst exit status. Raises MailtoolsError (70) when a worker fails."""
    share = -(-concurrency // workers)  # --concurrency is the total queries in flight
    kids: list[tuple[int, int, int]] = []  # (pid, fd to it or -1 once closed, fd from it)
    ours: list[int] = []  # the parent's pipe ends so far (a later child closes them)
    try:
        for _ in range(workers):
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                _worker_main(down_r, up_w, [down_w, up_r, *ours], resolver, json_mode, share)
            os.close(down_r)
            os.close(up_w)
            os.set_blocking(down_w, False)
            ours += [down_w, up_r]
            kids.append((pid, down_w, up_r))
        return _Parent(kids, start, eof, stdin_fd).run()
    finally:
        for pid, down, up in kids:
            for fd in (down, up):
                if fd >= 0:
                    os.close(fd)
            _reap(pid, kill=True)


def _reap(pid: int, kill: bool) -> int | None:
    """The wait status of a worker (terminated first when kill and still running)."""
    try:
        if kill:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            os.kill(pid, signal.SIGTERM)
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


class _Parent:
    """Reads stdin, hands out batches, writes the answered batches in order."""

    def __init__(self, kids, start: bytes, eof: bool, stdin_fd: int = 0):
        self.kids = kids
        self.stdin = stdin_fd
        self.n = len(kids)
        self.rest = b""  # an unfinished line of stdin
        self.names: list[bytes] = []  # names not handed out yet
        self.stdin_open = True
        self.handed = 0  # batches handed out
        self.written = 0  # batches written
        self.out = [bytearray() for _ in kids]  # bytes waiting to go to each worker
        self.inbuf = [bytearray() for _ in kids]  # bytes read from each worker
        self.frames = [0] * self.n  # batches answered by each worker
        self.up_open = [True] * self.n
        self.ready: dict[int, tuple[int, bytes]] = {}  # batch -> (status, payload)
        self.worst = 0
        self.lost: int | None = None  # the first batch a dead worker left unanswered
        if start:
            self._take(start)
        if eof:
            self._stdin_ended()

    def run(self) -> int:
        from mailtools.mx import _SEVERITY

        self.severity = _SEVERITY
        while self.stdin_open or self.written < self.handed or self.names:
            if self.lost is not None and (self.written >= self.lost or not any(self.up_open)):
                raise MailtoolsError(f"a worker process ended before answering (names from batch {self.lost} of {BATCH} on not looked up)", SOFTWARE)
            live = self.lost is None  # after a loss only the batches before it are awaited
            if live:
                self._hand_out(full_only=self.stdin_open)
            want_stdin = live and self.stdin_open and self.handed - self.written < AHEAD
            rlist = [self.stdin] if want_stdin else []
            rlist += [fd for i, (_, _, fd) in enumerate(self.kids) if self.up_open[i]]
            wlist = [fd for i, (_, fd, _) in enumerate(self.kids) if self.out[i] and live]
            # names short of a batch go out as soon as stdin has nothing more right now
            timeout = 0 if (want_stdin and self.names) else None
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
            if not readable and not writable:
                self._hand_out(full_only=False)
                continue
            for i, (_, fd, _) in enumerate(self.kids):
                if fd in writable:
                    try:
                        sent = os.write(fd, self.out[i])
                    except BrokenPipeError:  # not our stdout: a worker died (its answers end)
                        sent = len(self.out[i])
                    del self.out[i][:sent]
            if self.stdin in readable:
                chunk = os.read(self.stdin, 65536)
                if chunk:
                    self._take(chunk)
                else:
                    self._stdin_ended()
            for i, (_, _, fd) in enumerate(self.kids):
                if fd in readable:
                    self._read_worker(i, fd)
            self._write_ready()
            self._close_idle_pipes()
        self._close_idle_pipes()
        for pid, _, _ in self.kids:
            status = _reap(pid, kill=False)
            if status is not None and status != 0:
                raise MailtoolsError(f"a worker process failed ({_describe(status)})", SOFTWARE)
        return self.worst

    def _take(self, chunk: bytes) -> None:
        from mailtools.mx import _line

        lines = (self.rest + chunk).split(b"\n")
        self.rest = lines.pop()
        names = self.names
        for line in lines:
            text = _line(line)
            if text:
                names.append(text.encode("utf-8", "surrogateescape"))

    def _stdin_ended(self) -> None:
        from mailtools.mx import _line

        self.stdin_open = False
        text = _line(self.rest)
        self.rest = b""
        if text:
            self.names.append(text.encode("utf-8", "surrogateescape"))

    def _hand_out(self, full_only: bool) -> None:
        """Batches to the workers' pipes (stdin is not read while AHEAD batches are out)."""
        names = self.names
        while len(names) >= BATCH or (names and not full_only):
            batch, self.names = names[:BATCH], names[BATCH:]
            names = self.names
            w = self.handed % self.n
            self.out[w] += b"%d\n" % len(batch) + b"\n".join(batch) + b"\n"
            self.handed += 1

    def _read_worker(self, i: int, fd: int) -> None:
        data = os.read(fd, 1 << 20)
        if not data:
            self.up_open[i] = False
            if self.frames[i] < len(range(i, self.handed, self.n)) or self.stdin_open or self.names:
                # its first unanswered batch, or the next to hand out (none will be)
                missing = min(self.frames[i] * self.n + i, self.handed)
                self.lost = missing if self.lost is None else min(self.lost, missing)
            return
        buf = self.inbuf[i]
        buf += data
        pos = 0
        while len(buf) - pos >= _FRAME.size:
            status, length = _FRAME.unpack_from(buf, pos)
            if len(buf) - pos - _FRAME.size < length:
                break
            start = pos + _FRAME.size
            self.ready[self.frames[i] * self.n + i] = (status, bytes(buf[start : start + length]))
            self.frames[i] += 1
            pos = start + length
        del buf[:pos]

    def _write_ready(self) -> None:
        ready = self.ready
        while self.written in ready:
            status, payload = ready.pop(self.written)
            pos = 0
            while pos < len(payload):
                stream, length = _SEG.unpack_from(payload, pos)
                pos += _SEG.size
                _write_all(stream, memoryview(payload)[pos : pos + length])
                pos += length
            if self.severity[status] > self.severity[self.worst]:
                self.worst = status
            self.written += 1

    def _close_idle_pipes(self) -> None:
        """After the end of stdin, each worker's input is closed once it has all its batches."""
        if self.stdin_open or self.names:
            return
        for i, (pid, fd, up) in enumerate(self.kids):
            if fd >= 0 and not self.out[i]:
                os.close(fd)
                self.kids[i] = (pid, -1, up)


def _write_all(fd: int, data) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# --- the worker --------------------------------------------------------------------------------


def _worker_main(down: int, up: int, others: list[int], resolver, json_mode: bool, concurrency: int):
    """The forked child: resolve the batches read from `down`, answer them on `up`, _exit."""
    code = SOFTWARE
    try:
        for fd in others:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # ^C: the parent reports it, once
        _worker(down, up, resolver, json_mode, concurrency)
        code = 0
    except BrokenPipeError:  # the parent is gone
        code = 1
    except BaseException as exc:  # noqa: BLE001 - said on stderr; the parent fails the run
        try:
            os.write(2, f"mailtools mx-lookup: worker: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _worker(down: int, up: int, resolver, json_mode: bool, concurrency: int) -> None:
    from mailtools import mx

    encoding, errors = sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"
    tap = _Tap(encoding, errors)
    sys.stdout, sys.stderr = tap.stream(1), tap.stream(2)
    out = _BatchOutput(mx.JsonOutput() if json_mode else mx.PlainOutput(multi=True), tap, up)
    resolver.max_inflight = concurrency
    # A worker's objects live until it exits and bulk lookups make no reference cycles of
    # their own: the collector's passes over the answer cache would be pure cost (~8% here).
    gc.disable()
    asyncio.run(mx._run([], resolver, out, None, concurrency, inputs=_batches(down, out.sizes)))
    out.finish()


async def _batches(fd: int, sizes: deque):
    """The names of the batches the parent sends; each batch's size goes to `sizes` first.
    Read from the event loop when the pipe is readable (no reader thread)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    rest = b""
    left = 0
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            if rest or left:
                raise EOFError("the parent's batch was cut short")
            return
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if left == 0:
                left = int(line)
                sizes.append(left)
                continue
            left -= 1
            yield line.decode("utf-8", "surrogateescape")


class _Tap:
    """What the worker writes to stdout and stderr, as segments in order, until taken."""

    def __init__(self, encoding: str, errors: str):
        self.encoding, self.errors = encoding, errors
        self.segments: list[tuple[int, list[str]]] = []

    def stream(self, no: int) -> _TapStream:
        return _TapStream(self, no)

    def take(self) -> bytes:
        parts = []
        for no, texts in self.segments:
            data = "".join(texts).encode(self.encoding, self.errors)
            parts.append(_SEG.pack(no, len(data)) + data)
        self.segments = []
        return b"".join(parts)


class _TapStream:
    def __init__(self, tap: _Tap, no: int):
        self.tap, self.no = tap, no

    def write(self, text: str) -> int:
        segments = self.tap.segments
        if segments and segments[-1][0] == self.no:
            segments[-1][1].append(text)
        else:
            segments.append((self.no, [text]))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _BatchOutput:
    """The worker's output object: the usual one (plain or JSON) writing into the tap, and a
    frame to the parent each time a batch's last result is written."""

    def __init__(self, inner, tap: _Tap, up: int):
        self.inner, self.tap, self.up = inner, tap, up
        self.sizes: deque = deque()  # sizes of the batches not answered yet, in order
        self.count = 0
        self.worst = 0
        from mailtools.mx import _SEVERITY

        self.severity = _SEVERITY

    def start(self) -> None:
        self.inner.start()

    def queued(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def result(self, r) -> None:
        self.inner.result(r)
        code = r.exit_code
        if self.severity[code] > self.severity[self.worst]:
            self.worst = code
        self.count += 1
        if self.count == self.sizes[0]:
            self.sizes.popleft()
            flush = getattr(self.inner, "flush", None)
            if flush is not None:
                flush()
            payload = self.tap.take()
            _write_all(self.up, memoryview(_FRAME.pack(self.worst, len(payload)) + payload))
            self.count = self.worst = 0
