"""DNS for mail: a small asyncio stub resolver and the MX lookup `relay` routes with.

    resolver = make_resolver()                  # [dns] nameservers / timeout, else /etc/resolv.conf
    result = await lookup("example.test", resolver, shuffle=True)
    result.status   # "ok" | "implicit" | "null-mx" | "nxdomain" | "no-address" | "tempfail"
    for mx in result.exchangers: mx.preference, mx.host, mx.addresses, mx.warnings

The resolver speaks DNS itself (mailtools.core.dnswire) over one UDP socket per name server,
with retries across servers, TCP when an answer is truncated (RFC 7766), CNAME chains followed,
and answers cached for their TTL inside the process (negative answers per RFC 2308 5). It is
cheap enough to resolve thousands of names concurrently; dnspython is only imported to convert
internationalised names (IDNA 2008).

Failure policy (RFC 5321 5.1): SERVFAIL, REFUSED and timeouts are temporary failures, never
"no MX", so they never lead to the implicit MX (the A record).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import socket
import struct
import time
from collections import deque

from mailtools.core import dnswire as wire

STATUSES = ("ok", "implicit", "null-mx", "nxdomain", "no-address", "tempfail")

# mx-lookup's exit status for each result status (DESIGN.md): 0 usable exchanger, 68 no mail
# there, 75 try again.
EXIT_FOR_STATUS = {"ok": 0, "implicit": 0, "null-mx": 68, "nxdomain": 68, "no-address": 68, "tempfail": 75}

_sysrandom = random.SystemRandom()


class DNSTempFail(Exception):
    """Every name server failed (SERVFAIL, REFUSED, timeout, garbage): try again later."""


# --------------------------------------------------------------------------------------------
# Names


_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SPACE = re.compile(r"[\s\x00]")


def normalise_domain(text: str) -> str:
    """A domain or an address (domain after the last '@') -> lower-case A-label domain without
    a trailing dot. Raises ValueError with a reason for anything that is not a mail domain."""
    s = text
    if not s:
        raise ValueError("empty name")
    if _SPACE.search(s):
        raise ValueError("a name cannot contain spaces")
    if "@" in s:
        local, _, s = s.rpartition("@")
        if not local or not s:
            raise ValueError("not an address: the part before or after '@' is empty")
    if s.startswith("["):
        raise ValueError("an address literal has no MX records")
    if s.endswith("."):
        s = s[:-1]
    if not s:
        raise ValueError("empty domain")
    if not s.isascii():
        s = _to_alabels(s)
    s = s.lower()
    if len(s) > 253:
        raise ValueError("domain name too long")
    if not _DOMAIN.fullmatch(s):
        for label in s.split("."):
            if not _LABEL.match(label):
                raise ValueError(f"invalid label {label!r}" if label else "empty label")
    if s[-1].isdigit() and _is_ip_literal(s):
        raise ValueError("an IP address, not a domain")
    return s


def _to_alabels(s: str) -> str:
    """IDNA 2008 with UTS 46 mapping (case folding, full-width dots), via dnspython."""
    import dns.name

    try:
        name = dns.name.from_text(s, origin=None, idna_codec=dns.name.IDNA_2008_Practical)
    except Exception as exc:  # noqa: BLE001 - dnspython raises several IDNA error types
        raise ValueError(f"not a valid internationalised domain name ({exc})") from None
    return name.to_text(omit_final_dot=True)


def _address_key(addr: str) -> tuple[bool, bytes]:
    """IPv4 before IPv6, each in numeric order."""
    v6 = ":" in addr
    return v6, socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, addr)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_nameserver(spec: str, default_port: int = 53) -> tuple[str, int]:
    """'192.0.2.1', '192.0.2.1:5353', '::1', '[::1]:5353' -> (ip, port). Raises ValueError."""
    s = spec.strip()
    host, port = s, default_port
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad name server {spec!r}")
        if rest:
            port = _port(rest[1:], spec)
    elif s.count(":") == 1:
        host, p = s.split(":")
        port = _port(p, spec)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"name server must be an IP address[:port], not {spec!r}") from None
    return host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in name server {spec!r}")
    return int(text)


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The `nameserver` lines of resolv.conf(5); 127.0.0.1 when there are none."""
    servers = []
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        servers.append(parse_nameserver(parts[1].split("%")[0]))
                    except ValueError:
                        continue
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


# --------------------------------------------------------------------------------------------
# Resolver


