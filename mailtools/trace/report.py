"""A trace report for one message: hops in chronological order, delays, warnings, and the
fields a reader checks next to them (Message-ID, From, Date, Return-Path, authentication).

The JSON fields are a contract (DESIGN.md `trace-headers`): more may be added, none renamed.
"""

from __future__ import annotations

from mailtools.trace import auth
from mailtools.trace.dates import iso, parse_date
from mailtools.trace.headers import check_header, fields
from mailtools.trace.received import parse_received

MAX_HOPS = 1000  # a loop or a forged header may pile up Received fields; report the first ones


def _plain(value: str | None) -> str | None:
    if value is None:
        return None
    return " ".join(value.split()) or None


def build(header: bytes) -> dict:
    """The report for a message whose header section is `header` (raises NotAMessage)."""
    check_header(header)
    received, first = [], {}
    ar_fields, seals = [], []
    for name, value in fields(header):
        if name == "received":
            received.append(value)
        elif name in ("authentication-results", "arc-authentication-results"):
            ar_fields.append((name, value))
        elif name == "arc-seal":
            seals.append(value)
        elif name not in first:
            first[name] = value
    warnings: list[dict] = []
    hops = build_hops(received, warnings)
    auth_results = [auth.parse_results(n, v, warnings) for n, v in ar_fields]
    dated = [h["_epoch"] for h in hops if h["_epoch"] is not None]
    total = dated[-1] - dated[0] if len(dated) >= 2 else None
    for h in hops:
        del h["_epoch"]
    date = _plain(first.get("date"))
    date_epoch = parse_date(first.get("date"))
    return {
        "message_id": _plain(first.get("message-id")),
        "from": _plain(first.get("from")),
        "date": date,
        "date_utc": iso(date_epoch),
        "return_path": _plain(first.get("return-path")),
        "subject": _plain(first.get("subject")),
        "hops": hops,
        "total_transit_s": total,
        "auth": auth.summary(auth_results, [auth.parse_seal(s) for s in seals]),
        "auth_results": auth_results,
        "warnings": warnings,
    }


def build_hops(received: list[str], warnings: list[dict]) -> list[dict]:
    """Hops from Received values as they appear (top first): hop 1 is the bottom field."""
    if not received:
        warnings.append({"kind": "no-received", "hop": None, "detail": "the message has no Received field"})
        return []
    if len(received) > MAX_HOPS:
        warnings.append({
            "kind": "too-many-hops", "hop": None,
            "detail": f"{len(received)} Received fields; only the oldest {MAX_HOPS} are reported",
        })
        received = received[-MAX_HOPS:]
    hops = []
    prev = None
    for index, value in enumerate(reversed(received), 1):
        p = parse_received(value)
        epoch = p["epoch"]
        if epoch is None:
            text = " ".join(p["date_text"].split()) if p["date_text"] else ""
            what = f"cannot read the date {text!r}" if text else "no date"
            warnings.append({"kind": "unparseable-date", "hop": index, "detail": what[:200]})
        delay = epoch - prev if epoch is not None and prev is not None else None
        if delay is not None and delay < 0:
            warnings.append({
                "kind": "negative-delay", "hop": index,
                "detail": f"hop {index} is dated {-delay} s before hop {index - 1} (clock skew?)",
            })
        hops.append({
            "index": index,
            "from_host": p["from_host"],
            "from_ip": p["from_ip"],
            "from_rdns": p["from_rdns"],
            "by_host": p["by_host"],
            "with": p["with"],
            "tls": p["tls"],
            "id": p["id"],
            "for": p["for"],
            "via": p["via"],
            "envelope_from": p["envelope_from"],
            "comment": p["comment"],
            "timestamp": iso(epoch),
            "delay_s": delay,
            "received": " ".join(value.split()),
            "_epoch": epoch,
        })
        prev = epoch
    return hops
