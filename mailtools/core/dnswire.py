"""DNS wire format (RFC 1035 4.1), just what a stub resolver for mail needs: one-question
queries and the MX, A, AAAA, CNAME, TXT and SOA records of an answer.

Hand-written on purpose: dnspython's message objects cost ~0.3 ms per query and answer, which
would make bulk MX lookups slower than `dig -f`. Anything this module cannot parse raises
WireError; the resolver then treats the answer as a failure of that server.
"""

from __future__ import annotations

import functools
import socket
import struct
from typing import Any, NamedTuple

A, NS, CNAME, SOA, MX, TXT, AAAA, OPT = 1, 2, 5, 6, 15, 16, 28, 41
TYPES = {"A": A, "NS": NS, "CNAME": CNAME, "SOA": SOA, "MX": MX, "TXT": TXT, "AAAA": AAAA}
TYPE_NAMES = {v: k for k, v in TYPES.items()}

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

EDNS_PAYLOAD = 1232  # RFC 9715 / DNS flag day 2020: fits one unfragmented datagram
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QUESTION = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_ntop, _INET, _INET6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6
# OPT pseudo-RR (RFC 6891 6.1.2): root owner, type 41, class = UDP payload size, no flags.
_OPT = b"\x00" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, 0, 0)


class WireError(ValueError):
    """A message that is not valid DNS (or not one we can read)."""


_LENGTH = [bytes((i,)) for i in range(64)]  # a label's length octet


@functools.lru_cache(maxsize=4096)  # A and AAAA (and retries) ask for the same name
def encode_name(name: str) -> bytes:
    """'mx.example.test' (ASCII, no trailing dot) -> wire labels. Raises WireError."""
    if not name or name == ".":
        return b"\x00"
    labels = name.rstrip(".").encode("ascii").split(b".")
    try:
        out = b"".join([_LENGTH[len(label)] + label for label in labels]) + b"\x00"
    except IndexError:  # 64 octets or more
        raise WireError(f"bad label length in {name!r}") from None
    if not all(labels):
        raise WireError(f"bad label length in {name!r}")
    if len(out) > 255:  # RFC 1035 2.3.4
        raise WireError(f"name too long: {name[:40]}...")
    return out


def build_query(qid: int, name: str, qtype: int, *, edns: bool = True, rd: bool = True) -> bytes:
    """A query with one question (and an EDNS0 OPT record so big answers can come over UDP)."""
    flags = 0x0100 if rd else 0
    header = _HEADER.pack(qid, flags, 1, 0, 0, 1 if edns else 0)
    return header + encode_name(name) + _QUESTION.pack(qtype, 1) + (_OPT if edns else b"")


_QUERY_FLAGS = _HEADER.pack(0, 0x0100, 1, 0, 0, 1)[2:]  # after the id: RD, one question, OPT


def query_template(name: str, qtype: int) -> tuple[bytes, bytes]:
    """(question section, query without its 2-byte id) for name/qtype: what build_query(qid,
    name, qtype) makes is qid.to_bytes(2, "big") + the second. The question is what an answer
    must echo (RFC 5452 9.1); read_answer compares it byte for byte. Raises WireError."""
    question = encode_name(name) + _QUESTION.pack(qtype, 1)
    return question, _QUERY_FLAGS + question + _OPT


def _read_name(data: bytes, pos: int, seen: dict | None = None) -> tuple[str, int]:
    """Decode a possibly compressed name at pos; returns (lower-case text without trailing dot,
    position after the name in the original stream). `seen` (offset -> raw name) remembers the
    names read so far in this message, so a pointer to one (RFC 1035 4.1.4: the answers'
    owners point at the question) is not followed label by label again."""
    parts = []
    start = pos
    end = -1
    hops = 0
    n = len(data)
    while True:
        if pos >= n:
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length >= 0xC0:  # RFC 1035 4.1.4 compression pointer
            if pos + 1 >= n:
                raise WireError("truncated pointer")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            if seen is not None:
                known = seen.get(pos)
                if known is not None:
                    if known:
                        parts.append(known)
                    break
            hops += 1
            if hops > 64:
                raise WireError("compression loop")
            continue
        if length > 63:
            raise WireError("unknown label type")
        pos += 1
        if pos + length > n:
            raise WireError("label runs past the end")
        parts.append(data[pos : pos + length])
        pos += length
    raw = b".".join(parts)
    if len(raw) > 254:
        raise WireError("name too long")
    if seen is not None:
        seen[start] = raw
    return raw.decode("ascii", "backslashreplace").lower(), (end if end >= 0 else pos)


