"""The queue runner: claim entries, route each recipient, deliver, retry, bounce.

One pass (`run_pass`) lists the entries that are due, claims them one by one (an atomic rename in
mailtools.core.queue, so another runner, on this host or another sharing the spool, never gets the
same entry), splits each entry's pending recipients by domain and hands them to a per-destination
pool of connection workers. A worker keeps its SMTP connection open and sends message after
message to the same next hop, taking the next job before the current message's content goes out
so that its envelope rides in the same write (client.send(then=...)); at most
`relay.concurrency` connections are open at once. Claims and the removal of finished entries
run on the event loop (no fsync in either); only fsyncing work goes to threads. Local
domains are delivered straight into the Maildirs. When every job of an entry has an outcome the
entry's envelope is written back (or the entry removed, when every recipient is final), bounces are
queued, and the claim is released.

`relay --once` on a long queue deals the entries to one process per CPU (`_run_split`): one
Python process is one core's worth of work (the GIL), and the claim rename keeps two processes
from ever delivering one recipient, however the queue is split.

Crash safety (what a SIGKILL at any point leaves): the entry stays claimed; `Queue.recover()` puts
it back (at once when the runner was of this host, else after `relay.claim_timeout`); recipients whose 250 we had not yet written down are tried
once more (at most one duplicate, never a loss). A DSN is queued (fsynced) before the entry that
caused it is updated, so a crash between the two can duplicate a bounce but never lose one.

Retry schedule (relay.retry, default 5m 15m 30m 1h 2h 4h, then the last step again and again),
until relay.max_queue_time (default 5 days) after arrival; then the recipient bounces with the
last temporary reason (Status 4.4.7 when we never got an answer). A DNS temporary failure
always defers; it never bounces before max_queue_time.
"""

from __future__ import annotations

import asyncio
import email.utils
import fcntl
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mailtools.core.log import say, say_lines
from mailtools.core.queue import ClaimLost
from mailtools.relay import client as smtp
from mailtools.relay.bounce import Failure, build_dsn

SENT, DEFERRED, BOUNCED = "sent", "deferred", "bounced"
PENDING = ("queued", "deferred")
REUSE_LIMIT = 1000  # messages per connection before a fresh one (Postfix: time-limited reuse)
REUSE_IDLE = 1.0  # seconds a worker waits for more work for its open connection
CLAIM_SLICE = 8  # claims done on the loop before it moves bytes again
RECOVER_EVERY = 10.0  # seconds between the daemon's recovery sweeps
LOCAL_THREADS = 4  # local delivery threads: each fsync waits on the disk, a few wait together
LOCAL_BATCH = 32  # at most this many local jobs per thread hop
LOCAL_MIN_BATCH = 8  # and at least this many when as many wait (a claim slice's worth)


@dataclass
class Outcome:
    state: str  # SENT | DEFERRED | BOUNCED
    reply: str  # what to log / record: "250 2.0.0 Ok" or our own reason
    status: str  # RFC 3463 for the DSN
    relay: str = "none"  # "host[ip]:port" | "local" | "none"
    remote_mta: str = ""


@dataclass
class Job:
    work: "EntryWork"
    domain: str
    rcpts: list  # Recipient objects of the entry
    done: bool = False
    addrs: Optional[list] = None  # set by Runner._prepare: the addresses and what they need
    utf8: bool = False
    want_utf8: bool = False
    eightbit: bool = False
    after: Optional["Job"] = None  # the job announced behind this one on its connection


@dataclass
class EntryWork:
    entry: Any
    data: bytes
    payload: Optional[bytes] = None  # prepare_data() of Received + data, built once
    pending: int = 0
    outcomes: dict = field(default_factory=dict)  # recipient address -> Outcome
    started: float = field(default_factory=time.time)


@dataclass
class Destination:
    key: str
    domain: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    workers: int = 0
    routes: Optional[list] = None  # [(host, ip)] in delivery order
    route_failure: Optional[Outcome] = None
    dead: Optional[Outcome] = None  # every route failed this pass: same answer for the rest
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_held: list | None = None  # lines _finalize() collects on the loop's thread (see there)
_held_by = 0


