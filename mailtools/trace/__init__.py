"""trace-headers: the path a message took, hop by hop, from its Received fields.

    from mailtools.trace import trace_message, trace_all
    report = trace_message(open("msg.eml", "rb").read())    # one message -> one report dict
    reports = trace_all(open("box.mbox", "rb").read())       # an mbox -> one report per message

Modules: headers (header section, mbox split), received (one field -> one hop), tls, dates,
auth (Authentication-Results/ARC), report (the JSON contract), render (plain/rich), command
(the CLI's work).
"""

from __future__ import annotations

from mailtools.trace.headers import NotAMessage


def trace_message(data: bytes) -> dict:
    """The report for one message (raises NotAMessage when it has no header section)."""
    from mailtools.trace.headers import header_end
    from mailtools.trace.report import build

    if data.startswith(b"From "):  # one message of an mbox, From_ line and all
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    return build(data[:header_end(data)])


def trace_all(data: bytes, keep_going: bool = True) -> list[dict]:
    """Reports for every message of `data` (an mbox, or a single message)."""
    from mailtools.trace.command import reports

    return [r for _n, _end, r in reports(data, keep_going)]


__all__ = ["NotAMessage", "trace_all", "trace_message"]
