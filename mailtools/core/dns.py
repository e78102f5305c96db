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
import functools
import heapq
import ipaddress
import os
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

class _QueryIds:
    """Unpredictable 16-bit query ids (RFC 5452 9.2) from the OS's random source, fetched 2,048
    at a time rather than with a system call per query."""

    def __init__(self):
        self.pool: list[int] = []

    def next(self) -> int:
        if not self.pool:
            self.pool = list(memoryview(os.urandom(4096)).cast("H"))
        return self.pool.pop()


_query_ids = _QueryIds()


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
    if len(text) <= 253 and _DOMAIN.fullmatch(text) and not text[-1].isdigit():
        return text  # already one (the usual case in bulk mode): what the steps below return
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
    """One connected UDP socket to one name server, with many queries in flight on it; answers
    are matched by id and question (RFC 5452 9.1), anything else dropped. The socket is drained
    on each wake-up (asyncio's datagram transport reads one datagram per loop iteration, which
    halves bulk throughput) and each answer goes straight to its question: no future, task or
    timer per query."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: tuple[str, int], resolver: Resolver):
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for many answers
            sock.setblocking(False)
            sock.connect(server)
        except OSError:
            sock.close()
            raise
        self.loop, self.sock, self.resolver = loop, sock, resolver
        self.closed = False
        self.pending: dict[int, _Question] = {}  # query id -> the question waiting for it
        self.outbox: list[bytes] = []  # queries queued by Resolver._try, sent by the next flush
        loop.add_reader(sock.fileno(), self._read_ready)

    def flush(self) -> None:
        """Send the queries queued (by Resolver._try) in this event loop iteration: after the
        answers read in one go have been handled, so the server is woken once per burst."""
        outbox, self.outbox = self.outbox, []
        if self.closed:
            return
        send = self.sock.send
        sent = 0
        for data in outbox:
            try:
                send(data)
                sent += 1
            except OSError as exc:  # that try failed (the others may still go out)
                q = self.pending.pop((data[0] << 8) | data[1], None)
                if q is not None:
                    q.waiting = 0
                    self.resolver._udp_failed(q, exc)
        self.resolver.queries_sent += sent

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
        recv, pending, read_answer = self.sock.recv, self.pending, wire.read_answer
        answered = self.resolver._udp_read
        for _ in range(256):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP port unreachable and the like: fail over
                self._fail_all(exc)
                return
            if len(data) < 12:
                continue
            q = pending.get((data[0] << 8) | data[1])
            if q is None:
                continue
            question = q.question
            usual = question and read_answer(data, question, q.rtype, q.name)
            if usual:  # the question echoed, records of its type at its name only
                del pending[q.qid]
                answered(q, usual)
            else:
                self._answer(data)
        if self.outbox:
            self.flush()

    def _answer(self, data: bytes) -> None:
        """An answer that is not the usual one (wire.read_answer): read in full."""
        if len(data) < 12:
            return
        qid = (data[0] << 8) | data[1]
        q = self.pending.get(qid)
        if q is None:
            return
        try:
            resp = wire.parse_response(data, q.name)
        except wire.WireError as exc:
            del self.pending[qid]
            self.resolver._udp_failed(q, exc)
            return
        if resp.truncated or (resp.qname == q.name and resp.qtype == q.rtype):
            del self.pending[qid]
            self.resolver._udp_answered(q, resp)

    def _fail_all(self, exc: Exception) -> None:
        """Every query waiting on this socket failed; their retries start from the loop (not
        from here: a retry may reopen this very server's socket)."""
        waiting = list(self.pending.values())
        self.pending.clear()
        if self.loop.is_closed():  # a loop that ended with queries in flight: nobody waits
            return
        for q in waiting:
            q.waiting = 0
            self.loop.call_soon(self.resolver._udp_failed, q, exc)


class _Question:
    """One question on its way: who waits for it and where its retries stand."""

    __slots__ = ("name", "rtype", "callbacks", "deadline", "attempt", "waiting", "last", "server", "client", "qid", "sent", "srtt", "done", "question", "query")

    def __init__(self, name: str, rtype: int, callback, deadline: float):
        self.name, self.rtype, self.callbacks, self.deadline = name, rtype, [callback], deadline
        self.attempt = 0  # UDP tries started so far
        self.waiting = 0  # the try whose answer (or timeout) is awaited, 0 when none
        self.last = "timed out"
        self.server = self.client = None
        self.qid = 0
        self.sent = 0.0
        self.srtt = None
        self.done = False
        self.question = self.query = None  # wire.query_template(), made by the first try


_now = time.monotonic  # what asyncio's loop.time() returns, without the method call
_NEVER = 1 << 62  # a timer slot never reached


def _where(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _settle(fut: asyncio.Future, outcome) -> None:
    if fut.done():  # the waiting task was cancelled
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


class Resolver:
    """A caching stub resolver over the given recursive name servers.

    `await query(name, "MX")` returns an Answer or raises DNSTempFail; `submit(name, rtype,
    callback)` is the same without a coroutine, for callers with thousands of questions. One
    instance can be used by many concurrent tasks; it binds to the running event loop on first
    use and rebinds if used from a new loop later (e.g. after asyncio.run returns).

    Each question is a small state machine (_Question): a UDP try to the next server, its
    timeout, the answer or failure deciding between done, another try, or TCP. At most
    `max_inflight` questions are on the wire at once; the others wait in order.
    """

    MAX_INFLIGHT = 100  # default cap on questions on the wire (a local server's socket buffer)
    MIN_RTO = 0.2  # first retransmission never sooner (a recursive server may be working on it)
    TIMER_SLOTS = 100  # timeouts are checked in batches, per 1/100 s: at most 10 ms late

    def __init__(self, nameservers: list[tuple[str, int]], timeout: float = 5.0, *, cache_size: int = 50_000):
        if not nameservers:
            raise ValueError("no name servers")
        self.nameservers = list(nameservers)
        self.timeout = float(timeout)
        self.cache_size = cache_size
        self.max_inflight = self.MAX_INFLIGHT
        self._cache: dict[tuple[str, int], tuple[float, Answer]] = {}
        self._loop = None
        self._clients: dict[tuple[str, int], _UDPClient] = {}
        self._inflight: dict[tuple[str, int], _Question] = {}
        self.queries_sent = 0
        self._srtt: dict[tuple[str, int], float] = {}
        self._active = 0  # questions holding a slot
        self._queued: deque = deque()  # questions waiting for a slot
        self._pumping = False
        self._slots: dict[int, list] = {}  # timer slot -> [(question, try)] that time out in it
        self._slot_heap: list[int] = []  # the slots of _slots, a heap
        self._timer = None
        self._timer_slot = _NEVER  # the slot the timer fires for (_NEVER: not armed)

    def __repr__(self) -> str:
        servers = ", ".join(f"{h}:{p}" for h, p in self.nameservers)
        return f"Resolver([{servers}], timeout={self.timeout})"

    # -- public ----------------------------------------------------------------------------

    async def query(self, name: str, rtype) -> Answer:
        """Resolve name (A-label text, no trailing dot) for rtype ("MX" or wire.MX)."""
        if isinstance(rtype, str):
            rtype = wire.TYPES[rtype.upper()]
        self._bind()
        hit = self._cache.get((name, rtype))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        fut = self._loop.create_future()
        self.submit(name, rtype, functools.partial(_settle, fut))
        return await fut

    def submit(self, name: str, rtype: int, callback) -> None:
        """Ask name/rtype (wire type number) and call `callback(outcome)` once, from the running
        event loop, with the Answer or the exception (DNSTempFail) - right away for a cached
        answer. A question already on the wire is not asked twice: its answer is shared."""
        loop = self._loop
        if loop is None or loop is not asyncio.get_running_loop():
            self._bind()
            loop = self._loop
        key = (name, rtype)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > time.monotonic():
                callback(hit[1])
                return
            del self._cache[key]
        q = self._inflight.get(key)
        if q is not None:  # the same question is already on its way: share its answer
            q.callbacks.append(callback)
            return
        q = self._inflight[key] = _Question(name, rtype, callback, _now() + self.timeout)
        if self._active < self.max_inflight and not self._queued and not self._pumping:
            self._active += 1
            self._pumping = True  # a question failing at once starts no other from inside _try
            try:
                self._try(q)
            finally:
                self._pumping = False
            if self._queued:
                self._pump()
            return
        self._queued.append(q)
        self._pump()

    def close(self) -> None:
        """Close the sockets (they are reopened on the next query)."""
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            client.close()

    # -- internals -------------------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            for client in self._clients.values():
                client.close()
            self._clients = {}
            self._inflight = {}
            self._active = 0
            self._queued = deque()
            self._pumping = False
            self._slots = {}
            self._slot_heap = []
            self._timer = None
            self._timer_slot = _NEVER

    def _pump(self) -> None:
        """Start waiting questions while slots are free. Iterative, never recursive: a question
        that fails at once frees its slot for the next one from this same loop."""
        if self._pumping:
            return
        self._pumping = True
        try:
            queued = self._queued
            while queued and self._active < self.max_inflight:
                self._active += 1
                self._try(queued.popleft())
        finally:
            self._pumping = False

    def _try(self, q: _Question) -> None:
        """Send the next UDP try of q; finish q when its time or its tries are used up.
        Retransmission timers start at 4x the server's smoothed round-trip time (at least
        MIN_RTO, at most a third of the timeout) and double per round (RFC 1536 1, RFC 6298
        style). Called once per query in bulk mode: kept flat."""
        servers = self.nameservers
        n = len(servers)
        while True:
            now = _now()
            remaining = q.deadline - now
            if remaining <= 0.001:
                return self._finish(q, self._tempfail(q))
            attempt = q.attempt
            server = servers[attempt % n]
            q.attempt = attempt = attempt + 1
            srtt = self._srtt.get(server)
            rto = self.timeout / 3
            if srtt is not None and 4 * srtt < rto:
                rto = 4 * srtt if 4 * srtt > self.MIN_RTO else min(self.MIN_RTO, rto)
            if attempt > n:
                rto *= 2 ** ((attempt - 1) // n)
            if rto > remaining:
                rto = remaining
            try:
                client = self._clients.get(server)
                if client is None or client.closed:
                    client = self._clients[server] = _UDPClient(self._loop, server, self)
                query = q.query
                if query is None:
                    q.question, q.query = wire.query_template(q.name, q.rtype)
                    query = q.query
                pending = client.pending
                ids = _query_ids.pool
                qid = ids.pop() if ids else _query_ids.next()
                while qid in pending:
                    qid = _query_ids.next()
                # queued; sent with the others of this loop iteration (_UDPClient.flush)
                pending[qid] = q
                outbox = client.outbox
                if not outbox:
                    self._loop.call_soon(client.flush)
                outbox.append(qid.to_bytes(2, "big") + query)
            except (OSError, wire.WireError) as exc:
                q.last = f"{_where(server)}: {exc or type(exc).__name__}"
                if attempt >= 3 * n:
                    return self._finish(q, self._tempfail(q))
                continue
            q.server, q.client, q.qid, q.sent, q.srtt, q.waiting = server, client, qid, now, srtt, attempt
            # the slot after the one `now + rto` falls in: a try times out 0 to 10 ms late
            slot = int((now + rto) * self.TIMER_SLOTS) + 1
            bucket = self._slots.get(slot)
            if bucket is None:
                bucket = self._slots[slot] = []
                heapq.heappush(self._slot_heap, slot)
                if slot < self._timer_slot:
                    self._arm(slot)
            bucket.append((q, attempt))
            return

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot / self.TIMER_SLOTS, self._expire)

    def _expire(self) -> None:
        """The timer: every try whose slot has come and that is still unanswered timed out."""
        self._timer = None
        self._timer_slot = -1  # the retries below do not arm it: done once at the end
        slots, heap = self._slots, self._slot_heap
        now = int(_now() * self.TIMER_SLOTS)
        while heap and heap[0] <= now:
            for q, attempt in slots.pop(heapq.heappop(heap)):
                if q.waiting == attempt and not q.done:
                    q.waiting = 0
                    q.client.pending.pop(q.qid, None)
                    q.last = f"no answer from {_where(q.server)} (timed out)"
                    self._try(q)
        self._timer_slot = _NEVER
        if heap:
            self._arm(heap[0])

    def _answered(self, q: _Question) -> float:
        """An answer to q came: stop its timer, fold its round trip into the server's smoothed
        RTT (RFC 6298's 1/8 gain); returns now."""
        now = _now()
        q.waiting = 0
        srtt = q.srtt
        self._srtt[q.server] = (now - q.sent) if srtt is None else 0.875 * srtt + 0.125 * (now - q.sent)
        return now

    def _udp_answered(self, q: _Question, resp: wire.Response) -> None:
        now = self._answered(q)
        server = q.server
        if resp.truncated:  # RFC 7766 5: retry over TCP
            task = self._loop.create_task(self._tcp(server, q.name, q.rtype, max(0.1, q.deadline - now)))
            task.add_done_callback(functools.partial(self._tcp_done, q, server))
            return
        self._judge(q, server, resp)

    def _udp_read(self, q: _Question, usual: tuple) -> None:
        """The usual answer (wire.read_answer): no alias, nothing else to judge."""
        self._answered(q)
        rcode, records, ttl = usual
        self._finish(q, Answer(q.name, q.rtype, rcode, [], q.name, records, ttl))

    def _udp_failed(self, q: _Question, exc: Exception) -> None:
        if q.done:
            return
        q.waiting = 0
        self._failed(q, q.server, exc)

    def _tcp_done(self, q: _Question, server, task: asyncio.Task) -> None:
        if task.cancelled():  # the loop is going away
            return self._finish(q, DNSTempFail(f"{q.name} {wire.TYPE_NAMES.get(q.rtype, q.rtype)}: cancelled"))
        exc = task.exception()
        if exc is None:
            return self._judge(q, server, task.result())
        if isinstance(exc, asyncio.TimeoutError):
            q.last = f"no answer from {_where(server)} (timed out)"
            return self._try(q)
        if isinstance(exc, (OSError, wire.WireError, EOFError, asyncio.IncompleteReadError)):
            return self._failed(q, server, exc)
        self._finish(q, exc)

    def _failed(self, q: _Question, server, exc: Exception) -> None:
        q.last = f"{_where(server)}: {exc or type(exc).__name__}"
        if q.attempt >= 3 * len(self.nameservers):
            return self._finish(q, self._tempfail(q))
        self._try(q)

    def _judge(self, q: _Question, server, resp: wire.Response) -> None:
        if resp.rcode in (wire.NOERROR, wire.NXDOMAIN):
            try:
                outcome = _make_answer(q.name, q.rtype, resp)
            except DNSTempFail as exc:
                outcome = exc
            return self._finish(q, outcome)
        q.last = f"{wire.RCODE_NAMES.get(resp.rcode, resp.rcode)} from {_where(server)}"
        if q.attempt >= 3 * len(self.nameservers):  # a server that says SERVFAIL is asked thrice
            return self._finish(q, self._tempfail(q))
        self._try(q)

    @staticmethod
    def _tempfail(q: _Question) -> DNSTempFail:
        return DNSTempFail(f"{q.name} {wire.TYPE_NAMES.get(q.rtype, q.rtype)}: {q.last}")

    def _finish(self, q: _Question, outcome) -> None:
        if q.done:
            return
        q.done = True
        q.waiting = 0
        key = (q.name, q.rtype)
        if self._inflight.get(key) is q:
            del self._inflight[key]
        if isinstance(outcome, Answer) and outcome.ttl > 0:
            cache = self._cache
            if len(cache) >= self.cache_size:
                for old in list(cache)[: self.cache_size // 10 + 1]:
                    del cache[old]
            cache[key] = (time.monotonic() + outcome.ttl, outcome)
        self._active -= 1
        for callback in q.callbacks:
            try:
                callback(outcome)
            except Exception as exc:  # noqa: BLE001 - one caller's bug must not stall the others
                self._loop.call_exception_handler({"message": "DNS answer callback failed", "exception": exc})
        if self._queued:
            self._pump()

    async def _tcp(self, server, name: str, rtype: int, timeout: float) -> wire.Response:
        async def exchange():
            reader, writer = await asyncio.open_connection(server[0], server[1])
            try:
                qid = _query_ids.next()
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


def _make_answer(name: str, rtype: int, resp: wire.Response) -> Answer:
    """The Answer to name/rtype in a NOERROR or NXDOMAIN response: the CNAME chain followed
    (RFC 1034 3.6.2), the records of the type at its end, and how long it may be cached."""
    answer = resp.answer
    if len(answer) == 1:
        only = answer[0]
        if only.rtype == rtype and only.name == name:  # the usual answer: one record, no alias
            return Answer(name, rtype, resp.rcode, [], name, [only.data], only.ttl)
    current, cnames = name, []
    owners: dict[str, str] = {}
    for rec in answer:
        if rec.rtype == wire.CNAME:
            owners[rec.name] = rec.data
    ttls = []
    if owners:
        while rtype != wire.CNAME and current in owners:
            if len(cnames) >= 16:
                raise DNSTempFail(f"CNAME chain too long at {name}")
            current = owners[current]
            cnames.append(current)
        for rec in answer:
            if rec.rtype == wire.CNAME and rec.name in owners and (rec.name == name or rec.name in cnames):
                ttls.append(rec.ttl)
    records = []
    for r in answer:
        if r.rtype == rtype and r.name == current:
            records.append(r.data)
            ttls.append(r.ttl)
    if records:
        ttl = min(ttls)
    else:  # RFC 2308 5: negative answers are cached for the SOA's TTL/minimum, or not at all
        soas = [min(r.ttl, r.data) for r in resp.authority if r.rtype == wire.SOA]
        ttl = min(soas + ttls) if soas else 0
    return Answer(name, rtype, resp.rcode, cnames, current, records, ttl)


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
    if len(records) == 1:  # most domains
        return list(records)
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
        answer = exc
    if not _take_mx(result, answer, shuffle):
        return result
    implicit = result.status == "implicit"

    async def addresses(ex: Exchanger) -> None:
        # A and AAAA at once (one task, not two plus a gather)
        a_task = asyncio.ensure_future(_outcome(resolver.query(ex.host, wire.A)))
        try:
            aaaa = await _outcome(resolver.query(ex.host, wire.AAAA))
            a = await a_task
        finally:
            a_task.cancel()
        _take_addresses(ex, a, aaaa, implicit)

    if len(result.exchangers) == 1:
        await addresses(result.exchangers[0])
    else:
        await asyncio.gather(*(addresses(ex) for ex in result.exchangers))
    _conclude(result)
    return result


async def _outcome(coro):
    """The answer, or the DNSTempFail, of a query."""
    try:
        return await coro
    except DNSTempFail as exc:
        return exc


def start_lookup(domain: str, resolver: Resolver, callback, *, shuffle: bool = False) -> None:
    """lookup() without a coroutine, for bulk callers: calls `callback(MXResult)` once from the
    running event loop (possibly before returning, when every answer is cached), or
    `callback(exc)` for an unexpected error. Raises ValueError for input that is not a domain."""
    name = normalise_domain(domain)
    result = MXResult(domain, name)

    def on_mx(answer) -> None:
        try:
            if not _take_mx(result, answer, shuffle):
                return callback(result)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as lookup() would raise it
            return callback(exc)
        implicit = result.status == "implicit"
        exchangers = result.exchangers
        outcomes = [None] * (2 * len(exchangers))  # A, AAAA of each exchanger
        left = [len(outcomes)]

        def got(i: int, outcome) -> None:
            outcomes[i] = outcome
            left[0] -= 1
            if left[0]:
                return
            try:
                for j, ex in enumerate(exchangers):
                    _take_addresses(ex, outcomes[2 * j], outcomes[2 * j + 1], implicit)
                _conclude(result)
            except Exception as exc:  # noqa: BLE001
                return callback(exc)
            callback(result)

        submit = resolver.submit
        for j, ex in enumerate(exchangers):
            submit(ex.host, wire.A, functools.partial(got, 2 * j))
            submit(ex.host, wire.AAAA, functools.partial(got, 2 * j + 1))

    resolver.submit(name, wire.MX, on_mx)


def _take_mx(result: MXResult, answer, shuffle: bool) -> bool:
    """Read the MX answer (or DNSTempFail) into result; True when its exchangers' addresses
    are to be looked up next."""
    if isinstance(answer, DNSTempFail):
        # RFC 5321 5.1: a failed MX lookup is not "no MX": no fallback to A, try again later.
        result.status = "tempfail"
        result.warnings.append(f"MX lookup failed temporarily: {answer}")
        return False
    if isinstance(answer, BaseException):
        raise answer
    name = result.domain
    if answer.nxdomain:
        result.status = "nxdomain"
        result.warnings.append("domain does not exist (NXDOMAIN)")
        return False
    if answer.cnames:
        result.warnings.append(f"{name} is an alias (CNAME) for {answer.canonical}")
    records = answer.records
    if not records:
        # RFC 5321 5.1: no MX records: the domain itself is the implicit MX, preference 0.
        result.status = "implicit"
        result.warnings.append("no MX records: mail goes to the domain's own address (implicit MX)")
        result.exchangers = [Exchanger(0, name)]
    else:
        null = [r for r in records if r[1] == ""] if len(records) > 1 or records[0][1] == "" else ()
        if null and len(null) == len(records):
            # RFC 7505 3: a null MX says the domain accepts no mail; never fall back to A.
            result.status = "null-mx"
            result.warnings.append("null MX (RFC 7505): the domain accepts no mail")
            return False
        if null:
            result.warnings.append("null MX mixed with other MX records: ignored (RFC 7505 3)")
            records = [r for r in records if r[1] != ""]
        result.exchangers = [Exchanger(p, h) for p, h in delivery_order(records, shuffle)]
    for ex in result.exchangers:
        host = ex.host
        if (host[-1:].isdigit() or ":" in host) and _is_ip_literal(host):
            ex.warnings.append("MX target is an IP address, not a host name (RFC 5321 5.1)")
    return True


def _take_addresses(ex: Exchanger, a, aaaa, implicit: bool) -> None:
    """Read the A and AAAA answers (or DNSTempFails) of one exchanger into it."""
    nx = 0
    cname_noted = several = False
    for ans in (a, aaaa):
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
        if len(ans.records) > 1:
            several = True
        ex.addresses.extend(ans.records)
    # A before AAAA: already in order unless a family has several addresses
    if several:
        ex.addresses = sorted(set(ex.addresses), key=_address_key)
    if not ex.addresses and not ex.tempfail:
        if nx == 2:
            ex.warnings.append("host does not exist (NXDOMAIN)")
        else:
            ex.warnings.append("host has no A or AAAA record")


def _conclude(result: MXResult) -> None:
    """The final status once every exchanger's addresses are known."""
    tempfail = False
    for ex in result.exchangers:
        if ex.addresses:
            return
        tempfail = tempfail or ex.tempfail
    if tempfail:
        result.status = "tempfail"
        return
    implicit = result.status == "implicit"
    result.status = "no-address"
    if implicit:
        result.warnings.append("no MX and no A/AAAA records: no mail can be delivered")
    else:
        result.warnings.append("no exchanger has an address: no mail can be delivered")
