"""`mx-lookup --check` against local SMTP servers (aiosmtpd with and without STARTTLS, an
expired certificate, a server that accepts TCP and never speaks) found through dnsmasq."""

from __future__ import annotations

import datetime
import json
import shlex
import socket
import ssl
import time

import pytest

import support_dns

POLICY = {
    "tls.test": ["v=spf1 -all", "v=spf1 mx -all"],
    "_dmarc.tls.test": ["v=DMARC1; p=reject"],
    "_mta-sts.tls.test": ["v=STSv1; id=20261128"],
    "_smtp._tls.tls.test": ["v=TLSRPTv1; rua=mailto:tlsrpt@tls.test"],
    "plain.test": ["v=spf1 a -all"],
}


@pytest.fixture(scope="module")
def dns():
    s = support_dns.start_dnsmasq(
        mx={
            "tls.test": [(10, "mx.example.test")],
            "mismatch.test": [(10, "other.mismatch.test")],
            "plain.test": [(10, "mx.plain.test")],
            "dead.test": [(10, "good.dead.test"), (20, "dead.dead.test")],
        },
        hosts={"mx.example.test": ["127.0.0.1"], "other.mismatch.test": ["127.0.0.1"], "mx.plain.test": ["127.0.0.1"],
               "good.dead.test": ["127.0.0.1"], "dead.dead.test": ["127.0.0.2"]},
        txt=POLICY,
    )
    yield s
    s.stop()


class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"