class Record(NamedTuple):
    """One resource record: owner name, type, TTL and parsed data.

    data is: A/AAAA -> address text; MX -> (preference, exchange); CNAME/NS -> target name;
    TXT -> the character-strings joined (bytes); SOA -> minimum TTL (int); others -> raw bytes.
    (A tuple: thousands are made per second in bulk lookups.)
    """

    name: str
    rtype: int
    ttl: int
    data: Any

    def __repr__(self) -> str:
        return f"Record({self.name!r}, {TYPE_NAMES.get(self.rtype, self.rtype)}, {self.ttl}, {self.data!r})"


class Response(NamedTuple):
    id: int
    rcode: int
    truncated: bool
    qname: str
    qtype: int
    answer: list
    authority: list


_new = tuple.__new__  # Record(...) / Response(...) without the Python-level __new__


def _rdata(data: bytes, rtype: int, pos: int, rdlen: int, seen: dict | None = None):
    end = pos + rdlen
    if rtype == A:
        if rdlen != 4:
            raise WireError("bad A record")
        return socket.inet_ntop(socket.AF_INET, data[pos:end])
    if rtype == AAAA:
        if rdlen != 16:
            raise WireError("bad AAAA record")
        return socket.inet_ntop(socket.AF_INET6, data[pos:end])
    if rtype == MX:
        if rdlen < 3:
            raise WireError("bad MX record")
        (pref,) = struct.unpack_from("!H", data, pos)
        host, _ = _read_name(data, pos + 2, seen)
        return (pref, host)
    if rtype in (CNAME, NS):
        return _read_name(data, pos, seen)[0]
    if rtype == TXT:
        parts, p = [], pos
        while p < end:
            ln = data[p]
            parts.append(data[p + 1 : p + 1 + ln])
            p += 1 + ln
        return b"".join(parts)
    if rtype == SOA:
        _, p = _read_name(data, pos)
        _, p = _read_name(data, p)
        if p + 20 > len(data):
            raise WireError("bad SOA record")
        return struct.unpack_from("!I", data, p + 16)[0]
    return data[pos:end]


def parse_response(data: bytes, expect: str | None = None) -> Response:
    """Parse a response; raises WireError for anything malformed. `expect` is the name asked
    (lower case): when the question section holds it (in any case), it is not decoded again."""
    if len(data) < 12:
        raise WireError("short message")
    qid, flags, qd, an, ns, _ar = _HEADER.unpack_from(data, 0)
    if not flags & 0x8000:
        raise WireError("not a response")
    rcode = flags & 0x000F
    truncated = bool(flags & 0x0200)
    pos = 12
    qname, qtype = "", 0
    seen: dict[int, bytes] = {}
    n = len(data)
    try:
        if expect is not None and qd == 1:
            wire = encode_name(expect)
            end = 12 + len(wire)
            if data[12:end].lower() == wire:
                seen[12] = expect.encode("ascii")
                qname, pos = expect, end
                qtype, _c = _QUESTION.unpack_from(data, pos)
                pos += 4
                qd = 0  # read
        for i in range(qd):
            name, pos = _read_name(data, pos, seen)
            t, _c = _QUESTION.unpack_from(data, pos)
            pos += 4
            if i == 0:
                qname, qtype = name, t
        sections: list[list[Record]] = [[], []]
        for idx, count in ((0, an), (1, ns)):
            out = sections[idx]
            for _ in range(count):
                if data[pos] == 0xC0 and data[pos + 1] == 12 and 12 in seen:  # the question's name
                    name = qname
                    pos += 2
                else:
                    name, pos = _read_name(data, pos, seen)
                rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
                pos += 10
                if pos + rdlen > n:
                    raise WireError("record runs past the end")
                if rclass == 1:
                    if rtype == A and rdlen == 4:
                        out.append(_new(Record, (name, A, ttl, _ntop(_INET, data[pos : pos + 4]))))
                    else:
                        out.append(_new(Record, (name, rtype, ttl, _rdata(data, rtype, pos, rdlen, seen))))
                pos += rdlen
    except (struct.error, IndexError) as exc:
        if truncated:
            return Response(qid, rcode, True, qname, qtype, [], [])
        raise WireError(str(exc)) from None
    except WireError:
        if truncated:  # a cut-off answer: the caller retries over TCP
            return Response(qid, rcode, True, qname, qtype, [], [])
        raise
    return _new(Response, (qid, rcode, truncated, qname, qtype, sections[0], sections[1]))


