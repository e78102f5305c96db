"""Authentication-Results (RFC 8601) and ARC (RFC 8617) verdicts, parsed with `authres`.

authres costs 0.3-1.5 ms per field (it recompiles patterns per token), more than a whole
message's bare parse with the email package, so plain fields take a fast path first: after
comments are removed, a field made only of `method=result` and `ptype.property=token`
(the shape nearly every MTA writes) is split by one regex. Anything else (quoted strings,
`reason=`, method versions, odd characters) goes to authres. A property test checks that the
fast path and authres agree on every field the fast path accepts.

The report keeps every Authentication-Results / ARC-Authentication-Results field in order (top
first) and a summary taken from the topmost Authentication-Results field: the one the last
receiving host added (lower ones were written by earlier hops, or by the sender, and are only
as trustworthy as they are). A field authres rejects still yields its method=result pairs from
a simple scan, with an `unparseable-auth-results` warning.
"""

from __future__ import annotations

import re

from mailtools.trace.dates import strip_comments

VERDICT_METHODS = ("spf", "dkim", "dmarc", "arc")
MAX_VALUE = 8192  # no real Authentication-Results field is longer; bigger ones are scanned only

_ARC_INSTANCE = re.compile(r"^\s*i\s*=\s*(\d+)\s*;", re.I)
_TAG = re.compile(r"\b([a-z]+)\s*=\s*([^;\s]*)", re.I)
_PAIRS = re.compile(r"(?:^|;)\s*([a-z][a-z0-9_-]*)(?:/\d+)?\s*=\s*([a-z]+)", re.I)
_CONTEXT = None
_NO_AUTHSERV = re.compile(r"\s*[A-Za-z0-9_-]+(?:/\d+)?\s*=")
_TOKEN = r"[A-Za-z0-9_-]+"
_VALUE = r"[A-Za-z0-9_.@+-]+"
_RESINFO = re.compile(
    rf"\s*({_TOKEN})\s*=\s*({_TOKEN})((?:\s+{_TOKEN}\.{_TOKEN}\s*=\s*{_VALUE})*)\s*"
)
_PROP = re.compile(rf"({_TOKEN}\.{_TOKEN})\s*=\s*({_VALUE})")
_AUTHSERV = re.compile(r"\s*([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*")
_FAST_METHODS = frozenset(("spf", "dkim", "dmarc", "arc", "iprev", "auth", "bimi", "dkim-atps"))


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        import authres

        _CONTEXT = authres.all_features()
    return _CONTEXT


def _with_authres(value: str):
    ctx = _context()
    header = ctx.parse_value(value)
    results = []
    for r in header.results:
        props = {f"{p.type}.{p.name}": p.value for p in (r.properties or [])}
        results.append({
            "method": (r.method or "").lower(),
            "result": (r.result or "").lower() or None,
            "reason": r.reason,
            "properties": props,
        })
    return header.authserv_id, results


def fast_parse(value: str):
    """(authserv_id, results) for a plain field, or None when authres must decide."""
    plain = strip_comments(value) if "(" in value else value
    if '"' in plain or "\\" in plain or "(" in plain or ")" in plain:
        return None
    parts = plain.split(";")
    m = _AUTHSERV.fullmatch(parts[0])
    if m is None or len(parts) < 2:
        return None
    results = []
    rest = parts[1:]
    if len(rest) == 1 and rest[0].strip().lower() == "none":
        return m.group(1), results
    for part in rest:
        r = _RESINFO.fullmatch(part)
        if r is None or r.group(1).lower() not in _FAST_METHODS:
            return None
        results.append({
            "method": r.group(1).lower(),
            "result": r.group(2).lower(),
            "reason": None,
            "properties": {k.lower(): v for k, v in _PROP.findall(r.group(3))} if r.group(3) else {},
        })
    return m.group(1), results


def _scan(value: str):
    """Fallback: authserv-id and method=result pairs, comments removed."""
    plain = strip_comments(value[:MAX_VALUE])
    first, _, rest = plain.partition(";")
    results = [
        {"method": m.lower(), "result": r.lower(), "reason": None, "properties": {}}
        for m, r in _PAIRS.findall(";" + rest)
    ]
    return first.strip() or None, results


def parse_results(name: str, value: str, warnings: list) -> dict:
    """One Authentication-Results or ARC-Authentication-Results field."""
    instance = None
    if name == "arc-authentication-results":
        m = _ARC_INSTANCE.match(value)
        if m:
            instance = int(m.group(1))
            value = value[m.end():]
    text = " ".join(value.split())
    anonymous = _NO_AUTHSERV.match(strip_comments(text)) is not None
    if anonymous:  # Microsoft 365 writes no authserv-id: "spf=pass (...) smtp.mailfrom=..."
        text = "authserv-id.invalid; " + text
    try:
        if len(text) > MAX_VALUE:
            raise ValueError("field too long")
        got = fast_parse(text)
        authserv_id, results = got if got is not None else _with_authres(text)
    except Exception as exc:  # noqa: BLE001 - authres raises its own SyntaxError and others
        authserv_id, results = _scan(text)
        warnings.append({
            "kind": "unparseable-auth-results", "hop": None,
            "detail": f"{'ARC-' if instance is not None else ''}Authentication-Results: {exc}"[:200],
        })
    if anonymous:
        authserv_id = None
    return {
        "field": "ARC-Authentication-Results" if name.startswith("arc") else "Authentication-Results",
        "instance": instance,
        "authserv_id": authserv_id,
        "results": results,
    }


def parse_seal(value: str) -> dict:
    """The tags of one ARC-Seal a reader cares about: i, cv, d."""
    tags = {k.lower(): v for k, v in _TAG.findall(value)}
    inst = tags.get("i")
    return {
        "instance": int(inst) if inst and inst.isdigit() else None,
        "cv": (tags.get("cv") or "").lower() or None,
        "domain": tags.get("d") or None,
    }


def summary(results: list[dict], seals: list[dict]) -> dict:
    """Verdicts from the topmost Authentication-Results field(s) (ARC ones when there are none)."""
    top = next((r for r in results if r["field"] == "Authentication-Results"), None)
    if top is None and results:
        top = max(results, key=lambda r: r["instance"] or 0)
    out = {"authserv_id": top["authserv_id"] if top else None}
    # the receiving host often writes several fields (OpenDKIM, OpenDMARC, an SPF policy
    # daemon): all those with the topmost field's authserv-id count, up to the first other one
    mine = []
    if top is not None:
        for r in results[results.index(top):]:
            if r["field"] != top["field"] or r["instance"] != top["instance"]:
                continue
            if (r["authserv_id"] or "").lower() != (top["authserv_id"] or "").lower():
                break
            mine.extend(r["results"])
    for method in VERDICT_METHODS:
        verdicts = [r["result"] for r in mine if r["method"] == method]
        out[method] = ("pass" if "pass" in verdicts else verdicts[0]) if verdicts else None
    out["arc_chain"] = sorted(seals, key=lambda s: s["instance"] or 0)
    return out