class Answer:
    """One resolved question: rcode (NOERROR or NXDOMAIN), the CNAME chain followed, the name
    it ended at, and the data of the records of the asked type (see dnswire.Record)."""

    __slots__ = ("name", "rtype", "rcode", "cnames", "canonical", "records", "ttl")

    def __init__(self, name, rtype, rcode, cnames, canonical, records, ttl):
        self.name, self.rtype, self.rcode = name, rtype, rcode
        self.cnames, self.canonical, self.records, self.ttl = cnames, canonical, records, ttl

    @property
    def nxdomain(self) -> bool:
        return self.rcode == wire.NXDOMAIN

    def __repr__(self) -> str:
        return f"Answer({self.name!r}, {wire.TYPE_NAMES.get(self.rtype)}, rcode={self.rcode}, {self.records!r})"


class _UDPClient:
    """One connected UDP socket to one name server; answers matched by id and question
    (RFC 5452 9.1), anything else dropped. The socket is drained on each wake-up (asyncio's
    datagram transport reads one datagram per loop iteration, which halves bulk throughput)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: tuple[str, int]):
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for many answers
            sock.setblocking(False)
            sock.connect(server)
        except OSError:
            sock.close()
            raise
        self.loop, self.sock = loop, sock
        self.closed = False
        self.pending: dict[int, tuple[asyncio.Future, str, int]] = {}
        loop.add_reader(sock.fileno(), self._read_ready)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.loop.remove_reader(self.sock.fileno())
            except (RuntimeError, ValueError):  # the loop is already closed
                pass
            self.sock.close()
            self._fail_all(ConnectionResetError("socket closed"))

    def _read_ready(self) -> None:
        recv = self.sock.recv
        for _ in range(256):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable and the like: fail over
                self._fail_all(exc)
                return
            self._answer(data)

    def _answer(self, data: bytes) -> None:
        if len(data) < 12:
            return
        entry = self.pending.get((data[0] << 8) | data[1])
        if entry is None:
            return
        fut, qname, qtype = entry
        if fut.done():
            return
        try:
            resp = wire.parse_response(data)
        except wire.WireError as exc:
            fut.set_exception(exc)
            return
        if resp.truncated or (resp.qname == qname and resp.qtype == qtype):
            fut.set_result(resp)

    def _fail_all(self, exc: Exception) -> None:
        for fut, _, _ in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(exc)


class _Slots:
    """A counting semaphore whose release is O(1) however many wait (asyncio.Semaphore in
    3.11 scans woken-but-not-yet-run waiters on every release)."""

    def __init__(self, n: int):
        self.free = n
        self.waiters: deque = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut  # the releaser handed its slot straight to us
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # got the slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


def _where(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _fail_timeout(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class Resolver:
    """A caching stub resolver over the given recursive name servers.

    `await query(name, "MX")` returns an Answer or raises DNSTempFail. One instance can be used
    by many concurrent tasks; it binds to the running event loop on first use and rebinds if
    used from a new loop later (e.g. after asyncio.run returns).
    """

    MAX_INFLIGHT = 100  # queries on the wire at once: more only overflows socket buffers
    MIN_RTO = 0.2  # first retransmission never sooner (a recursive server may be working on it)

    def __init__(self, nameservers: list[tuple[str, int]], timeout: float = 5.0, *, cache_size: int = 50_000):
        if not nameservers:
            raise ValueError("no name servers")
        self.nameservers = list(nameservers)
        self.timeout = float(timeout)
        self.cache_size = cache_size
        self._cache: dict[tuple[str, int], tuple[float, Answer]] = {}
        self._loop = None
        self._clients: dict[tuple[str, int], _UDPClient] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future] = {}
        self.queries_sent = 0
        self._srtt: dict[tuple[str, int], float] = {}
        self._slots = None

    def __repr__(self) -> str:
        servers = ", ".join(f"{h}:{p}" for h, p in self.nameservers)
        return f"Resolver([{servers}], timeout={self.timeout})"

    # -- public ----------------------------------------------------------------------------

    async def query(self, name: str, rtype) -> Answer:
        """Resolve name (A-label text, no trailing dot) for rtype ("MX" or wire.MX)."""
        if isinstance(rtype, str):
            rtype = wire.TYPES[rtype.upper()]
        self._bind()
        key = (name, rtype)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > time.monotonic():
                return hit[1]
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:  # the same question is already on the wire: share its answer
            return await asyncio.shield(pending)
        fut = self._loop.create_future()
        self._inflight[key] = fut
        try:
            answer = await self._resolve(name, rtype)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else DNSTempFail("cancelled"))
            fut.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(answer)
        if answer.ttl > 0:
            if len(self._cache) >= self.cache_size:
                for old in list(self._cache)[: self.cache_size // 10 + 1]:
                    del self._cache[old]
            self._cache[key] = (time.monotonic() + answer.ttl, answer)
        return answer

    def close(self) -> None:
        """Close the sockets (they are reopened on the next query)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- internals -------------------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            for client in self._clients.values():
                client.close()
            self._clients = {}
            self._inflight = {}
            self._slots = _Slots(self.MAX_INFLIGHT)

    async def _resolve(self, name: str, rtype: int) -> Answer:
        resp = await self._exchange(name, rtype)
        current, cnames = name, []
        owners: dict[str, str] = {}
        for rec in resp.answer:
            if rec.rtype == wire.CNAME:
                owners[rec.name] = rec.data
        ttls = []
        while rtype != wire.CNAME and current in owners:  # RFC 1034 3.6.2: follow the chain
            if len(cnames) >= 16:
                raise DNSTempFail(f"CNAME chain too long at {name}")
            current = owners[current]
            cnames.append(current)
        for rec in resp.answer:
            if rec.rtype == wire.CNAME and rec.name in owners and (rec.name == name or rec.name in cnames):
                ttls.append(rec.ttl)
        records = [r.data for r in resp.answer if r.rtype == rtype and r.name == current]
        ttls += [r.ttl for r in resp.answer if r.rtype == rtype and r.name == current]
        if records:
            ttl = min(ttls)
        else:  # RFC 2308 5: negative answers are cached for the SOA's TTL/minimum, or not at all
            soas = [min(r.ttl, r.data) for r in resp.authority if r.rtype == wire.SOA]
            ttl = min(soas + ttls) if soas else 0
        return Answer(name, rtype, resp.rcode, cnames, current, records, ttl)

    async def _exchange(self, name: str, rtype: int) -> wire.Response:
        """Ask the servers in turn until one gives NOERROR or NXDOMAIN or the timeout runs out.
        Retransmission timers start at 4x the server's smoothed round-trip time (at least
        MIN_RTO) and double per try (RFC 1536 1, RFC 6298 style)."""
        loop = self._loop
        deadline = loop.time() + self.timeout
        servers = self.nameservers
        last = "timed out"
        attempt = 0
        slots = self._slots
        if slots.free > 0 and not slots.waiters:  # the common case, without an await
            slots.free -= 1
        else:
            await slots.acquire()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0.001:
                    break
                server = servers[attempt % len(servers)]
                rounds = attempt // len(servers)
                attempt += 1
                srtt = self._srtt.get(server)
                rto = min(self.timeout / 3, max(self.MIN_RTO, 4 * srtt)) if srtt is not None else self.timeout / 3
                rto = min(remaining, rto * (2 ** rounds))
                t0 = loop.time()
                try:
                    resp = await self._udp(server, name, rtype, rto)
                    self._srtt[server] = (loop.time() - t0) if srtt is None else 0.875 * srtt + 0.125 * (loop.time() - t0)
                    if resp.truncated:  # RFC 7766 5: retry over TCP
                        resp = await self._tcp(server, name, rtype, max(0.1, deadline - loop.time()))
                except asyncio.TimeoutError:
                    last = f"no answer from {_where(server)} (timed out)"
                    continue
                except (OSError, wire.WireError, EOFError, asyncio.IncompleteReadError) as exc:
                    last = f"{_where(server)}: {exc or type(exc).__name__}"
                    if attempt >= 3 * len(servers):
                        break
                    continue
                if resp.rcode in (wire.NOERROR, wire.NXDOMAIN):
                    return resp
                last = f"{wire.RCODE_NAMES.get(resp.rcode, resp.rcode)} from {_where(server)}"
                if attempt >= 3 * len(servers):  # a server that says SERVFAIL is asked thrice
                    break
        finally:
            slots.release()
        raise DNSTempFail(f"{name} {wire.TYPE_NAMES.get(rtype, rtype)}: {last}")

    def _client(self, server: tuple[str, int]) -> _UDPClient:
        client = self._clients.get(server)
        if client is None or client.closed:
            client = self._clients[server] = _UDPClient(self._loop, server)
        return client

    async def _udp(self, server, name: str, rtype: int, timeout: float) -> wire.Response:
        client = self._client(server)
        pending = client.pending
        qid = _sysrandom.getrandbits(16)
        while qid in pending:
            qid = _sysrandom.getrandbits(16)
        fut = self._loop.create_future()
        pending[qid] = (fut, name, rtype)
        handle = self._loop.call_later(timeout, _fail_timeout, fut)
        try:
            client.send(wire.build_query(qid, name, rtype))
            self.queries_sent += 1
            return await fut
        finally:
            handle.cancel()
            pending.pop(qid, None)

    async def _tcp(self, server, name: str, rtype: int, timeout: float) -> wire.Response:
        async def exchange():
            reader, writer = await asyncio.open_connection(server[0], server[1])
            try:
                qid = _sysrandom.getrandbits(16)
                msg = wire.build_query(qid, name, rtype)
                writer.write(struct.pack("!H", len(msg)) + msg)
                await writer.drain()
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                resp = wire.parse_response(await reader.readexactly(length))
                if resp.id != qid or resp.qname != name or resp.qtype != rtype:
                    raise wire.WireError("answer does not match the question")
                return resp
            finally:
                writer.close()

        self.queries_sent += 1
        return await asyncio.wait_for(exchange(), timeout)


