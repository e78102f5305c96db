"""The fixture corpus: one message per MTA family (and the edge cases), each with the hops a
person reading the headers would write down (tests/fixtures/trace/NAME.json, written by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailtools.trace import trace_all, trace_message

FIXTURES = Path(__file__).parent / "fixtures" / "trace"
MESSAGES = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".eml", ".mbox"))
FAMILIES = [
    "postfix", "exim", "exim-old", "sendmail", "qmail", "qpsmtpd", "exchange-online",
    "exchange-onprem", "iis-smtpsvc", "gmail", "gmail-web", "yahoo", "amazon-ses",
    "zimbra-amavis", "dovecot-lmtp", "mandrill", "mailman", "utf8",
]
EDGES = ["folded", "nested-comments", "clock-skew", "no-received", "no-date", "obsolete-dates",
         "rfc822-attachment", "long-chain", "crlf", "three"]


def test_corpus_is_complete():
    names = {p.stem for p in MESSAGES}
    assert set(FAMILIES + EDGES) <= names
    for p in MESSAGES:
        assert p.with_suffix(".json").exists(), p


def check(report: dict, expected: dict, where: str) -> None:
    for key, want in expected.items():
        if key == "hops":
            got = report["hops"]
            assert len(got) == len(want), f"{where}: {len(got)} hops, expected {len(want)}"
            for i, (g, w) in enumerate(zip(got, want), 1):
                assert g["index"] == i
                for field, value in w.items():
                    assert g[field] == value, f"{where} hop {i} {field}: {g[field]!r} != {value!r}\n{g['received']}"
        elif key == "warnings":
            got = [{"kind": w["kind"], "hop": w["hop"]} for w in report["warnings"]]
            assert got == want, f"{where}: warnings {report['warnings']}"
        elif key == "auth":
            for k, v in want.items():
                assert report["auth"][k] == v, f"{where}: auth {k}: {report['auth']}"
        else:
            assert report[key] == want, f"{where}: {key}: {report[key]!r} != {want!r}"


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.name)
def test_fixture(path):
    expected = json.loads(path.with_suffix(".json").read_text())
    data = path.read_bytes()
    if isinstance(expected, list):
        reports = trace_all(data)
        assert len(reports) == len(expected)
        for n, (r, e) in enumerate(zip(reports, expected), 1):
            assert r["message"] == n
            check(r, e, f"{path.name} message {n}")
    else:
        check(trace_message(data), expected, path.name)


def test_crlf_same_as_lf():
    lf = trace_message((FIXTURES / "postfix.eml").read_bytes())
    crlf = trace_message((FIXTURES / "crlf.eml").read_bytes())
    assert lf == crlf


def test_only_top_level_received_fields():
    r = trace_message((FIXTURES / "rfc822-attachment.eml").read_bytes())
    assert all("inner" not in h["received"] and "body.example" not in h["received"] for h in r["hops"])
    r = trace_message((FIXTURES / "nested-comments.eml").read_bytes())
    assert all("fake.example" not in h["received"] for h in r["hops"])  # X-Received, Received-SPF


def test_every_hop_has_the_contract_fields():
    fields = {"index", "from_host", "from_ip", "by_host", "with", "tls", "id", "for", "timestamp", "delay_s"}
    for path in MESSAGES:
        for r in trace_all(path.read_bytes()):
            assert {"message_id", "hops", "total_transit_s", "warnings"} <= set(r)
            for h in r["hops"]:
                assert fields <= set(h), path
                assert h["timestamp"] is None or h["timestamp"].endswith("Z")
                assert h["tls"] is None or set(h["tls"]) >= {"version", "cipher"}
            for w in r["warnings"]:
                assert set(w) == {"kind", "hop", "detail"}
