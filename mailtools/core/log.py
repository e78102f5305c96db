"""Log lines: one per event, in syslog's `program[pid]: message` shape, so the lines read (and
grep) like Postfix's and Dovecot's. Where they go is the config's `log` key: "stderr" (the
default: a terminal, systemd's journal, a test), "syslog" (facility mail, as Postfix and Dovecot
log; what a cron-run `relay --once` wants, since cron mails whatever a job prints), "off", or
an absolute file path (appended, one write per line, so several processes can share it). Best
effort: a closed stderr or a full disk never fails a delivery."""

from __future__ import annotations

import os
import sys

TARGETS = ("stderr", "syslog", "off")

_target = "stderr"
_fd: int | None = None
_ident: str | None = None


def valid(target: str) -> bool:
    return target in TARGETS or os.path.isabs(target)


def use(target: str) -> None:
    """Send the following lines to TARGET (checked by the config: one of TARGETS or a path)."""
    global _target, _fd, _ident
    if _fd is not None:
        os.close(_fd)
    _target, _fd, _ident = target, None, None


def say(program: str, line: str) -> None:
    global _fd, _ident
    try:
        if _target == "stderr":
            sys.stderr.write(f"{program}[{os.getpid()}]: {line}\n")
            sys.stderr.flush()
        elif _target == "syslog":
            import syslog

            if _ident != program:
                syslog.openlog(program, syslog.LOG_PID, syslog.LOG_MAIL)
                _ident = program
            syslog.syslog(syslog.LOG_INFO, line)
        elif _target != "off":
            import time

            if _fd is None:
                _fd = os.open(_target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            os.write(_fd, f"{stamp} {program}[{os.getpid()}]: {line}\n".encode("utf-8", "replace"))
    except (OSError, ValueError):
        pass


def say_lines(program: str, lines: list) -> None:
    """say() for several lines: on stderr one write (one system call, where a threaded server
    hands the GIL over and waits for it back), else line by line."""
    if _target != "stderr":
        for line in lines:
            say(program, line)
        return
    try:
        pid = os.getpid()
        sys.stderr.write("".join(f"{program}[{pid}]: {line}\n" for line in lines))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