def make_resolver(nameservers: list[str] | None = None, timeout: float | None = None) -> Resolver:
    """A Resolver for `nameservers` ("IP[:PORT]" strings) and `timeout` (seconds per lookup);
    each None is taken from the config's [dns] table, and no name servers at all means the
    system's (/etc/resolv.conf). Raises ValueError for a bad explicit server, ConfigError for a
    bad configured one."""
    from_config = nameservers is None
    if nameservers is None or timeout is None:
        from mailtools.core import config

        cfg = config.load()
        if nameservers is None:
            nameservers = cfg.dns.nameservers
        if timeout is None:
            timeout = cfg.dns.timeout
    try:
        servers = [parse_nameserver(s) for s in nameservers]
    except ValueError as exc:
        if from_config:
            from mailtools.core.exitcodes import ConfigError

            raise ConfigError(f"[dns] nameservers: {exc}") from None
        raise
    if not timeout or timeout <= 0:
        raise ValueError("the DNS timeout must be a positive number of seconds")
    return Resolver(servers or system_nameservers(), timeout)


# --------------------------------------------------------------------------------------------
# MX lookup


class Exchanger:
    __slots__ = ("preference", "host", "addresses", "warnings", "tempfail")

    def __init__(self, preference: int, host: str):
        self.preference, self.host = preference, host
        self.addresses: list[str] = []
        self.warnings: list[str] = []
        self.tempfail = False

    def to_json(self) -> dict:
        return {"preference": self.preference, "host": self.host, "addresses": list(self.addresses), "warnings": list(self.warnings)}

    def __repr__(self) -> str:
        return f"Exchanger({self.preference}, {self.host!r}, {self.addresses!r})"


