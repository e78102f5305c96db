"""mailtools.core.dns (the API relay routes with) and core.dnswire, against dnsmasq; property
tests for the wire parser and the name normaliser."""

from __future__ import annotations

import asyncio
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import support_dns
from mailtools.core import dns as mxdns
from mailtools.core import dnswire


@pytest.fixture(scope="module")
def server():
    s = support_dns.start_dnsmasq(
        mx={"shuffle.test": [(10, f"h{i}.shuffle.test") for i in range(4)] + [(20, "last.shuffle.test"), (5, "first.shuffle.test")],
            "mixed.test": [(10, "a.mixed.test")]},
        hosts={**{f"h{i}.shuffle.test": [f"192.0.2.{i + 1}"] for i in range(4)},
               "last.shuffle.test": ["192.0.2.9"], "first.shuffle.test": ["192.0.2.8"], "a.mixed.test": ["192.0.2.7"],
               "real.test": ["192.0.2.50"]},
        cname={"alias.test": "real.test"},
        null_mx=["mixed.test"],
        txt={"txt.test": ["v=spf1 -all", "second, with a comma"]},
        ttl=300,
    )
    yield s
    s.stop()


def run(coro):
    return asyncio.run(coro)


def test_make_resolver_explicit_and_bad_input(server):
    r = mxdns.make_resolver([server.nameserver, "[::1]:53", "192.0.2.1"], 3)
    assert r.nameservers == [("127.0.0.1", server.port), ("::1", 53), ("192.0.2.1", 53)] and r.timeout == 3
    for bad in ("example.test", "127.0.0.1:0", "127.0.0.1:x", "[::1"):
        with pytest.raises(ValueError):
            mxdns.make_resolver([bad], 3)


def test_make_resolver_system_default(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch test\n")
    assert mxdns.system_nameservers(str(conf)) == [("192.0.2.53", 53), ("fe80::1", 53)]
    assert mxdns.system_nameservers(str(tmp_path / "none")) == [("127.0.0.1", 53)]


def test_shuffle_keeps_preference_order_and_varies_equal_ones(server):
    r = mxdns.make_resolver([server.nameserver], 2)

    async def many():
        return [await mxdns.lookup("shuffle.test", r, shuffle=True) for _ in range(60)]

    results = run(many())
    orders = Counter()
    for res in results:
        hosts = [e.host for e in res.exchangers]
        assert hosts[0] == "first.shuffle.test" and hosts[-1] == "last.shuffle.test"
        assert sorted(hosts[1:5]) == [f"h{i}.shuffle.test" for i in range(4)]
        orders[tuple(hosts[1:5])] += 1
    assert len(orders) > 5  # 24 permutations; 60 draws landing on <= 5 is vanishingly unlikely
    stable = run(mxdns.lookup("shuffle.test", r))
    assert [e.host for e in stable.exchangers][1:5] == [f"h{i}.shuffle.test" for i in range(4)]


def test_answers_cached_for_their_ttl(server):
    r = mxdns.make_resolver([server.nameserver], 2)

    async def twice():
        first = await mxdns.lookup("shuffle.test", r)
        sent = r.queries_sent
        second = await mxdns.lookup("shuffle.test", r)
        return first, second, sent, r.queries_sent

    first, second, sent, after = run(twice())
    assert sent == 1 + 2 * 6  # MX, then A and AAAA per exchanger
    # Positive answers come from the cache; the six empty AAAA answers carry no SOA (dnsmasq),
    # so RFC 2308 5 says not to cache them: only those are asked again.
    assert after - sent == 6
    assert [e.addresses for e in first.exchangers] == [e.addresses for e in second.exchangers]
    # a new event loop (asyncio.run again) reuses the cache and rebinds its sockets
    assert run(mxdns.lookup("shuffle.test", r)).status == "ok" and r.queries_sent == after + 6


def test_concurrent_identical_queries_share_one(server):
    r = mxdns.make_resolver([server.nameserver], 2)

    async def go():
        return await asyncio.gather(*(r.query("real.test", "A") for _ in range(50)))

    answers = run(go())
    assert all(a.records == ["192.0.2.50"] for a in answers)
    assert r.queries_sent == 1


def test_query_follows_cname_and_reads_txt(server):
    r = mxdns.make_resolver([server.nameserver], 2)

    async def go():
        return await r.query("alias.test", "A"), await r.query("txt.test", "TXT"), await r.query("nope.test", "A")

    a, txt, nx = run(go())
    assert a.cnames == ["real.test"] and a.canonical == "real.test" and a.records == ["192.0.2.50"]
    assert sorted(txt.records) == [b"second, with a comma", b"v=spf1 -all"]
    assert nx.nxdomain and nx.records == []


def test_null_mx_mixed_with_others_is_ignored_with_warning(server):
    r = mxdns.make_resolver([server.nameserver], 2)
    res = run(mxdns.lookup("mixed.test", r))
    assert res.status == "ok" and [e.host for e in res.exchangers] == ["a.mixed.test"]
    assert any("RFC 7505" in w for w in res.warnings)


def test_lookup_rejects_bad_names_without_querying(server):
    r = mxdns.make_resolver([server.nameserver], 2)
    with pytest.raises(ValueError):
        run(mxdns.lookup("no such", r))
    assert r.queries_sent == 0


def test_tempfail_exit_code_map():
    assert mxdns.EXIT_FOR_STATUS == {"ok": 0, "implicit": 0, "null-mx": 68, "nxdomain": 68, "no-address": 68, "tempfail": 75}
    assert set(mxdns.EXIT_FOR_STATUS) == set(mxdns.STATUSES)


def test_start_lookup_gives_what_lookup_gives(server):
    """The callback form used by bulk mx-lookup and the coroutine relay uses agree."""
    names = ["shuffle.test", "mixed.test", "alias.test", "nope.test", "real.test", "Someone@Shuffle.Test."]

    async def both():
        r1, r2 = mxdns.make_resolver([server.nameserver], 2), mxdns.make_resolver([server.nameserver], 2)
        by_coroutine = [await mxdns.lookup(n, r1) for n in names]
        done = asyncio.get_running_loop().create_future()
        by_callback: dict[int, object] = {}

        def got(i, result):
            by_callback[i] = result
            if len(by_callback) == len(names):
                done.set_result(None)

        for i, n in enumerate(names):
            mxdns.start_lookup(n, r2, lambda res, i=i: got(i, res))
        await done
        with pytest.raises(ValueError):
            mxdns.start_lookup("no such", r2, got)
        return by_coroutine, [by_callback[i] for i in range(len(names))], r1.queries_sent, r2.queries_sent

    by_coroutine, by_callback, sent1, sent2 = run(both())
    assert [r.to_json() for r in by_callback] == [r.to_json() for r in by_coroutine]
    assert [r.status for r in by_callback] == ["ok", "ok", "implicit", "nxdomain", "implicit", "ok"]
    assert sent2 <= sent1  # at once, the repeated name shares its questions


def test_silent_server_times_out_and_the_next_one_answers(server):
    """A try that gets no answer is retransmitted to the next server after its timer."""
    with support_dns.start_fake_dns("silent") as silent:
        r = mxdns.make_resolver([silent.nameserver, server.nameserver], 3)
        answer = run(r.query("real.test", "A"))
    assert answer.records == ["192.0.2.50"] and r.queries_sent == 2


def test_resolver_outlives_a_loop_that_ended_with_queries_in_flight(server):
    """relay runs one event loop per queue run: a loop that ends while a query waits (here on
    a server that never answers) leaves the resolver usable by the next loop."""
    with support_dns.start_fake_dns("silent") as silent:
        r = mxdns.make_resolver([silent.nameserver], 3)

        async def abandon():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.query("real.test", "A"), 0.2)

        run(abandon())
        r.nameservers = [("127.0.0.1", server.port)]
        assert run(r.query("real.test", "A")).records == ["192.0.2.50"]


