"""`mailtools trace-headers`: read a message or an mbox, print one report per message.

Input is a file (memory-mapped: a multi-gigabyte mbox costs no memory) or stdin. Only each
message's header section is looked at. Exit status: 0, or 65 when an input item is not a
message (with --all the others are still reported first), 66 when the file cannot be opened.
"""

from __future__ import annotations

import mmap
import os
import stat
import sys

from mailtools.core import exitcodes
from mailtools.core.exitcodes import DataError, MailtoolsError
from mailtools.trace.headers import NotAMessage, header_end, is_mbox, split_mbox
from mailtools.trace.report import build

MAX_HEADER = 1 << 20  # Received fields are at the top; a header section past 1 MiB is cut there
PROGRESS_MIN_BYTES = 1 << 20  # a progress bar only for inputs worth waiting for


def read_input(path: str | None):
    """The whole input as bytes or an mmap (regular files)."""
    if path in (None, "-"):
        return sys.stdin.buffer.read()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise MailtoolsError(f"{path}: no such file", exitcodes.NOINPUT) from None
    except OSError as exc:
        raise MailtoolsError(f"{path}: {exc.strerror}", exitcodes.NOINPUT) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise MailtoolsError(f"{path}: is a directory", exitcodes.NOINPUT)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:  # a pipe, a device, /dev/stdin
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
    finally:
        os.close(fd)


def reports(buf, keep_going: bool = False):
    """Yield (number, offset, report) per message; a bad one raises DataError unless keep_going
    (then its report is empty but for a `not-a-message` warning)."""
    mbox = is_mbox(buf)
    spans = split_mbox(buf) if mbox else [(0, len(buf))]
    for number, (start, end) in enumerate(spans, 1):
        hend = header_end(buf, start, min(end, start + MAX_HEADER))
        try:
            report = build(buf[start:hend])
        except NotAMessage as exc:
            if not keep_going:
                where = f"message {number} (byte {start}): " if mbox else ""
                hint = "; --all reports the others" if mbox else ""
                raise DataError(f"{where}not a message: {exc}{hint}") from None
            report = not_a_message(str(exc))
        report["message"] = number
        yield number, end, report


def not_a_message(detail: str) -> dict:
    return {
        "message_id": None, "from": None, "date": None, "date_utc": None, "return_path": None,
        "subject": None, "hops": [], "total_transit_s": None,
        "auth": {"authserv_id": None, "spf": None, "dkim": None, "dmarc": None, "arc": None,
                 "arc_chain": []},
        "auth_results": [],
        "warnings": [{"kind": "not-a-message", "hop": None, "detail": detail}],
    }


def run(path: str | None, *, json_mode: bool = False, keep_going: bool = False) -> int:
    """The command: print the reports, return the exit status (raise MailtoolsError)."""
    try:
        return _run(path, json_mode, keep_going)
    except BrokenPipeError:
        # `trace-headers big.mbox | head` is not an error (and click would make it exit 1)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return exitcodes.OK


def _run(path: str | None, json_mode: bool, keep_going: bool) -> int:
    from mailtools.core.output import is_tty

    buf = read_input(path)
    if not buf:
        raise DataError("empty input: not a message")
    rich = not json_mode and is_tty()
    size = len(buf)
    show_progress = is_mbox(buf) and size >= PROGRESS_MIN_BYTES and is_tty(sys.stderr)
    out = _Output(json_mode, rich, many=is_mbox(buf))
    bad = 0
    if show_progress:
        bad = _run_with_progress(buf, size, keep_going, out)
    else:
        for number, _end, report in reports(buf, keep_going):
            bad += _is_bad(report)
            out.write(number, report)
    if bad:
        raise DataError(f"{bad} input item(s) were not messages (reported with a not-a-message warning)")
    return exitcodes.OK


def _is_bad(report: dict) -> int:
    w = report["warnings"]
    return 1 if w and w[0]["kind"] == "not-a-message" else 0


def _run_with_progress(buf, size: int, keep_going: bool, out) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from mailtools.core.output import console

    bad = 0
    # On a terminal stdout the tables print above the bar through the same console; else the
    # bar lives on stderr and stdout (JSON, plain text) is left strictly alone.
    bar_console = out.console if out.console is not None else console(stderr=True)
    with Progress(
        TextColumn("tracing"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[n]} messages"),
        TimeRemainingColumn(), console=bar_console, transient=True,
        redirect_stdout=False, redirect_stderr=False,
    ) as progress:
        task = progress.add_task("trace", total=size, n=0)
        for number, end, report in reports(buf, keep_going):
            bad += _is_bad(report)
            out.write(number, report)
            if number % 64 == 0:
                progress.update(task, completed=end, n=number)
        progress.update(task, completed=size)
    return bad


class _Output:
    def __init__(self, json_mode: bool, rich: bool, many: bool):
        self.json_mode, self.rich, self.many = json_mode, rich, many
        self.first = True
        self.encode = None
        self.console = None
        if rich:
            from mailtools.core.output import console

            self.console = console()
        elif hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(errors="replace")

    def write(self, number: int, report: dict) -> None:
        from mailtools.trace import render

        if self.json_mode:
            if self.encode is None:
                import json

                # the same bytes as core.output.emit_json, minus the circular-reference check
                self.encode = json.JSONEncoder(
                    ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
            sys.stdout.write(self.encode(report) + "\n")
        elif self.rich:
            if not self.first:
                self.console.print()
            self.console.print(render.table(report, number if self.many else None))
        else:
            if not self.first:
                sys.stdout.write("\n")
            sys.stdout.write(render.plain(report, number if self.many else None))
        self.first = False


def fast_main(argv: list[str]):
    """The light front (mailtools/__main__.py): the same options as the typer command, parsed
    without importing typer (a third of a second of start-up). Anything unusual (a usage error,
    --help) returns NotImplemented, and typer takes over and says what is wrong."""
    json_mode = keep_going = False
    files: list[str] = []
    only_files = False
    for arg in argv:
        if only_files or arg == "-" or not arg.startswith("-"):
            files.append(arg)
        elif arg == "--":
            only_files = True
        elif arg == "--json":
            json_mode = True
        elif arg == "--all":
            keep_going = True
        else:
            return NotImplemented
    if len(files) > 1:
        return NotImplemented
    return run(files[0] if files else None, json_mode=json_mode, keep_going=keep_going)