def read_answer(data: bytes, question: bytes, qtype: int, name: str):
    """The usual answer, read without building records: `(rcode, data of each record, ttl)`
    when `data` is a NOERROR or NXDOMAIN response, not truncated, whose question section is
    `question` (of `name`) byte for byte and whose answer records are all of `qtype` at the question's name
    (the data as Record.data, in order; ttl the lowest of theirs, or for no records the
    negative-caching TTL of RFC 2308 5 from the SOA, 0 without one). None for anything else
    (CNAMEs, other names, other rcodes, truncation, case changes, damage): parse_response and
    the full CNAME walk decide those. Additional records are not read (neither are they there)."""
    n = len(data)
    qend = 12 + len(question)
    if n < qend or data[12:qend] != question:
        return None
    flags = (data[2] << 8) | data[3]
    if flags & 0x8200 != 0x8000 or data[4] != 0 or data[5] != 1:  # a response, not truncated
        return None
    rcode = flags & 0xF
    if rcode != NOERROR and rcode != NXDOMAIN:
        return None
    an = (data[6] << 8) | data[7]
    ns = (data[8] << 8) | data[9]
    pos = qend
    out = []
    ttl = -1
    try:
        for _ in range(an):
            if data[pos] != 0xC0 or data[pos + 1] != 12:  # owner: a pointer to the question
                return None
            rtype, rclass, rttl, rdlen = _RR.unpack_from(data, pos + 2)
            pos += 12
            end = pos + rdlen
            if rtype != qtype or rclass != 1 or end > n:
                return None
            if rtype == A:
                if rdlen != 4:
                    return None
                out.append(_ntop(_INET, data[pos:end]))
            elif rtype == AAAA:
                if rdlen != 16:
                    return None
                out.append(_ntop(_INET6, data[pos:end]))
            else:
                out.append(_rdata(data, rtype, pos, rdlen, {12: name.encode("ascii")}))
            if ttl < 0 or rttl < ttl:
                ttl = rttl
            pos = end
        negative = not out
        for _ in range(ns):  # RFC 2308 5: no records: cached for the lowest SOA TTL/minimum
            pos = _skip_name(data, pos)
            if pos < 0:
                return None
            rtype, rclass, rttl, rdlen = _RR.unpack_from(data, pos)
            pos += 10
            end = pos + rdlen
            if end > n:
                return None
            if rtype == SOA and rclass == 1:
                p = _skip_name(data, pos)
                if p < 0 or _skip_name(data, p) + 20 != end:
                    return None
                if negative:
                    (minimum,) = _U32.unpack_from(data, end - 4)
                    low = rttl if rttl < minimum else minimum
                    if ttl < 0 or low < ttl:
                        ttl = low
            pos = end
    except (IndexError, struct.error, WireError):
        return None
    return rcode, out, (ttl if ttl >= 0 else 0)


def _skip_name(data: bytes, pos: int) -> int:
    """The position after the (possibly compressed) name at pos; -1 for a bad label type.
    Raises IndexError past the end."""
    while True:
        length = data[pos]
        if length >= 0xC0:
            return pos + 2 if pos + 1 < len(data) else -1
        if length > 63:
            return -1
        pos += 1 + length
        if length == 0:
            return pos
