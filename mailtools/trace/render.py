"""Output of trace reports: plain lines for a pipe, a rich table for a terminal.

(JSON lines are `mailtools.core.output.emit_json` of the report itself.)
"""

from __future__ import annotations

BAR_WIDTH = 20
# Header text is attacker-controlled: control characters (an ESC starts a terminal escape
# sequence) never reach the terminal; they show as U+FFFD. JSON escapes them by itself.
_CONTROLS = {c: "\ufffd" for c in [*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f, *range(0x80, 0xa0)]}


def printable(value):
    """The report (or any part of it) with control characters replaced, for the text views."""
    if isinstance(value, str):
        return value.translate(_CONTROLS)
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def fmt_delay(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else "+"
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{sign}{s // 86400}d{s % 86400 // 3600:02d}h"


def tls_text(tls: dict | None) -> str:
    if tls is None:
        return ""
    parts = [p for p in (tls.get("version"), tls.get("cipher")) if p]
    return " ".join(parts) if parts else "yes"


def _auth_text(a: dict) -> str:
    verdicts = " ".join(f"{m}={a[m]}" for m in ("spf", "dkim", "dmarc", "arc") if a.get(m))
    if not verdicts:
        return ""
    return f"{a['authserv_id']}: {verdicts}" if a.get("authserv_id") else verdicts


def slowest(report: dict) -> int | None:
    """Index of the hop with the longest positive delay (None when no hop has one)."""
    best, best_delay = None, 0
    for h in report["hops"]:
        if h["delay_s"] is not None and h["delay_s"] > best_delay:
            best, best_delay = h["index"], h["delay_s"]
    return best


def hop_line(h: dict) -> str:
    parts = [f"hop {h['index']}", h["timestamp"] or "-", fmt_delay(h["delay_s"])]
    if h["from_host"] or h["from_ip"]:
        src = h["from_host"] or ""
        if h["from_ip"]:
            src = f"{src} [{h['from_ip']}]".strip()
        parts.append(f"from {src}")
    if h["by_host"]:
        parts.append(f"by {h['by_host']}")
    if h["with"]:
        parts.append(f"with {h['with']}")
    if h["tls"] is not None:
        parts.append(f"tls {tls_text(h['tls'])}")
    if h["id"]:
        parts.append(f"id {h['id']}")
    if h["for"]:
        parts.append(f"for <{h['for']}>")
    if not (h["from_host"] or h["by_host"]) and h["comment"]:
        parts.append(f"({h['comment']})")
    return "  ".join(parts)


def plain(report: dict, number: int | None = None) -> str:
    """Line-oriented text: `key: value` lines, one `hop N ...` line per hop, warnings last."""
    report = printable(report)
    lines = []
    if number is not None:
        lines.append(f"message: {number}")
    for key, label in (("message_id", "message-id"), ("from", "from"), ("date", "date"),
                       ("return_path", "return-path"), ("subject", "subject")):
        if report.get(key):
            lines.append(f"{label}: {report[key]}")
    auth = _auth_text(report["auth"])
    if auth:
        lines.append(f"auth: {auth}")
    lines.extend(hop_line(h) for h in report["hops"])
    total = report["total_transit_s"]
    if total is not None:
        lines.append(f"total: {fmt_delay(total).lstrip('+')} over {len(report['hops'])} hops")
    for w in report["warnings"]:
        where = f" (hop {w['hop']})" if w["hop"] is not None else ""
        lines.append(f"warning: {w['kind']}{where}: {w['detail']}")
    return "\n".join(lines) + "\n"


def _bar(delay: int | None, longest: int) -> str:
    if delay is None or delay <= 0 or longest <= 0:
        return ""
    n = max(1, round(BAR_WIDTH * delay / longest))
    return "█" * n


def table(report: dict, number: int | None = None):
    """A rich renderable: the header facts, the hop table (delay bar scaled to the slowest hop,
    which is highlighted), total transit and warnings."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    report = printable(report)
    facts = Table.grid(padding=(0, 1))
    facts.add_column(style="bold")
    facts.add_column()
    if number is not None:
        facts.add_row("Message", f"#{number}")
    for key, label in (("message_id", "Message-ID"), ("from", "From"), ("date", "Date"),
                       ("return_path", "Return-Path"), ("subject", "Subject")):
        if report.get(key):
            facts.add_row(label, Text(report[key]))
    auth = _auth_text(report["auth"])
    if auth:
        facts.add_row("Auth", Text(auth))

    t = Table(expand=False)
    for col, kw in (("Hop", {"justify": "right"}), ("From", {}), ("IP", {}), ("By", {}),
                    ("With", {}), ("TLS", {}), ("Time (UTC)", {}), ("Delay", {"justify": "right"}),
                    ("", {"no_wrap": True})):
        t.add_column(col, overflow="fold", **kw)
    slow = slowest(report)
    longest = max([h["delay_s"] or 0 for h in report["hops"]] + [0])
    for h in report["hops"]:
        delay = h["delay_s"]
        style = "bold red" if h["index"] == slow else None
        delay_style = "red" if delay is not None and delay < 0 else None
        src = h["from_host"] or (f"({h['comment']})" if h["comment"] and not h["by_host"] else "")
        t.add_row(
            str(h["index"]), Text(src), Text(h["from_ip"] or ""), Text(h["by_host"] or ""),
            Text(h["with"] or ""), Text(tls_text(h["tls"])) if h["tls"] else Text("none", style="dim"),
            (h["timestamp"] or "?").replace("T", " ").rstrip("Z"),
            Text(fmt_delay(delay), style=delay_style or ""),
            Text(_bar(delay, longest), style="yellow" if h["index"] != slow else "red"),
            style=style,
        )
    parts = [facts, t] if report["hops"] else [facts]  # no empty table: the warning says why
    total = report["total_transit_s"]
    if total is not None:
        parts.append(Text(f"Total transit: {fmt_delay(total).lstrip('+')} over {len(report['hops'])} hops"))
    for w in report["warnings"]:
        where = f" (hop {w['hop']})" if w["hop"] is not None else ""
        parts.append(Text(f"warning: {w['kind']}{where}: {w['detail']}", style="yellow"))
    return Group(*parts)