def test_mismatched_answer_is_ignored():
    """An answer whose question differs from ours (RFC 5452 9.1) must not be accepted."""
    async def go():
        r = mxdns.Resolver([("127.0.0.1", 9)], 2)
        r._bind()
        outcomes = []
        client = mxdns._UDPClient(asyncio.get_running_loop(), ("127.0.0.1", 9), r)
        q = mxdns._Question("a.test", dnswire.A, outcomes.append, asyncio.get_running_loop().time() + 2)
        q.server, q.client, q.qid = ("127.0.0.1", 9), client, 1
        r._active = 1
        client.pending[1] = q
        wrong = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + dnswire.encode_name("b.test") + b"\x00\x01\x00\x01"
        client._answer(wrong)
        assert outcomes == [] and 1 in client.pending
        right = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + dnswire.encode_name("a.test") + b"\x00\x01\x00\x01"
        client._answer(right)
        client.close()
        return outcomes

    outcomes = run(go())
    assert len(outcomes) == 1 and outcomes[0].rcode == 0 and outcomes[0].records == []


# --- properties ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_crashes_on_garbage(data):
    try:
        resp = dnswire.parse_response(data)
    except dnswire.WireError:
        return
    assert isinstance(resp.answer, list)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(_label, min_size=1, max_size=6), st.integers(0, 65535), st.sampled_from([dnswire.A, dnswire.MX, dnswire.AAAA]))
def test_query_round_trips_through_the_parser(labels, qid, qtype):
    name = ".".join(labels)
    wire = bytearray(dnswire.build_query(qid, name, qtype, edns=False))
    wire[2] |= 0x80  # make it look like a response
    resp = dnswire.parse_response(bytes(wire))
    assert (resp.id, resp.qname, resp.qtype, resp.rcode) == (qid, name, qtype, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(_label, min_size=1, max_size=5), st.booleans(), st.booleans())
def test_normalise_domain_is_idempotent_and_case_folds(labels, dot, address):
    name = ".".join(labels)
    if name.replace(".", "").isdigit():
        return
    text = ("Someone@" if address else "") + name.upper() + ("." if dot else "")
    try:
        once = mxdns.normalise_domain(text)
    except ValueError:
        assert all(ch.isdigit() or ch == "." for ch in name)  # only IP-like names may be refused
        return
    assert once == name and mxdns.normalise_domain(once) == once