def smtp_server(tls_files=None, port=None):
    from aiosmtpd.controller import Controller

    ctx = None
    if tls_files:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls_files)
    port = port or support_dns.free_udp_tcp_port()
    c = Controller(Sink(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=False, server_hostname="mx.example.test")
    c.start()
    return c


@pytest.fixture(scope="module")
def starttls_server(tls_ca):
    c = smtp_server((tls_ca.cert_file, tls_ca.key_file))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def plain_server():
    c = smtp_server()
    yield c
    c.stop()


@pytest.fixture
def check(run, dns, home, tls_ca):
    def _check(domain, port, *extra, ca=tls_ca.ca_file, timeout="10"):  # per step: a loaded machine
        r = run("mx-lookup", "--nameserver", dns.nameserver, "--timeout", timeout, "--check", "--port", port, *extra, domain,
                env={"SSL_CERT_FILE": ca, "SSL_CERT_DIR": "/nonexistent"})
        return r

    return _check


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_starttls_server_full_report(check, starttls_server):
    doc = _json(check("tls.test", starttls_server.port, "--json"))
    assert doc["status"] == "ok" and set(doc) >= {"input", "domain", "status", "exchangers", "warnings", "checks"}
    (srv,) = doc["checks"]["servers"]
    assert srv["ok"] and srv["error"] is None and srv["host"] == "mx.example.test" and srv["address"] == "127.0.0.1"
    assert srv["banner"].startswith("220 mx.example.test")
    names = [e.split()[0].upper() for e in srv["extensions"]]
    assert {"SIZE", "8BITMIME", "STARTTLS"} <= set(names)
    assert srv["starttls"] is True
    tls = srv["tls"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"]
    assert "mx.example.test" in tls["san"] and "trustme" in tls["issuer"]
    assert tls["name_match"] is True and tls["verified"] is True and tls["expired"] is False
    assert tls["not_after"].endswith("Z")
    steps = [s["step"] for s in srv["steps"]]
    assert steps == ["connect", "banner", "ehlo", "starttls", "tls", "ehlo-tls", "quit"]
    assert all(s["ok"] and s["ms"] >= 0 for s in srv["steps"])
    rec = doc["checks"]["records"]
    assert rec["spf"] == ["v=spf1 -all", "v=spf1 mx -all"]
    assert rec["dmarc"] == ["v=DMARC1; p=reject"] and rec["mta_sts"] == ["v=STSv1; id=20261128"]
    assert rec["tls_rpt"] == ["v=TLSRPTv1; rua=mailto:tlsrpt@tls.test"]
    faults = doc["checks"]["faults"]
    assert any("2 SPF records" in f for f in faults)
    assert not any("STARTTLS" in f or "certificate" in f for f in faults)


def test_plain_lines_in_a_pipe(check, starttls_server):
    r = check("tls.test", starttls_server.port)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 0
    assert out[0] == "10 mx.example.test 127.0.0.1"
    where = f"mx.example.test 127.0.0.1:{starttls_server.port}"
    assert any(line.startswith(f"check {where} banner ok ") for line in out)
    (tls,) = [line for line in out if line.startswith(f"tls {where} version=TLSv1.")]
    fields = dict(f.split("=", 1) for f in shlex.split(tls)[3:])
    assert fields["expired"] == "no" and fields["name_match"] == "yes" and fields["verified"] == "yes"
    assert "mx.example.test" in fields["san"].split(",") and "trustme" in fields["issuer"]
    assert "record dmarc v=DMARC1; p=reject" in out
    assert any(line.startswith("fault 2 SPF records") for line in out)


def test_untrusted_certificate_still_reported(check, starttls_server):
    doc = _json(check("tls.test", starttls_server.port, "--json", ca="/nonexistent"))
    tls = doc["checks"]["servers"][0]["tls"]
    assert tls["verified"] is False and "issuer" in tls["verify_error"]
    assert "mx.example.test" in tls["san"]  # read on a second, unverified connection
    assert any("not trusted" in f for f in doc["checks"]["faults"])


def test_name_mismatch_flagged(check, starttls_server):
    doc = _json(check("mismatch.test", starttls_server.port, "--json"))
    tls = doc["checks"]["servers"][0]["tls"]
    assert tls["name_match"] is False and tls["verified"] is True
    assert any("does not match other.mismatch.test" in f for f in doc["checks"]["faults"])


def test_starttls_missing_flagged(check, plain_server):
    doc = _json(check("plain.test", plain_server.port, "--json"))
    srv = doc["checks"]["servers"][0]
    assert srv["ok"] and srv["starttls"] is False and srv["tls"] is None
    assert [s["step"] for s in srv["steps"]] == ["connect", "banner", "ehlo", "quit"]
    assert any("STARTTLS missing" in f for f in doc["checks"]["faults"])
    assert doc["checks"]["records"]["spf"] == ["v=spf1 a -all"] and doc["checks"]["records"]["dmarc"] == []


def test_expired_certificate_flagged(check, tls_ca, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = tls_ca.ca.issue_cert("mx.example.test", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    c = smtp_server((str(cert_file), str(key_file)))
    try:
        doc = _json(check("tls.test", c.port, "--json"))
    finally:
        c.stop()
    tls = doc["checks"]["servers"][0]["tls"]
    assert tls["expired"] is True and tls["verified"] is False
    assert any("certificate expired" in f for f in doc["checks"]["faults"])


def test_dead_exchanger_never_hangs_the_report(check, plain_server):
    # dead.dead.test is 127.0.0.2 on the same port: it accepts TCP and never says a word.
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.2", plain_server.port))
    dead.listen(8)
    try:
        t0 = time.monotonic()
        doc = _json(check("dead.test", plain_server.port, "--json", timeout="1"))
        elapsed = time.monotonic() - t0
    finally:
        dead.close()
    good, bad = doc["checks"]["servers"]
    assert good["host"] == "good.dead.test" and good["ok"]
    assert bad["host"] == "dead.dead.test" and not bad["ok"]
    assert bad["steps"][0]["step"] == "connect" and bad["steps"][0]["ok"]
    assert bad["steps"][1]["step"] == "banner" and "timed out" in bad["steps"][1]["detail"]
    assert any("dead.dead.test [127.0.0.2]" in f and "timed out" in f for f in doc["checks"]["faults"])
    assert elapsed < 15  # the 1 s timeout, not a hang (a loaded machine starts the program slowly)


def test_refused_port_reported(check):
    port = support_dns.free_udp_tcp_port()
    doc = _json(check("plain.test", port, "--json"))
    srv = doc["checks"]["servers"][0]
    assert not srv["ok"] and srv["steps"][0]["step"] == "connect" and not srv["steps"][0]["ok"]
    assert "no exchanger completed an SMTP session" in doc["checks"]["faults"]


def test_helo_only_server(check):
    """An old server that refuses EHLO (502) is still diagnosed, over HELO."""
    import socketserver
    import threading

    class Old(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"220 old.example.test ready\r\n")
            for line in self.rfile:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.wfile.write(b"502 5.5.1 command not implemented\r\n")
                elif verb == b"HELO":
                    self.wfile.write(b"250 old.example.test\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return

    socketserver.TCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Old)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        doc = _json(check("plain.test", server.server_address[1], "--json"))
    finally:
        server.shutdown()
        server.server_close()
    srv = doc["checks"]["servers"][0]
    assert srv["ok"] and srv["extensions"] == [] and srv["starttls"] is False
    assert [s["step"] for s in srv["steps"]] == ["connect", "banner", "ehlo", "helo", "quit"]
    assert srv["steps"][2]["detail"].startswith("502")
    assert any("STARTTLS missing" in f for f in doc["checks"]["faults"])


def test_a_failed_spf_lookup_is_not_also_a_missing_record():
    import asyncio
    from types import SimpleNamespace

    from mailtools.core import dns as mxdns
    from mailtools.mxcheck import Checker

    class Refusing:  # REFUSED for the domain's own TXT; the other policy names have none
        async def query(self, name, rtype):
            if name == "example.test":
                raise mxdns.DNSTempFail("REFUSED")
            return SimpleNamespace(records=[])

    records, faults = asyncio.run(Checker(Refusing()).records("example.test"))
    assert any(f.startswith("SPF lookup failed") for f in faults), faults
    assert "no SPF record" not in faults, faults

    class Empty:
        async def query(self, name, rtype):
            return SimpleNamespace(records=[])

    records, faults = asyncio.run(Checker(Empty()).records("example.test"))
    assert "no SPF record" in faults


@pytest.mark.parametrize("line", ["\u00b250 hi", "\u0662\u0665\u0660 hi"])  # '²50', Arabic-Indic 250
def test_mx_check_takes_only_ascii_digits_as_a_reply_code(line):
    import asyncio

    from mailtools import mxcheck

    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(line.encode() + b"\r\n")
        reader.feed_eof()
        with pytest.raises(ConnectionError, match="not an SMTP reply"):
            await mxcheck._reply(reader)

    asyncio.run(go())