def log(line: str) -> None:
    """A Postfix-shaped log line on stderr: `relay[PID]: QUEUEID: to=<...>, ...`."""
    if _held is not None and _held_by == threading.get_ident():
        _held.append(line)
        return
    say("relay", line)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class Runner:
    def __init__(self, cfg, queue=None, *, smarthost: Optional[str] = None,
                 stop: Optional[asyncio.Event] = None, concurrency: Optional[int] = None):
        from mailtools.core.queue import Queue

        self.cfg = cfg
        self.stop = stop  # set: claim nothing more, finish what is in flight
        self.queue = queue or Queue(cfg.queue_dir)
        rc = cfg.relay
        self.smarthost = smarthost if smarthost is not None else (rc.smarthost or "")
        self.concurrency = max(1, int(concurrency or rc.concurrency))
        self.timeouts = smtp.Timeouts(rc.connect_timeout, rc.command_timeout, rc.data_timeout)
        self.retry = list(rc.retry) or [300.0]
        self.max_queue_time = float(rc.max_queue_time)
        self.dests: dict[str, Destination] = {}
        self.open_workers = 0
        self.producing = False
        self.resolver = None
        self.bounces_queued = 0
        self.stats = {SENT: 0, DEFERRED: 0, BOUNCED: 0}
        self._window: Optional[asyncio.Semaphore] = None
        self._idle = asyncio.Event()
        self._inflight = 0
        self._pool = _pool("spool")
        self.worked = 0
        self._local_jobs: list = []  # local jobs waiting for a delivery thread
        self._local_busy = 0  # delivery threads working on a batch
        self._local_drain_due = False

    # -- the pass ---------------------------------------------------------------------------------

    def due(self, entry, now: float, flush: bool) -> bool:
        if getattr(entry, "held", False):
            return False
        pend = [r for r in entry.recipients if r.state in PENDING]
        if not pend:
            return False
        return flush or any(r.next_attempt is None or r.next_attempt <= now for r in pend)

    async def run_pass(self, *, flush: bool = False, only: Optional[set] = None,
                       order: Optional[list] = None, recover: bool = True) -> int:
        """Deliver every due entry once; returns how many entries were worked on. `only`:
        just these ids; `order`: these ids in this order instead of listing new/; `recover`:
        sweep the claims of dead runners and the debris of tmp/ and trash/ first.

        Claiming (one read of the entry, a rename, a look for an envelope written meanwhile)
        runs on the event loop, a slice of CLAIM_SLICE entries at a time between rounds of
        SMTP: none of it waits on the disk (no fsync), and a hop to a thread per entry cost
        more CPU than the work itself (GIL hand-overs: 30 context switches per message,
        relay_out -25% CPU without them)."""
        loop = asyncio.get_running_loop()
        if recover:
            await loop.run_in_executor(_pool("claim"), self.queue.recover, float(self.cfg.relay.claim_timeout))
        if order is not None:
            ids = order
        else:
            ids = await loop.run_in_executor(_pool("claim"), self.queue.ids, "new")
        if only is not None:
            ids = [q for q in ids if q in only]
        # entries in flight: enough that many spool updates wait on the disk together (ext4
        # commits concurrent fsyncs as one journal transaction), bounded for memory
        self._window = asyncio.Semaphore(max(100, self.concurrency * 25))
        self._idle.set()
        self.producing = True
        self.worked = 0
        try:
            n = 0
            for qid in ids:  # ids sort by arrival
                await self._window.acquire()
                if self.stop is not None and self.stop.is_set():
                    self._window.release()
                    break
                self._claim_and_start(qid, flush)
                n += 1
                if n % CLAIM_SLICE == 0:
                    await asyncio.sleep(0)  # let the connections move bytes between slices
        finally:
            self.producing = False
            if self._inflight == 0:
                self._idle.set()
            for d in self.dests.values():  # wake idle workers so they can exit
                d.queue.put_nowait(None)
            await self._idle.wait()
            for d in self.dests.values():
                d.queue.put_nowait(None)
            while self.open_workers:  # let every connection say QUIT
                await asyncio.sleep(0.01)
            self.dests.clear()
        return self.worked

    def _claim_ready(self, qid: str, flush: bool):
        """(entry, message) for a due entry we now own, else None."""
        # due() is asked before the rename (most deferred entries stop there, after one read)
        # and again only if another runner changed the envelope before our rename won
        got = self.queue.claim_with_message(qid, want=lambda e: self.due(e, time.time(), flush))
        if got is None:  # not due, claimed by another runner, held or gone
            return None
        entry, data = got
        if data is not None:  # read with the envelope, in the claim's one read
            return got
        try:
            return entry, self.queue.read_message(entry)
        except OSError as exc:
            log(f"{entry.id}: cannot read message: {exc.strerror}")
            self.queue.release(entry)
            return None

    def _claim_and_start(self, qid: str, flush: bool) -> None:
        try:
            got = self._claim_ready(qid, flush)
        except Exception as exc:  # noqa: BLE001 - one broken entry must not stop the pass
            log(f"{qid}: warning: cannot claim: {type(exc).__name__}: {exc}")
            got = None
        if got is None:
            self._window.release()
            return
        self.worked += 1
        self._start(*got)

    def _start(self, entry, data: bytes) -> None:
        work = EntryWork(entry, data)
        groups: dict[str, list] = {}
        for r in entry.recipients:
            if r.state in PENDING:
                domain = _domain_of(r.address)
                if self.smarthost and not self.cfg.is_local_domain(domain):
                    domain = "[smarthost]"  # one transaction for every remote recipient
                groups.setdefault(domain, []).append(r)
        jobs = []
        for domain, rcpts in groups.items():
            for i in range(0, len(rcpts), smtp.MAX_RCPTS_PER_TRANSACTION):
                jobs.append(Job(work, domain, rcpts[i : i + smtp.MAX_RCPTS_PER_TRANSACTION]))
        work.pending = len(jobs)
        self._inflight += 1
        self._idle.clear()
        for job in jobs:
            if self.cfg.is_local_domain(job.domain):
                self._local(job)
            else:
                self._submit(job)

    def _finish_job(self, job: Job, outcomes: dict) -> None:
        if job.done:
            return
        job.done = True
        work = job.work
        work.outcomes.update(outcomes)
        work.pending -= 1
        if work.pending == 0:
            self._finalize(work)

    def _finalize(self, work: EntryWork) -> None:
        """Every job of the entry has an outcome: record them, then write the spool. A finished
        entry without bounces is only renamed out of the queue (no fsync: see Queue.release),
        right here on the loop; anything that fsyncs (an envelope update, a DSN) goes to the
        spool threads, so a slow disk never holds up the connections. Its log lines (to=...,
        removed) are written together at the end: one write, where each is a hand-over of the
        GIL on the loop's thread."""
        global _held, _held_by
        if _held is not None and _held_by == threading.get_ident():
            return self._finalize_entry(work)  # within another one: that one writes them
        _held, _held_by = [], threading.get_ident()
        try:
            self._finalize_entry(work)
        finally:
            lines, _held = _held, None
            if lines:
                say_lines("relay", lines)

    def _finalize_entry(self, work: EntryWork) -> None:
        try:
            failures, final, warn = self._record(work)
        except Exception as exc:  # noqa: BLE001 - the entry stays claimed; recover() returns it
            log(f"{work.entry.id}: warning: could not update the queue entry: {type(exc).__name__}: {exc}")
            self._entry_done()
            return
        if final and not failures and not warn:
            try:
                self._commit(work, failures, final, warn)
            except Exception as exc:  # noqa: BLE001
                log(f"{work.entry.id}: warning: could not update the queue entry: {type(exc).__name__}: {exc}")
            self._entry_done()
        else:
            asyncio.ensure_future(self._commit_async(work, failures, final, warn))

    def _entry_done(self) -> None:
        self._window.release()
        self._inflight -= 1
        if self._inflight == 0 and not self.producing:
            self._idle.set()

    async def _commit_async(self, work: EntryWork, failures: list, final: bool, warn: bool) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._commit, work, failures,
                                                             final, warn)
        except Exception as exc:  # noqa: BLE001 - the entry stays claimed; recover() returns it
            log(f"{work.entry.id}: warning: could not update the queue entry: {type(exc).__name__}: {exc}")
        finally:
            self._entry_done()

    # -- outcomes -------------------------------------------------------------------------------

    def _record(self, work: EntryWork) -> tuple[list, bool, bool]:
        """Apply the outcomes to the entry's recipients (in memory) and log them; returns the
        failures to bounce, whether every recipient is final, whether a delay warning is due."""
        entry = work.entry
        now = time.time()
        expired = self.max_queue_time >= 0 and now - (entry.queued_at or now) >= self.max_queue_time
        failures = []
        for r in entry.recipients:
            o = work.outcomes.get(r.address)
            if o is None or r.state not in PENDING:
                continue
            r.attempts = (r.attempts or 0) + 1
            if o.state == DEFERRED and expired:
                o = Outcome(BOUNCED, f"message expired after {now - entry.queued_at:.0f}s in the queue; "
                            f"last error: {o.reply}", o.status if o.status.startswith("4.4.7") else "4.4.7",
                            o.relay, o.remote_mta)
            r.last_reply = o.reply
            if o.state == DEFERRED:
                step = self.retry[min(r.attempts - 1, len(self.retry) - 1)]
                r.state, r.next_attempt = DEFERRED, now + step
            else:
                r.state, r.next_attempt = o.state, None
            if o.state == BOUNCED and _notify_failure(r):
                failures.append(Failure(r.address, _failed_status(o.status), o.reply, o.remote_mta,
                                        last_attempt=now))
            self.stats[o.state] += 1
            log(f"{entry.id}: to=<{r.address}>, relay={o.relay}, delay={now - (entry.queued_at or now):.2f}, "
                f"tries={r.attempts}, dsn={o.status}, status={o.state} ({o.reply})")
        final = all(r.state not in PENDING for r in entry.recipients)
        return failures, final, not final and self._should_warn(entry, now)

    def _commit(self, work: EntryWork, failures: list, final: bool, warn: bool) -> None:
        """The spool side of _record: DSNs queued (fsynced) first, then the envelope, then the
        claim released (the entry removed when final)."""
        entry = work.entry
        if failures:
            if entry.sender:
                self._queue_bounce(work, failures)
            else:
                log(f"{entry.id}: sender=<>, not bouncing a bounce (RFC 5321 4.5.5)")
        if warn:
            self._queue_delay_warning(work, time.time())
        try:
            if not final:
                self.queue.update(entry)
            released = self.queue.release(entry)
        except ClaimLost:
            released = False
        if not released:
            log(f"{entry.id}: warning: claim lost (recovered by another runner while we worked)")
        elif final:
            log(f"{entry.id}: removed")

    def _should_warn(self, entry, now: float) -> bool:
        dw = float(getattr(self.cfg.relay, "delay_warning", 0) or 0)
        return (dw > 0 and bool(entry.sender) and not entry.warned
                and now - (entry.queued_at or now) >= dw
                and now - (entry.queued_at or now) < self.max_queue_time)

    def _queue_delay_warning(self, work: EntryWork, now: float) -> None:
        """RFC 3464 Action: delayed, once per entry, for recipients still being retried."""
        entry = work.entry
        until = (entry.queued_at or now) + self.max_queue_time
        delayed = [Failure(r.address, _status_of(r.last_reply),
                           r.last_reply, action="delayed", last_attempt=now, will_retry_until=until)
                   for r in entry.recipients if r.state in PENDING and _notify_delay(r)]
        if not delayed:
            return
        dsn = build_dsn(reporting_mta=self.cfg.hostname, qid=entry.id, sender=entry.sender,
                        arrival=entry.queued_at or now, failures=delayed, original=work.data,
                        delayed=True)
        qid = self.queue.enqueue("", [entry.sender], dsn)
        entry.warned = True
        self.bounces_queued += 1
        log(f"{entry.id}: sender delay notification: {qid}")

    def _queue_bounce(self, work: EntryWork, failures: list) -> None:
        entry = work.entry
        dsn = build_dsn(
            reporting_mta=self.cfg.hostname, qid=entry.id, sender=entry.sender,
            arrival=entry.queued_at or time.time(), failures=failures, original=work.data,
        )
        qid = self.queue.enqueue("", [entry.sender], dsn)
        self.bounces_queued += 1
        log(f"{entry.id}: sender non-delivery notification: {qid}")

    # -- local domains --------------------------------------------------------------------------

    def _local(self, job: Job) -> None:
        """Queue a local job for the delivery threads; they take the waiting jobs in batches."""
        self._local_jobs.append(job)
        if not self._local_drain_due:
            self._local_drain_due = True
            asyncio.get_running_loop().call_soon(self._drain_local)  # after this claim slice

    def _drain_local(self) -> None:
        """Deal the waiting local jobs over the free delivery threads, one batch each: a thread
        hop per batch rather than per message, and one fsync of each Maildir's new/ per batch
        (maildir.DirSyncBatch). A light load makes batches of one, a burst bigger ones."""
        self._local_drain_due = False
        waiting = self._local_jobs
        free = LOCAL_THREADS - self._local_busy
        if not waiting or free <= 0:
            return
        loop = asyncio.get_running_loop()
        size = min(LOCAL_BATCH, max(LOCAL_MIN_BATCH, -(-len(waiting) // free)))
        while waiting and self._local_busy < LOCAL_THREADS:
            batch, waiting[:] = waiting[:size], waiting[size:]
            self._local_busy += 1
            fut = _pool("local").submit(self._deliver_batch, batch)
            fut.add_done_callback(lambda f, b=batch: loop.call_soon_threadsafe(self._local_done, b, f))

    def _local_done(self, batch: list, fut) -> None:
        self._local_busy -= 1
        try:
            results = fut.result()
        except Exception as exc:  # noqa: BLE001 - an outcome for every job, always
            results = [_local_failure(job, exc) for job in batch]
        for job, outcomes in zip(batch, results):
            self._finish_job(job, outcomes)
        self._drain_local()

    def _deliver_batch(self, batch: list) -> list:
        """In a delivery thread: every job of the batch, then one fsync per Maildir new/. The
        deliveries into a Maildir whose fsync failed are deferred (not durable, so not
        delivered: the retry may duplicate, never lose); the rest of the batch stands."""
        from mailtools.core.maildir import DirSyncBatch, DirSyncFailed

        results, where = [], []
        try:
            with DirSyncBatch() as sync:
                for job in batch:
                    dirs: dict = {}
                    try:
                        results.append(self._deliver_local(job, sync, dirs))
                    except Exception as exc:  # noqa: BLE001
                        results.append(_local_failure(job, exc))
                    where.append(dirs)
        except OSError as exc:
            failed = exc.failed if isinstance(exc, DirSyncFailed) else None
            out = []
            for result, dirs in zip(results, where):
                done = {}
                for a, o in result.items():
                    d = dirs.get(a)
                    if o.state == SENT and (failed is None or d is None or d in failed):
                        why = failed[d] if failed and d in failed else exc
                        o = Outcome(DEFERRED, f"local delivery failed: {why}", "4.3.0", "local")
                    done[a] = o
                out.append(done)
            return out
        return results

    def _deliver_local(self, job: Job, sync=None, dirs: dict | None = None) -> dict:
        """Deliver one job's recipients; with a DirSyncBatch `sync`, `dirs` gets each
        recipient's Maildir directory whose fsync the batch owes."""
        from mailtools.core.local import deliver_local

        entry = job.work.entry
        out = {}
        for r in job.rcpts:
            state, status, text = deliver_local(self.cfg, entry.sender, r.address, job.work.data,
                                                received=self._received(entry, r.address, job.work.data))
            out[r.address] = Outcome(state, text, status, "local")
            if sync is not None:
                dirs[r.address] = sync.take_last()
        return out

    # -- remote destinations ----------------------------------------------------------------------

    def _received(self, entry, rcpt: Optional[str], data: bytes = b"") -> bytes:
        """Our Received header (RFC 5321 4.4): whom the message came from (taken from the trace
        header the accepting side wrote), our queue id, and the recipient. No `with`: this hop
        is the queue, not a protocol; repeating the accepting side's "with ESMTPSA" made
        trace-headers show the submission hop twice, the second time as if over TLS again."""
        frm = _origin(data)
        forpart = f"\r\n\tfor <{rcpt}>" if rcpt else ""
        return (
            f"Received: {frm}by {self.cfg.hostname} (mailtools relay)\r\n"
            f"\tid {entry.id}{forpart}; {_date()}\r\n"
        ).encode("utf-8")

    def _submit(self, job: Job) -> None:
        key = "[smarthost]" if self.smarthost else job.domain
        dest = self.dests.get(key)
        if dest is None:
            dest = self.dests[key] = Destination(key, job.domain)
        dest.queue.put_nowait(job)
        self._spawn(dest)

    def _spawn(self, dest: Destination) -> None:
        while (
            self.open_workers < self.concurrency
            and dest.workers < self.concurrency
            and (dest.workers == 0 or dest.queue.qsize() > dest.workers)
        ):
            dest.workers += 1
            self.open_workers += 1
            asyncio.ensure_future(self._worker(dest))

    def _respawn(self) -> None:
        for d in self.dests.values():
            if d.queue.qsize() and d.workers == 0:
                self._spawn(d)

    async def _next_job(self, dest: Destination, conn) -> Optional[Job]:
        while True:
            try:
                job = dest.queue.get_nowait()
            except asyncio.QueueEmpty:
                if not self.producing:
                    return None
                try:
                    job = await asyncio.wait_for(dest.queue.get(), REUSE_IDLE if conn else 0.05)
                except asyncio.TimeoutError:
                    if conn is None or not self.producing:
                        return None
                    continue
            if job is not None:
                return job
            if not self.producing and dest.queue.empty():
                return None

    async def _worker(self, dest: Destination) -> None:
        conn: Optional[smtp.SMTPConnection] = None
        carried: Optional[Job] = None
        try:
            while True:
                job = carried or await self._next_job(dest, conn)
                carried = None
                if job is None:
                    break
                try:
                    conn, carried = await self._deliver_job(dest, job, conn)
                except Exception as exc:  # noqa: BLE001 - never lose a job's outcome
                    log(f"{job.work.entry.id}: internal error: {type(exc).__name__}: {exc}")
                    self._finish_job(job, {r.address: Outcome(DEFERRED, f"internal error: {exc}", "4.3.0")
                                           for r in job.rcpts})
                    if job.after is not None and not job.after.done:
                        carried = job.after  # announced on the connection we now drop
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if carried is not None and not carried.done:
                dest.queue.put_nowait(carried)  # another worker takes it (cancelled mid-way)
            if conn is not None:
                await conn.quit()
            dest.workers -= 1
            self.open_workers -= 1
            self._respawn()

    def _payload(self, job: Job) -> bytes:
        work = job.work
        if work.payload is None:
            rcpt = work.entry.recipients[0].address if len(work.entry.recipients) == 1 else None
            work.payload = smtp.prepare_data(self._received(work.entry, rcpt, work.data) + work.data)
        return work.payload

    def _refusal(self, job: Job, conn) -> Optional[Outcome]:
        """What this connection's server would make us bounce before sending (SMTPUTF8, SIZE)."""
        if job.utf8 and "SMTPUTF8" not in conn.extensions:
            # RFC 6531 3.2: an internationalised envelope cannot be downgraded
            where = f"{conn.host}[{conn.ip}]:{conn.port}"
            return Outcome(BOUNCED, f"SMTPUTF8 is required, but was not offered by host {where}",
                           "5.6.7", where, conn.host)
        size = len(self._payload(job))
        if conn.max_size and size > conn.max_size:
            where = f"{conn.host}[{conn.ip}]:{conn.port}"
            return Outcome(BOUNCED, f"message size {size} exceeds size limit {conn.max_size} "
                           f"of server {where}", "5.3.4", where, conn.host)
        return None

    def _prepare(self, job: Job) -> None:
        if job.addrs is None:
            entry = job.work.entry
            job.addrs = [r.address for r in job.rcpts]
            job.utf8 = smtp.needs_smtputf8(entry.sender, job.addrs)
            job.want_utf8 = job.utf8 or bool(entry.dsn.get("smtputf8"))
            job.eightbit = (entry.dsn.get("body") in ("8BITMIME", "BINARYMIME")
                            or smtp.has_8bit(job.work.data))

    def _take_next(self, dest: Destination, conn) -> Optional[Job]:
        """The destination's next job, to announce behind this message's content (one write per
        message on a busy connection), when the server pipelines and would take it."""
        if not conn.pipelining or dest.dead is not None or conn.messages_sent + 1 >= REUSE_LIMIT:
            return None
        try:
            nxt = dest.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if nxt is None:  # a wake-up for idle workers: leave it for them
            dest.queue.put_nowait(None)
            return None
        self._prepare(nxt)
        return nxt

    async def _deliver_job(self, dest: Destination, job: Job, conn):
        """Deliver one job over `conn` (opened when needed); returns (connection to reuse or
        None, the job to deliver next over it or None). The next job is taken from the
        destination's queue here when its envelope can go out behind this message."""
        entry = job.work.entry
        self._prepare(job)
        addrs = job.addrs
        if dest.dead is not None:
            self._finish_job(job, {a: dest.dead for a in addrs})
            if conn is not None and conn.announced:  # this job's transaction stays unfinished
                conn.close()
                conn = None
            return conn, None
        payload = self._payload(job)
        for attempt in (1, 2):
            if conn is None or not conn.alive:
                conn, failure = await self._connect(dest, job)
                if conn is None:
                    self._finish_job(job, {a: failure for a in addrs})
                    return None, None
            where = f"{conn.host}[{conn.ip}]:{conn.port}"
            refused = self._refusal(job, conn)
            if refused is not None:
                self._finish_job(job, {a: refused for a in addrs})
                return conn, None
            if job.after is None:
                job.after = self._take_next(dest, conn)
            nxt = job.after
            then = None
            if nxt is not None and conn.pipelining and self._refusal(nxt, conn) is None:
                then = (nxt.work.entry.sender, nxt.addrs, self._payload(nxt), nxt.want_utf8, nxt.eightbit)
            try:
                result = await conn.send(entry.sender, addrs, payload, smtputf8=job.want_utf8,
                                         eightbit=job.eightbit, then=then)
            except smtp.SMTPClientError as exc:
                reused = conn.messages_sent > 0
                conn.close()
                conn = None
                if reused and attempt == 1:
                    continue  # the server closed an idle connection: one fresh try
                o = Outcome(DEFERRED, f"conversation with {where} failed: {exc}", exc.status, where)
                self._finish_job(job, {a: o for a in addrs})
                return None, nxt
            outcomes = {}
            for i, a in enumerate(addrs):
                reply = result.outcome(i)
                state = SENT if reply.ok else (BOUNCED if reply.code >= 500 else DEFERRED)
                text = reply.text if reply.ok else f"host {where} said: {reply.text}"
                outcomes[a] = Outcome(state, text, reply.status, where, conn.host)
            self._finish_job(job, outcomes)
            if conn.messages_sent >= REUSE_LIMIT:
                await conn.quit()
                conn = None
            return conn, nxt
        return conn, job.after

    def _client_config(self, dest: Destination) -> smtp.ClientConfig:
        rc = self.cfg.relay
        cc = smtp.ClientConfig(helo=self.cfg.hostname, timeouts=self.timeouts,
                               ca_file=getattr(rc, "ca_file", "") or "")
        if self.smarthost:
            mode = rc.auth.tls
            cc.tls = "none" if mode == "none" else "required"
            cc.verify = mode == "required"
            cc.username = rc.auth.username
            cc.password = _password(self.cfg)
            cc.implicit_tls = mode != "none" and _split_hostport(self.smarthost)[1] == 465
        else:
            required = dest.domain in [d.lower() for d in rc.require_tls]
            cc.tls = "required" if required else "opportunistic"
            cc.verify = bool(rc.verify_tls)
        return cc

    async def _routes(self, dest: Destination) -> None:
        async with dest.lock:
            if dest.routes is not None or dest.route_failure is not None:
                return
            if self.smarthost:
                host, port = _split_hostport(self.smarthost)
                try:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, port, type=socket.SOCK_STREAM)
                    ips = list(dict.fromkeys(i[4][0] for i in infos))
                    dest.routes = [(host, ip, port) for ip in ips]
                except OSError as exc:
                    dest.route_failure = Outcome(DEFERRED, f"smarthost {host}: {exc}", "4.4.3")
                return
            from mailtools.core import dns

            if self.resolver is None:
                self.resolver = dns.make_resolver(list(self.cfg.dns.nameservers), self.cfg.dns.timeout)
            res = await dns.lookup(dest.domain, self.resolver, shuffle=True)
            port = int(self.cfg.relay.remote_port)
            if res.status in ("ok", "implicit"):
                dest.routes = [(ex.host, ip, port) for ex in res.exchangers for ip in ex.addresses]
                if not dest.routes:
                    dest.route_failure = Outcome(BOUNCED, f"no address for the mail exchangers of {dest.domain}", "5.4.4")
            elif res.status == "null-mx":
                # RFC 7505 3.2: a null MX means the domain accepts no mail
                dest.route_failure = Outcome(BOUNCED, f"domain {dest.domain} does not accept mail (null MX)", "5.1.10")
            elif res.status == "nxdomain":
                dest.route_failure = Outcome(BOUNCED, f"Host or domain name not found: {dest.domain}", "5.1.2")
            elif res.status == "no-address":
                dest.route_failure = Outcome(BOUNCED, f"no address for the mail exchangers of {dest.domain}", "5.4.4")
            else:  # tempfail: never a bounce
                dest.route_failure = Outcome(DEFERRED, f"DNS lookup for {dest.domain} failed temporarily", "4.4.3")

    async def _connect(self, dest: Destination, job: Job):
        """Try each exchanger's addresses in turn (RFC 5321 5.1); (connection, None) or (None, Outcome)."""
        await self._routes(dest)
        if dest.route_failure is not None:
            return None, dest.route_failure
        cc = self._client_config(dest)
        last: Optional[Outcome] = None
        for host, ip, port in dest.routes:
            where = f"{host}[{ip}]:{port}"
            conn = smtp.SMTPConnection(cc)
            try:
                await conn.open(host, ip, port)
                _log_tls(conn)
                return conn, None
            except smtp.TLSRequired as exc:
                conn.close()
                if cc.tls == "opportunistic":
                    # RFC 7435: a failed opportunistic handshake falls back to plaintext
                    plain = smtp.SMTPConnection(smtp.ClientConfig(**{**cc.__dict__, "tls": "none"}))
                    try:
                        await plain.open(host, ip, port)
                        log(f"{where}: TLS handshake failed, continuing in plaintext (opportunistic)")
                        return plain, None
                    except smtp.SMTPClientError as exc2:
                        plain.close()
                        exc = exc2
                last = Outcome(DEFERRED, str(exc), exc.status, where)
            except smtp.SMTPClientError as exc:
                conn.close()
                state = BOUNCED if exc.permanent and exc.reply is not None else DEFERRED
                last = Outcome(state, str(exc), exc.status, where, host)
        assert last is not None
        if last.state == BOUNCED and len(dest.routes) > 1:
            # several exchangers and the last said no: still only a hard failure if it was 5xx
            pass
        dest.dead = last
        return None, last


_POOLS: dict = {}


def _pool(name: str):
    """Small thread pools for the file-system work that can wait on the disk ("claim" for the
    recovery sweep and listing before a pass, "spool" for fsynced envelope updates and DSNs
    after delivery, "local" for deliveries into Maildirs)."""
    if name not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        workers = {"spool": 8, "local": LOCAL_THREADS}.get(name, 2)
        _POOLS[name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"relay-{name}")
    return _POOLS[name]


_FROM = re.compile(rb"^Received:[ \t]*from[ \t]+([^\s;()]+)(?:[ \t]+(\([^()]*\)))?", re.I)
def _origin(data: bytes) -> str:
    """'from HOST (IP...)\r\n\t' from the message's newest Received header, or '' when it has
    none with a from-clause (local submission)."""
    end = data.find(b"\n\n")
    crlf = data.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        end = crlf
    head = data[: end if end >= 0 else 8192][:65536]
    i = head.find(b"Received:") if head.startswith(b"Received:") else head.find(b"\nReceived:") + 1
    if i <= 0 and not head.startswith(b"Received:"):
        return ""
    j = i  # the whole (folded) header
    while True:
        j = head.find(b"\n", j + 1)
        if j < 0 or head[j + 1 : j + 2] not in (b" ", b"\t"):
            break
    m = _FROM.match(b" ".join(head[i : j if j >= 0 else len(head)].split()))
    if not m:
        return ""
    frm = "from " + m.group(1).decode("utf-8", "replace")
    if m.group(2):
        frm += " " + m.group(2).decode("utf-8", "replace")
    return frm + "\r\n\t"


_DATE = [0, ""]


def _date() -> str:
    """RFC 5322 date-time of now, local time, formatted once per second (not per message)."""
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[0], _DATE[1] = now, email.utils.formatdate(now, localtime=True)
    return _DATE[1]


def _log_tls(conn) -> None:
    """Postfix-style record of the TLS session and what we made of the certificate."""
    t = conn.tls
    if t is None:
        return
    trust = "Verified" if t.verified else "Untrusted"
    why = f" ({t.verify_error[:120]})" if t.verify_error and not t.verified else ""
    log(f"{trust} TLS connection established to {conn.host}[{conn.ip}]:{conn.port}: {t.summary()}"
        f"; subject={t.peer_subject or '-'}; issuer={t.peer_issuer or '-'}{why}")


def _local_failure(job: Job, exc: BaseException) -> dict:
    return {r.address: Outcome(DEFERRED, f"local delivery failed: {exc}", "4.3.0", "local")
            for r in job.rcpts}


def _status_of(reply: str) -> str:
    m = re.search(r"\b([45]\.\d{1,3}\.\d{1,3})\b", reply or "")
    return m.group(1) if m else "4.0.0"


def _notify_delay(r) -> bool:
    """RFC 3461 4.1: a delay notice unless NOTIFY was given without DELAY."""
    n = getattr(r, "notify", None)
    return not n or "DELAY" in n.upper()


def _notify_failure(r) -> bool:
    """RFC 3461 4.1: NOTIFY=NEVER, or a list without FAILURE, asks for no bounce."""
    n = getattr(r, "notify", None)
    return not n or "FAILURE" in n.upper()


def _failed_status(status: str) -> str:
    """A failed recipient's DSN Status is 5.x.x, or 4.x.x kept for expiry (RFC 3463 4.4.7)."""
    return status if status[:1] in "45" else "5.0.0"


def _split_hostport(value: str) -> tuple[str, int]:
    v = value.strip()
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        return host, int(rest.lstrip(":") or 25)
    host, sep, port = v.rpartition(":")
    if not sep:
        return v, 25
    return host, int(port)


def _password(cfg) -> str:
    a = cfg.relay.auth
    if a.password_file:
        p = Path(a.password_file)
        if not p.is_absolute():
            p = cfg.root / p
        return p.read_text(encoding="utf-8").strip("\r\n")
    return a.password


# -- entry points -----------------------------------------------------------------------------


def lock_path(cfg) -> Path:
    """One --once lock per host name: overlapping cron runs on one host exit at once, several
    hosts sharing a spool each run their own."""
    return cfg.queue_dir.parent / f".relay-once.{cfg.hostname}.lock"


PER_PROCESS = 100  # due entries per process before `relay --once` splits the queue


async def run_queue(cfg, *, flush: bool = False, smarthost: Optional[str] = None,
                    order: Optional[list] = None, concurrency: Optional[int] = None,
                    bounce_passes: bool = True) -> dict:
    """Passes until nothing new is due (bounces queued during a pass go out in the next).
    The stats carry "bounces": DSNs queued and not yet sent by a pass of this call."""
    runner = Runner(cfg, smarthost=smarthost, concurrency=concurrency)
    await runner.run_pass(flush=flush, order=order)
    for _ in range(3 if bounce_passes else 0):
        if not runner.bounces_queued:
            break
        runner.bounces_queued = 0
        await runner.run_pass()
    return {**runner.stats, "bounces": runner.bounces_queued}


def _processes(cfg, entries: int) -> int:
    """How many processes share a long queue: one per CPU (at most 4), each with at least
    PER_PROCESS entries and one connection; one process is one core's worth of Python (GIL)."""
    from mailtools.core.prefork import usable_cpus

    n = min(usable_cpus(), 4, entries // PER_PROCESS, max(1, int(cfg.relay.concurrency)))
    return max(1, n)


def _run_split(cfg, *, flush: bool, smarthost: Optional[str]) -> dict:
    """One pass split over several processes, as Postfix runs many smtp processes: the ids
    in new/ are dealt round-robin (ids sort by arrival, so every process gets old and new
    mail); each process works through its share, then through the others' shares from their
    far end, so one that falls behind is helped rather than waited for (claims stay atomic
    renames: two processes never deliver one recipient; the loser of a race just finds the
    entry gone). Each opens its share of relay.concurrency connections. A process that dies
    leaves its claims to recover()."""
    import json

    from mailtools.core.queue import Queue

    queue = Queue(cfg.queue_dir)
    queue.recover(float(cfg.relay.claim_timeout))  # before listing: recovered entries go out now
    ids = queue.ids("new")
    n = _processes(cfg, len(ids))
    if n == 1:
        return asyncio.run(run_queue(cfg, flush=flush, smarthost=smarthost))
    each = max(1, int(cfg.relay.concurrency) // n)
    shares = [ids[k::n] for k in range(n)]
    orders = [shares[k] + [q for j in range(n) if j != k for q in reversed(shares[j])]
              for k in range(n)]
    sys.stdout.flush()
    sys.stderr.flush()
    kids = []
    for k in range(1, n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its share, its stats on the pipe, and out (never return)
            code = 75
            try:
                os.close(r)
                stats = asyncio.run(run_queue(cfg, flush=flush, smarthost=smarthost, order=orders[k],
                                              concurrency=each, bounce_passes=False))
                os.write(w, json.dumps(stats).encode())
                code = 0
            except BaseException as exc:  # noqa: BLE001 - whatever happens, the child exits here
                log(f"warning: queue process failed: {type(exc).__name__}: {exc}")
            finally:
                try:
                    _join_threads()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(w)
        kids.append((pid, r))
    try:
        stats = asyncio.run(run_queue(cfg, flush=flush, smarthost=smarthost, order=orders[0],
                                      concurrency=each, bounce_passes=False))
    finally:
        results = [_collect(pid, r) for pid, r in kids]
    for got in results:
        for key, value in got.items():
            stats[key] = stats.get(key, 0) + value
    if stats.get("bounces"):  # DSNs the processes queued: sent by a pass over the whole queue
        more = asyncio.run(run_queue(cfg, smarthost=smarthost))
        for key, value in more.items():
            stats[key] = value if key == "bounces" else stats.get(key, 0) + value
    return stats


def _join_threads() -> None:
    """What interpreter exit would do before os._exit ends a child: let the spool pools and
    the queue's remover (it empties trash/ after the runner) finish their work."""
    import threading

    for pool in _POOLS.values():
        pool.shutdown(wait=True)
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join(60)


def _collect(pid: int, fd: int) -> dict:
    """A child's stats from its pipe, once it has exited (a child that died says nothing:
    assume it queued a bounce, so the final pass looks)."""
    import json

    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    os.waitpid(pid, 0)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"bounces": 1}


def run_once(cfg, *, flush: bool = False, smarthost: Optional[str] = None) -> Optional[dict]:
    """`relay --once`: None when another --once run holds the lock (the caller says so, exit 0)."""
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return _run_split(cfg, flush=flush, smarthost=smarthost)
    finally:
        os.close(fd)


async def daemon(cfg, stop: Optional[asyncio.Event] = None, *, smarthost: Optional[str] = None,
                 flush: bool = False) -> None:
    """The queue daemon: a pass now, then one whenever `submit` nudges us (the queue's FIFO) or
    a retry is due; returns when `stop` is set."""
    from mailtools.core.queue import NudgeListener

    stop = stop or asyncio.Event()
    listener = NudgeListener(cfg.queue_dir)
    log(f"daemon started, queue {cfg.queue_dir}")
    swept = None  # monotonic time of the last recovery sweep
    try:
        while not stop.is_set():
            runner = Runner(cfg, smarthost=smarthost, stop=stop)
            # The sweep lists and stats every claim in active/: once per RECOVER_EVERY, not
            # at each of the many passes a stream of nudges brings (a dead runner's claims
            # wait at most that long; claim_timeout is an hour by default)
            now = time.monotonic()
            sweep = swept is None or now - swept >= RECOVER_EVERY
            if sweep:
                swept = now
            try:
                await runner.run_pass(flush=flush, recover=sweep)
                while runner.bounces_queued:
                    runner.bounces_queued = 0
                    await runner.run_pass(recover=False)
            except Exception as exc:  # noqa: BLE001 - the daemon outlives one bad pass
                log(f"warning: queue pass failed: {type(exc).__name__}: {exc}")
            flush = False
            # nudged meanwhile: the wait returns at once, so no retry time is needed (working
            # it out reads every waiting envelope)
            timeout = 0.01 if listener.pending() else _next_due(runner)
            waits = [asyncio.ensure_future(stop.wait()),
                     asyncio.ensure_future(listener.wait_async(timeout))]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
    finally:
        listener.close()
        log("daemon stopped")


def _next_due(runner: Runner) -> float:
    """Seconds until the earliest retry (at most a minute, so recovery and expiry run too)."""
    now = time.time()
    best = 60.0
    try:
        for e in runner.queue.entries(include=("new",)):  # not held, not claimed by others
            for r in e.recipients:
                if r.state in PENDING:
                    best = min(best, max(0.5, (r.next_attempt or now) - now))  # never a hot loop
    except OSError:
        pass
    return best