@given(st.text(max_size=30))
def test_normalise_domain_only_raises_value_error(text):
    try:
        out = mxdns.normalise_domain(text)
    except ValueError:
        return
    assert out == out.lower() and " " not in out and not out.endswith(".") and out.isascii()


_host = st.lists(_label, min_size=1, max_size=4).map(".".join)
_record = st.one_of(
    st.tuples(st.just("A"), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("AAAA"), st.ip_addresses(v=6).map(str)),
    st.tuples(st.just("MX"), st.tuples(st.integers(0, 65535), _host).map(lambda t: f"{t[0]} {t[1]}.")),
    st.tuples(st.just("CNAME"), _host.map(lambda h: h + ".")),
    st.tuples(st.just("TXT"), st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='"\\'), min_size=1, max_size=40).map(lambda t: f'"{t}"')),
)


@settings(max_examples=50, deadline=None)
@given(_host, st.lists(st.tuples(_host, st.integers(0, 2**31 - 1), _record), min_size=1, max_size=8))
def test_parser_agrees_with_dnspython(qname, records):
    """Answers written by dnspython (with name compression) read back the same by dnswire."""
    import dns.message
    import dns.rrset

    query = dns.message.make_query(qname + ".", "MX")
    response = dns.message.make_response(query)
    expected = []
    for owner, ttl, (rtype, text) in records:
        response.answer.append(dns.rrset.from_text(owner + ".", ttl, "IN", rtype, text))
    for rrset in response.answer:
        for rd in rrset:
            rtype = dns.rdatatype.to_text(rrset.rdtype)
            if rtype == "MX":
                data = (rd.preference, rd.exchange.to_text(omit_final_dot=True).lower())
            elif rtype == "CNAME":
                data = rd.target.to_text(omit_final_dot=True).lower()
            elif rtype == "TXT":
                data = b"".join(rd.strings)
            else:
                data = rd.address
            expected.append((rrset.name.to_text(omit_final_dot=True).lower(), dnswire.TYPES[rtype], rrset.ttl, data))
    parsed = dnswire.parse_response(response.to_wire())
    assert parsed.qname == qname.lower() and parsed.qtype == dnswire.MX
    # the resolver's shortcut (the name it asked need not be decoded again) reads the same
    assert dnswire.parse_response(response.to_wire(), qname.lower()) == parsed
    assert dnswire.parse_response(response.to_wire(), "other." + qname.lower()) == parsed
    assert [(r.name, r.rtype, r.ttl, r.data) for r in parsed.answer] == expected


_typed = {
    dnswire.A: st.ip_addresses(v=4).map(str),
    dnswire.AAAA: st.ip_addresses(v=6).map(str),
    dnswire.MX: st.tuples(st.integers(0, 65535), _host).map(lambda t: f"{t[0]} {t[1]}."),
}


@settings(max_examples=150, deadline=None)
@given(_host, st.sampled_from(sorted(_typed)), st.data(), st.booleans(), st.integers(0, 3))
def test_usual_answer_shortcut_agrees_with_the_full_path(qname, qtype, data, nxdomain, soas):
    """dnswire.read_answer (the resolver's shortcut) gives what parse_response + the CNAME walk
    give whenever it answers at all, and answers for records of the asked type at the asked name."""
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    rtype = dns.rdatatype.to_text(qtype)
    query = dns.message.make_query(qname + ".", rtype)
    response = dns.message.make_response(query)
    if nxdomain:
        response.set_rcode(dns.rcode.NXDOMAIN)
    plain = data.draw(st.booleans())  # only records of the type at the name: the shortcut's case
    for _ in range(data.draw(st.integers(0, 4))):
        if plain:
            owner, kind, text = qname, rtype, data.draw(_typed[qtype])
        else:
            owner = data.draw(st.sampled_from([qname, "other." + qname]))
            kind, text = data.draw(_record)
        response.answer.append(dns.rrset.from_text(owner + ".", data.draw(st.integers(0, 2**31 - 1)), "IN", kind, text))
    for i in range(soas):
        response.authority.append(dns.rrset.from_text(f"z{i}.{qname}.", data.draw(st.integers(0, 10**6)), "IN", "SOA", f"ns. host. 1 2 3 4 {data.draw(st.integers(0, 10**6))}"))
    wire = response.to_wire()
    question, _ = dnswire.query_template(qname, qtype)
    usual = dnswire.read_answer(wire, question, qtype, qname)
    if plain:
        assert usual is not None
    try:
        answer = mxdns._make_answer(qname, qtype, dnswire.parse_response(wire, qname))
    except mxdns.DNSTempFail:  # a CNAME loop: never the shortcut's case
        assert usual is None
        return
    if usual is not None:
        assert usual == (answer.rcode, answer.records, answer.ttl) and answer.cnames == []
    truncated = bytearray(wire)
    truncated[2] |= 0x02
    assert dnswire.read_answer(bytes(truncated), question, qtype, qname) is None  # TCP decides