class MXResult:
    """Where mail for one domain goes. `exchangers` is in delivery order."""

    __slots__ = ("input", "domain", "status", "exchangers", "warnings", "checks")

    def __init__(self, input: str, domain: str, status: str = "ok"):
        self.input, self.domain, self.status = input, domain, status
        self.checks = None  # mx-lookup --check fills this in (mailtools.mxcheck)
        self.exchangers: list[Exchanger] = []
        self.warnings: list[str] = []

    @property
    def exit_code(self) -> int:
        return EXIT_FOR_STATUS[self.status]

    def to_json(self) -> dict:
        return {
            "input": self.input,
            "domain": self.domain,
            "status": self.status,
            "exchangers": [e.to_json() for e in self.exchangers],
            "warnings": list(self.warnings),
        }

    def __repr__(self) -> str:
        return f"MXResult({self.domain!r}, {self.status!r}, {self.exchangers!r})"


def delivery_order(records: list[tuple[int, str]], shuffle: bool) -> list[tuple[int, str]]:
    """By preference (lowest first); equal preferences in random order when shuffle
    (RFC 5321 5.1), else by name so reports are stable. Duplicates dropped."""
    groups: dict[int, list[str]] = {}
    for pref, host in records:
        hosts = groups.setdefault(pref, [])
        if host not in hosts:
            hosts.append(host)
    out = []
    for pref in sorted(groups):
        hosts = sorted(groups[pref])
        if shuffle:
            random.shuffle(hosts)
        out.extend((pref, h) for h in hosts)
    return out


