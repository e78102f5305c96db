"""Output helpers shared by every reporting command: plain text in a pipe, JSON lines for
scripts (`--json`), rich only on a terminal (honouring NO_COLOR). rich is imported lazily."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def emit_json(obj: Any) -> None:
    """One JSON document on one line (so many stream into jq)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


def console(stderr: bool = False):
    """A rich Console for terminal views; NO_COLOR disables colour."""
    from rich.console import Console

    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def use_rich(json_mode: bool = False) -> bool:
    return not json_mode and is_tty()
