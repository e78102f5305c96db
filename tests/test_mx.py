"""`mailtools mx-lookup` against a real DNS server (dnsmasq on a loopback port; a stdlib
responder for SERVFAIL and silence). Runs the real program; no query leaves 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest

import support_dns

BIG = {"big.test": [(10 + i, f"a-rather-long-exchanger-name-number-{i:02d}.mail-servers.big.test") for i in range(40)]}
BIG_HOSTS = {host: [f"192.0.2.{i + 1}"] for i, (_, host) in enumerate(BIG["big.test"])}

ZONE = dict(
    mx={
        "multi.test": [(30, "mx3.multi.test"), (10, "mx1.multi.test"), (20, "mx2.multi.test")],
        "equal.test": [(10, "c.equal.test"), (10, "a.equal.test"), (5, "first.equal.test"), (10, "b.equal.test")],
        "cname.test": [(10, "alias.cname.test")],
        "noaddr.test": [(10, "good.noaddr.test"), (20, "empty.noaddr.test"), (30, "gone.noaddr.test")],
        "allbad.test": [(10, "empty.allbad.test"), (20, "gone.allbad.test")],
        "xn--bcher-kva.test": [(10, "mx1.multi.test")],
        "iplit.test": [(10, "192.0.2.55")],
        **BIG,
    },
    hosts={
        "mx1.multi.test": ["192.0.2.1", "2001:db8::1"],
        "mx2.multi.test": ["192.0.2.2"],
        "mx3.multi.test": ["2001:db8::3"],
        "a.equal.test": ["192.0.2.11"], "b.equal.test": ["192.0.2.12"], "c.equal.test": ["192.0.2.13"],
        "first.equal.test": ["192.0.2.10"],
        "real.cname.test": ["192.0.2.20"],
        "nullmx.test": ["192.0.2.66"],  # the decoy: must never be used
        "aonly.test": ["192.0.2.30"],
        "v6only.test": ["2001:db8::30"],
        "good.noaddr.test": ["192.0.2.40"],
        "192.0.2.55": ["192.0.2.55"],
        **BIG_HOSTS,
    },
    cname={"alias.cname.test": "real.cname.test"},
    null_mx=["nullmx.test"],
    empty=["empty.noaddr.test", "empty.allbad.test", "nothing.test"],
)


@pytest.fixture(scope="module")
def dns():
    server = support_dns.start_dnsmasq(**ZONE)
    yield server
    server.stop()


@pytest.fixture
def mx(run, dns, home):
    def _mx(*args, input=b"", ns=None):
        r = run("mx-lookup", "--nameserver", ns or dns.nameserver, "--timeout", "2", *args, input=input)
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    return _mx


def lines(out: str) -> list[str]:
    return out.strip().splitlines()


def test_preferences_in_delivery_order(mx):
    rc, out, err = mx("multi.test")
    assert rc == 0, err
    assert lines(out) == [
        "10 mx1.multi.test 192.0.2.1 2001:db8::1",
        "20 mx2.multi.test 192.0.2.2",
        "30 mx3.multi.test 2001:db8::3",
    ]
    assert err == ""


def test_equal_preferences_sorted_by_name_in_report(mx):
    rc, out, _ = mx("equal.test")
    assert rc == 0
    assert [line.split()[1] for line in lines(out)] == ["first.equal.test", "a.equal.test", "b.equal.test", "c.equal.test"]


def test_json_fields_exactly_as_designed(mx):
    rc, out, _ = mx("--json", "multi.test")
    assert rc == 0
    doc = json.loads(out)
    assert set(doc) == {"input", "domain", "status", "exchangers", "warnings"}
    assert doc["status"] == "ok" and doc["domain"] == "multi.test" and doc["input"] == "multi.test"
    assert doc["exchangers"][0] == {"preference": 10, "host": "mx1.multi.test", "addresses": ["192.0.2.1", "2001:db8::1"], "warnings": []}
    assert [e["preference"] for e in doc["exchangers"]] == [10, 20, 30]


def test_cname_target_followed_and_warned(mx):
    rc, out, err = mx("--json", "cname.test")
    doc = json.loads(out)
    assert rc == 0 and doc["status"] == "ok"
    ex = doc["exchangers"][0]
    assert ex["host"] == "alias.cname.test" and ex["addresses"] == ["192.0.2.20"]
    assert any("CNAME" in w and "RFC 2181" in w for w in ex["warnings"])
    rc, out, err = mx("cname.test")
    assert lines(out) == ["10 alias.cname.test 192.0.2.20"] and "CNAME" in err


def test_null_mx_never_falls_back_to_a(mx):
    rc, out, err = mx("nullmx.test")
    assert rc == 68 and out == ""
    assert "null MX" in err and "192.0.2.66" not in err
    rc, out, _ = mx("--json", "nullmx.test")
    doc = json.loads(out)
    assert rc == 68 and doc["status"] == "null-mx" and doc["exchangers"] == []


@pytest.mark.parametrize("domain,address", [("aonly.test", "192.0.2.30"), ("v6only.test", "2001:db8::30")])
def test_implicit_mx_from_a_or_aaaa(mx, domain, address):
    rc, out, err = mx("--json", domain)
    doc = json.loads(out)
    assert rc == 0 and doc["status"] == "implicit"
    assert doc["exchangers"] == [{"preference": 0, "host": domain, "addresses": [address], "warnings": []}]
    rc, out, err = mx(domain)
    assert lines(out) == [f"0 {domain} {address}"] and "implicit MX" in err


def test_nxdomain(mx):
    rc, out, err = mx("nosuch.test")
    assert rc == 68 and out == "" and "NXDOMAIN" in err
    rc, out, _ = mx("--json", "nosuch.test")
    assert json.loads(out)["status"] == "nxdomain"


def test_no_mx_and_no_address_is_no_address(mx):
    rc, out, err = mx("--json", "nothing.test")
    doc = json.loads(out)
    assert rc == 68 and doc["status"] == "no-address"
    assert any("no MX and no A/AAAA" in w for w in doc["warnings"])


def test_targets_without_address_flagged(mx):
    rc, out, err = mx("--json", "noaddr.test")
    doc = json.loads(out)
    assert rc == 0 and doc["status"] == "ok"
    by_host = {e["host"]: e for e in doc["exchangers"]}
    assert by_host["good.noaddr.test"]["addresses"] == ["192.0.2.40"]
    assert by_host["empty.noaddr.test"]["addresses"] == [] and "no A or AAAA" in by_host["empty.noaddr.test"]["warnings"][0]
    assert "does not exist" in by_host["gone.noaddr.test"]["warnings"][0]
    rc, out, _ = mx("noaddr.test")
    assert "20 empty.noaddr.test -" in lines(out)


def test_all_targets_without_address_exit_68(mx):
    rc, out, err = mx("--json", "allbad.test")
    doc = json.loads(out)
    assert rc == 68 and doc["status"] == "no-address"
    assert len(doc["exchangers"]) == 2 and all(not e["addresses"] for e in doc["exchangers"])


def test_ip_literal_mx_target_warned(mx):
    rc, out, _ = mx("--json", "iplit.test")
    doc = json.loads(out)
    assert any("IP address" in w for w in doc["exchangers"][0]["warnings"])


def test_idn_domain_to_a_labels(mx):
    rc, out, _ = mx("--json", "Bücher.TEST")
    doc = json.loads(out)
    assert rc == 0 and doc["domain"] == "xn--bcher-kva.test" and doc["input"] == "Bücher.TEST"
    assert doc["exchangers"][0]["host"] == "mx1.multi.test"


def test_forty_mx_records_over_tcp(mx, dns):
    # The UDP answer cannot hold 40 long names: check the server really truncates it...
    from mailtools.core import dnswire

    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(dnswire.build_query(7, "big.test", dnswire.MX), ("127.0.0.1", dns.port))
        assert dnswire.parse_response(s.recv(65535)).truncated
    # ...and that mx-lookup still returns all 40.
    rc, out, err = mx("big.test")
    assert rc == 0, err
    assert len(lines(out)) == 40
    assert lines(out)[0] == "10 a-rather-long-exchanger-name-number-00.mail-servers.big.test 192.0.2.1"


def test_trailing_dot_and_address_input(mx):
    rc, out, _ = mx("--json", "multi.test.", "Someone@MULTI.test")
    docs = [json.loads(line) for line in lines(out)]
    assert rc == 0
    assert [d["domain"] for d in docs] == ["multi.test", "multi.test"]
    assert [d["input"] for d in docs] == ["multi.test.", "Someone@MULTI.test"]


@pytest.mark.parametrize("bad", ["", "user@", "a b.test", "exa mple.test", "[192.0.2.1]", "192.0.2.1", "x..test", "-x.test"])
def test_invalid_input_is_usage_error_without_a_query(run, home, bad):
    # The name server does not exist (a silent port): any query would take the whole timeout,
    # 30 s, far more than the program's start on a loaded machine.
    port = support_dns.free_udp_tcp_port()
    t0 = time.monotonic()
    r = run("mx-lookup", "--nameserver", f"127.0.0.1:{port}", "--timeout", "30", "ok.test", bad)
    assert r.returncode == 64, r.stderr
    assert r.stdout == b"" and b"mailtools mx-lookup:" in r.stderr
    assert time.monotonic() - t0 < 20


def test_no_arguments_and_bad_options(run, home):
    assert run("mx-lookup").returncode == 64
    assert run("mx-lookup", "--frob", "x.test").returncode == 64
    assert run("mx-lookup", "--nameserver", "not-an-ip", "x.test").returncode == 64
    assert run("mx-lookup", "--timeout", "abc", "x.test").returncode == 64
    assert run("mx-lookup", "--concurrency", "0", "x.test").returncode == 64
    assert run("mx-lookup", "--concurrency", "many", "x.test").returncode == 64


@pytest.mark.parametrize("mode", ["servfail", "refused"])
def test_servfail_refused_are_tempfail_never_implicit(run, home, mode):
    with support_dns.start_fake_dns(mode) as fake:
        r = run("mx-lookup", "--nameserver", fake.nameserver, "--timeout", "2", "--json", "aonly.test")
    doc = json.loads(r.stdout)
    assert r.returncode == 75 and doc["status"] == "tempfail" and doc["exchangers"] == []
    assert mode.upper() in doc["warnings"][0]


def test_timeout_is_tempfail(run, home):
    with support_dns.start_fake_dns("silent") as fake:
        t0 = time.monotonic()
        r = run("mx-lookup", "--nameserver", fake.nameserver, "--timeout", "1", "multi.test")
        elapsed = time.monotonic() - t0
    assert r.returncode == 75 and r.stdout == b""
    assert b"timed out" in r.stderr
    assert elapsed < 5


def test_second_nameserver_used_when_first_fails(dns, run, home):
    with support_dns.start_fake_dns("servfail") as fake:
        r = run("mx-lookup", "--nameserver", fake.nameserver, "--nameserver", dns.nameserver, "multi.test")
    assert r.returncode == 0 and r.stdout.decode().startswith("10 mx1.multi.test")


def test_config_nameservers_used(dns, run, tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'root = "{tmp_path}"\n' + dns.toml())
    r = run("--config", cfg, "mx-lookup", "aonly.test")
    assert r.returncode == 0 and r.stdout == b"0 aonly.test 192.0.2.30\n"
    cfg.write_text(f'root = "{tmp_path}"\n[dns]\nnameservers = ["bogus"]\n')
    r = run("--config", cfg, "mx-lookup", "aonly.test")
    assert r.returncode == 78 and b"nameservers" in r.stderr


@pytest.mark.parametrize("concurrency", [None, "1", "3"])
def test_bulk_stdin_in_input_order(mx, concurrency):
    names = ["multi.test", "nosuch.test", "aonly.test", "bad name", "", "# comment", "nullmx.test", "cname.test"] * 20
    extra = ["--concurrency", concurrency] if concurrency else []
    rc, out, err = mx(*extra, "-", input=("\n".join(names) + "\n").encode())
    got = lines(out)
    expect_one = [
        "multi.test 10 mx1.multi.test 192.0.2.1 2001:db8::1",
        "multi.test 20 mx2.multi.test 192.0.2.2",
        "multi.test 30 mx3.multi.test 2001:db8::3",
        "nosuch.test nxdomain",
        "aonly.test 0 aonly.test 192.0.2.30",
        "nullmx.test null-mx",
        "cname.test 10 alias.cname.test 192.0.2.20",
    ]
    assert got == expect_one * 20
    assert err.count("'bad name'") == 20
    assert rc == 68  # the worst of: ok, invalid line (64), no mail there (68)


def test_bulk_json_one_object_per_name(mx):
    names = [f"{d}\n" for d in ("aonly.test", "v6only.test", "nosuch.test")] * 50
    rc, out, _ = mx("--json", "-", input="".join(names).encode())
    docs = [json.loads(line) for line in lines(out)]
    assert [d["input"] for d in docs] == [n.strip() for n in names]
    assert rc == 68


def test_bulk_all_good_exit_zero_and_tempfail_wins(mx, dns):
    rc, out, _ = mx("-", input=b"multi.test\naonly.test\n")
    assert rc == 0 and len(lines(out)) == 4
    with support_dns.start_fake_dns("servfail") as fake:
        rc, out, _ = mx("-", "nosuch.test", input=b"multi.test\n", ns=fake.nameserver)
    assert rc == 75 and lines(out) == ["multi.test tempfail", "nosuch.test tempfail"]


def test_closed_stdout_is_not_an_error(dns, home):
    import subprocess
    import sys

    names = b"multi.test\n" * 3000
    p = subprocess.run(
        f"{sys.executable} -m mailtools mx-lookup --nameserver {dns.nameserver} - | head -1",
        shell=True, input=names, capture_output=True, timeout=60,
    )
    assert p.stdout == b"multi.test 10 mx1.multi.test 192.0.2.1 2001:db8::1\n"
    assert b"Traceback" not in p.stderr and b"internal error" not in p.stderr


def _on_a_tty(args, stdin_data=None, env_extra=None):
    """Run mailtools with stdout/stderr on a pseudo-terminal; returns (status, text)."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    env = dict(os.environ, NO_COLOR="1", COLUMNS="120", **(env_extra or {}))
    p = subprocess.Popen([sys.executable, "-m", "mailtools", *args], stdin=subprocess.PIPE, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    if stdin_data is not None:
        p.stdin.write(stdin_data)
    p.stdin.close()
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(30), out.decode(errors="replace")


def test_rich_table_on_a_terminal(dns, home):
    rc, text = _on_a_tty(["mx-lookup", "--nameserver", dns.nameserver, "multi.test", "cname.test", "nosuch.test"])
    assert rc == 68
    assert "Pref" in text and "Addresses" in text and "Warnings" in text
    assert "mx1.multi.test" in text and "2001:db8::1" in text
    assert "RFC 2181" in text and "nxdomain" in text and "does not exist" in text
    assert "\x1b[3" not in text  # NO_COLOR honoured


def test_terminal_bulk_mode_shows_each_domain(dns, home):
    rc, text = _on_a_tty(["mx-lookup", "--nameserver", dns.nameserver, "-"], stdin_data=b"aonly.test\nv6only.test\n")
    assert rc == 0 and "aonly.test" in text and "2001:db8::30" in text