async def lookup(domain: str, resolver: Resolver, *, shuffle: bool = False) -> MXResult:
    """Look up where mail for `domain` (a domain or an address) goes. Raises ValueError for
    input that is not a domain; every DNS outcome is a status, never an exception."""
    name = normalise_domain(domain)
    result = MXResult(domain, name)
    try:
        answer = await resolver.query(name, wire.MX)
    except DNSTempFail as exc:
        # RFC 5321 5.1: a failed MX lookup is not "no MX": no fallback to A, try again later.
        result.status = "tempfail"
        result.warnings.append(f"MX lookup failed temporarily: {exc}")
        return result
    if answer.nxdomain:
        result.status = "nxdomain"
        result.warnings.append("domain does not exist (NXDOMAIN)")
        return result
    if answer.cnames:
        result.warnings.append(f"{name} is an alias (CNAME) for {answer.canonical}")
    records = answer.records
    if not records:
        # RFC 5321 5.1: no MX records: the domain itself is the implicit MX, preference 0.
        result.status = "implicit"
        result.warnings.append("no MX records: mail goes to the domain's own address (implicit MX)")
        result.exchangers = [Exchanger(0, name)]
    else:
        null = [r for r in records if r[1] == ""]
        if null and len(null) == len(records):
            # RFC 7505 3: a null MX says the domain accepts no mail; never fall back to A.
            result.status = "null-mx"
            result.warnings.append("null MX (RFC 7505): the domain accepts no mail")
            return result
        if null:
            result.warnings.append("null MX mixed with other MX records: ignored (RFC 7505 3)")
            records = [r for r in records if r[1] != ""]
        result.exchangers = [Exchanger(p, h) for p, h in delivery_order(records, shuffle)]
    implicit = result.status == "implicit"
    if len(result.exchangers) == 1:
        await _resolve_exchanger(resolver, result.exchangers[0], implicit=implicit)
    else:
        await asyncio.gather(*(_resolve_exchanger(resolver, ex, implicit=implicit) for ex in result.exchangers))
    usable = any(ex.addresses for ex in result.exchangers)
    if not usable:
        if any(ex.tempfail for ex in result.exchangers):
            result.status = "tempfail"
        else:
            result.status = "no-address"
            if result.exchangers and result.exchangers[0].host == name and not records:
                result.warnings.append("no MX and no A/AAAA records: no mail can be delivered")
            else:
                result.warnings.append("no exchanger has an address: no mail can be delivered")
    return result


async def _resolve_exchanger(resolver: Resolver, ex: Exchanger, *, implicit: bool = False) -> None:
    host = ex.host
    if (host[-1:].isdigit() or ":" in host) and _is_ip_literal(host):
        ex.warnings.append("MX target is an IP address, not a host name (RFC 5321 5.1)")
    # A and AAAA at once (one task, not two plus a gather: bulk mode does thousands of these)
    a_task = asyncio.ensure_future(resolver.query(host, wire.A))
    try:
        try:
            aaaa = await resolver.query(host, wire.AAAA)
        except DNSTempFail as exc:
            aaaa = exc
        try:
            a = await a_task
        except DNSTempFail as exc:
            a = exc
    finally:
        a_task.cancel()
    answers = (a, aaaa)
    nx = 0
    cname_noted = False
    for ans in answers:
        if isinstance(ans, DNSTempFail):
            ex.tempfail = True
            ex.warnings.append(f"address lookup failed temporarily: {ans}")
            continue
        if isinstance(ans, BaseException):
            raise ans
        if ans.cnames and not cname_noted and not implicit:
            # RFC 2181 10.3: an MX must point at a name with addresses, not at an alias.
            ex.warnings.append(f"MX target is an alias (CNAME) for {ans.canonical} (RFC 2181 10.3)")
            cname_noted = True
        if ans.nxdomain:
            nx += 1
        ex.addresses.extend(ans.records)
    if len(ex.addresses) > 1:
        ex.addresses = sorted(set(ex.addresses), key=_address_key)
    if not ex.addresses and not ex.tempfail:
        if nx == 2:
            ex.warnings.append("host does not exist (NXDOMAIN)")
        else:
            ex.warnings.append("host has no A or AAAA record")
