"""The long-lived sides of core.queue.nudge(): Nudger, a server's writer that keeps the relay
daemon's FIFO open, and NudgeListener, the daemon's reader. nudge() itself, the one-shot writer
that sendmail calls once per message, stays in core.queue: the sendmail path loads neither
class. Both are importable from core.queue as before."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import termios

from mailtools.core.queue import NUDGE


class Nudger:
    """nudge() for a server that queues many messages: the FIFO stays open between calls, and
    no byte is written while one is still unread (the daemon drains them all at once and
    then lists new/, so the pending byte already covers this entry). Same best effort as
    nudge(): with no daemon (ENOENT, ENXIO) or a daemon gone (EPIPE) nothing happens, and
    the next call opens the FIFO again. Safe to call from several threads."""

    def __init__(self, queue_dir):
        import threading

        self.path = os.path.join(os.fspath(queue_dir), NUDGE)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._again = False  # a caller found the lock taken: nudge for it (see __call__)

    def __call__(self) -> bool:
        # Called by many hook threads at once (serve: 32), and each system call below hands
        # the GIL over and waits to get it back, so a lock held around them made a convoy
        # every message's 250 waited in. Instead a caller that finds the lock taken only
        # leaves word (_again) and returns: the holder looks at the FIFO once more for it
        # after the word was left (its entry was in new/ before), before and after letting go.
        self._again = True
        while self._lock.acquire(blocking=False):
            try:
                ok = True
                while self._again:
                    self._again = False
                    ok = self._nudge()
            finally:
                self._lock.release()
            if not self._again:
                return ok
        return True  # the holder nudges for us

    def _nudge(self) -> bool:
        fd = self._fd
        if fd is None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                             | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return False
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                return False
            self._fd = fd
        try:
            unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if unread == 0:
                os.write(fd, b"!")
            return True
        except BlockingIOError:
            return True  # a full pipe: the daemon is awake already
        except OSError:
            self._close()
            return False

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close()


class NudgeListener:
    """The daemon side of nudge(): owns the FIFO, wakes waiters when a byte arrives.

    Synchronous: ``listener.wait(timeout) -> bool``. asyncio: ``await listener.wait_async(t)``
    (registers a reader on the running loop). Several nudges while busy count as one.
    Use as a context manager, or call close()."""

    def __init__(self, queue_dir):

        path = os.path.join(os.fspath(queue_dir), NUDGE)
        os.makedirs(os.fspath(queue_dir), exist_ok=True)
        try:
            st = os.lstat(path)
            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(path)
                raise FileNotFoundError
        except FileNotFoundError:
            try:
                os.mkfifo(path, 0o622)
            except FileExistsError:
                pass
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        # Hold a writer open ourselves so the reader never sees end-of-file between nudges.
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        self._event = None
        self._loop = None

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """Read every pending byte; True if there was a nudge."""
        got = False
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return got
            except OSError:
                return got
            if not chunk:
                return got
            got = True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nudged (True) or `timeout` seconds pass (False)."""
        import select

        if self.drain():
            return True
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready) and self.drain()

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Await a nudge (True) or the timeout (False) without blocking the event loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)
            self._event = asyncio.Event()
            self._loop = loop
            loop.add_reader(self.fd, self._on_readable)
        if self.drain():
            self._event.clear()
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True

    def _on_readable(self) -> None:
        if self.drain() and self._event is not None:
            self._event.set()

    def pending(self) -> bool:
        """A nudge arrived that no wait has returned yet (the next wait returns at once)."""
        if self._event is not None and self._event.is_set():
            return True
        import fcntl
        import struct
        import termios

        try:
            return struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.fd)
            except Exception:  # noqa: BLE001 - loop already closed
                pass
            self._loop = None
        for fd in (self.fd, self._keep):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "NudgeListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
