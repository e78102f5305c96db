"""Log lines: one per event on stderr, in syslog's `program[pid]: message` shape, so the lines
read (and grep) like Postfix's and Dovecot's. Best effort: a closed stderr never fails a
delivery."""

from __future__ import annotations

import os
import sys


def say(program: str, line: str) -> None:
    try:
        sys.stderr.write(f"{program}[{os.getpid()}]: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
