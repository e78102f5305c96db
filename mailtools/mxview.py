"""The terminal view of `mx-lookup`: a rich table per domain, warnings coloured, and a progress
bar on stderr while names from stdin are being resolved. Only imported on a TTY."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from mailtools.core.output import console

_STATUS_STYLE = {"ok": "green", "implicit": "yellow", "tempfail": "magenta"}


class RichOutput:
    def __init__(self, multi: bool, progress: bool):
        self.multi = multi
        self.console = console()
        self.progress = None
        self.task = None
        self.total = 0
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("resolving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console(stderr=True), transient=True)

    def start(self):
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("names", total=None)

    def queued(self):
        self.total += 1

    def finish(self):
        if self.progress is not None:
            self.progress.stop()

    def _print(self, thing):
        if self.progress is not None:
            self.progress.update(self.task, total=self.total, advance=1)
        self.console.print(thing)

    def result(self, r) -> None:
        from mailtools.mx import Invalid

        if isinstance(r, Invalid):
            self._print(Text(f"{r.input!r}: {r.reason}", style="red"))
            return
        style = _STATUS_STYLE.get(r.status, "red")
        title = Text.assemble((r.domain, "bold"), "  ", (r.status, style))
        if r.input != r.domain:
            title.append(f"  (from {r.input})", style="dim")
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("Pref", justify="right")
        table.add_column("Host")
        table.add_column("Addresses")
        table.add_column("Warnings")
        for ex in r.exchangers:
            addrs = Text("\n".join(ex.addresses)) if ex.addresses else Text("none", style="red")
            table.add_row(str(ex.preference), ex.host, addrs, Text("\n".join(ex.warnings), style="yellow"))
        parts = [table] if r.exchangers else [title]
        for w in r.warnings:
            parts.append(Text(f"  {w}", style="yellow" if r.status in ("ok", "implicit") else "red"))
        checks = getattr(r, "checks", None)
        if checks is not None:
            from mailtools.mxcheck import rich_view

            parts.extend(rich_view(checks))
        from rich.console import Group

        self._print(Group(*parts))
