"""Inbound SMTP for our own domains (`relay --listen`, port 25): the MX side of the MTA.

Policy only: the protocol (STARTTLS, PIPELINING, SIZE, 8BITMIME, SMTPUTF8, smuggling-safe DATA,
limits, timeouts) is the shared sans-I/O session in mailtools.smtpd, chosen over aiosmtpd for
the reasons given there (one state table, fewer awaits per message).

- RCPT for a domain that is not in `local_domains`: 554 5.7.1 relay access denied (no open
  relay, ever: inbound has no AUTH; submission is `submit --listen`).
- RCPT for an unknown local user: 550 5.1.1.
- MAIL FROM with a bad address (syntax) 501 5.1.7; a sender domain that publishes a null MX
  (RFC 7505 4.2) 550 5.7.27, checked before the message is accepted.
- DATA: straight into each recipient's Maildir (Return-Path, Delivered-To, our Received with the
  TLS details), fsynced before the 250. When no Maildir can be written: 451 4.3.0 and nothing
  is visible in any Maildir. When only some can be: the rest go into the queue (fsynced) for the
  runner to retry, and the client gets its 250, so nobody receives a duplicate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Optional

from mailtools.core.local import SENT, deliver_local, mailbox_owner
from mailtools.smtpd import replies as R
from mailtools.smtpd.received import protocol_keyword, received_value
from mailtools.smtpd.session import ConnInfo, Handler, Limits, Transaction

NULL_MX_SENDER = R.Reply(550, "5.7.27", "Sender address rejected: the domain accepts no mail (null MX)")
BAD_SENDER_DOMAIN = R.Reply(501, "5.1.7", "Bad sender address syntax")
SENDER_DNS_TEMPFAIL = R.Reply(451, "4.4.3", "Sender domain lookup failed temporarily; try again later")
PARTLY_DEFERRED = "Ok: delivered, {n} recipient(s) queued for retry as {qid}"


def _log(line: str) -> None:
    from mailtools.relay.runner import log

    log(line)


class SenderCheck:
    """Null-MX test of sender domains (RFC 7505 4.2), from the blocking DATA hook: one resolver
    on its own event loop in a daemon thread, answers cached for five minutes."""

    TTL = 300.0

    def __init__(self, cfg):
        self.cfg = cfg
        self.cache: dict[str, tuple[str, float]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._resolver = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="relay-dns", daemon=True).start()
                self._loop = loop
            return self._loop

    async def _lookup(self, domain: str) -> str:
        from mailtools.core import dns

        if self._resolver is None:
            self._resolver = dns.make_resolver(list(self.cfg.dns.nameservers), self.cfg.dns.timeout)
        return (await dns.lookup(domain, self._resolver)).status

    def status(self, domain: str) -> str:
        hit = self.cache.get(domain)
        now = time.monotonic()
        if hit and hit[1] > now:
            return hit[0]
        fut = asyncio.run_coroutine_threadsafe(self._lookup(domain), self._ensure())
        try:
            status = fut.result(float(self.cfg.dns.timeout) * 2 + 1)
        except Exception:  # noqa: BLE001 - any failure is a temporary one
            status = "tempfail"
        if status != "tempfail":
            self.cache[domain] = (status, now + self.TTL)
        return status


def _valid_domain(domain: str) -> bool:
    from mailtools.core.dns import normalise_domain

    if domain.startswith("[") and domain.endswith("]"):
        return True  # address literal (RFC 5321 4.1.3)
    try:
        normalise_domain(domain)
        return True
    except ValueError:
        return False


def _postmaster(cfg, local: str) -> str:
    """Bare 'postmaster' (RFC 5321 4.5.1: MUST be accepted with no domain) as an address of
    ours: the hostname when it is a local domain, else the first local domain."""
    if cfg.is_local_domain(cfg.hostname) or not cfg.local_domains:
        return f"{local.lower()}@{cfg.hostname}"
    return f"{local.lower()}@{cfg.local_domains[0]}"


class InboundHandler(Handler):
    auth_mechanisms = ()  # no AUTH on the MX port: submission is elsewhere

    def __init__(self, cfg, checker: SenderCheck):
        self.cfg = cfg
        self.checker = checker

    def mail_from(self, info: ConnInfo, tx: Transaction, address: str):
        if address == "":
            return None  # the null sender: bounces are welcome (RFC 5321 4.5.5)
        local, _, domain = address.rpartition("@")
        if not local or not _valid_domain(domain):
            return BAD_SENDER_DOMAIN
        return None

    def rcpt_to(self, info: ConnInfo, tx: Transaction, address: str):
        if "@" not in address:  # bare "postmaster" (RFC 5321 4.5.1)
            address = _postmaster(self.cfg, address)
        domain = address.rpartition("@")[2]
        if not self.cfg.is_local_domain(domain):
            return R.RELAY_DENIED
        if mailbox_owner(self.cfg, address) is None:
            return R.NO_SUCH_USER
        return None

    def data(self, info: ConnInfo, tx: Transaction, message: bytes):
        sender = tx.sender
        if sender:
            domain = sender.rpartition("@")[2].lower()
            if not domain.startswith("[") and not self.cfg.is_local_domain(domain):
                status = self.checker.status(domain)
                if status == "null-mx":
                    return NULL_MX_SENDER
                if status == "tempfail":
                    return SENDER_DNS_TEMPFAIL
        proto = protocol_keyword(info.esmtp, bool(info.tls), False)
        now = time.time()
        failed = []
        delivered = 0
        rcpts = [r if "@" in r else _postmaster(self.cfg, r) for r in tx.recipients]
        for rcpt in dict.fromkeys(rcpts):  # one copy per mailbox, even when named twice
            received = received_value(
                helo=info.helo, peer_ip=info.peer_ip, by_host=self.cfg.hostname, protocol=proto,
                queue_id=info.session_id, recipient=rcpt, tls=info.tls, when=now,
            )
            state, status, text = deliver_local(
                self.cfg, sender, rcpt, message, received=f"Received: {received}\r\n".encode("utf-8"),
            )
            if state == SENT:
                delivered += 1
            else:
                failed.append((rcpt, text))
        peer = f"{info.helo or 'unknown'}[{info.peer_ip}]"
        if not failed:
            _log(f"{info.session_id}: from=<{sender}>, client={peer}, nrcpt={delivered}, "
                 f"size={len(message)}, status=delivered ({proto})")
            return R.QUEUED.with_text(f"Ok: delivered as {info.session_id}")
        if not delivered:
            _log(f"{info.session_id}: from=<{sender}>, client={peer}: 451 4.3.0 {failed[0][1]}")
            return R.LOCAL_ERROR.with_text("Local error: cannot write to the mailbox, try again later")
        # Some copies are in their Maildirs: refusing now would duplicate them. Queue the rest.
        try:
            from mailtools.core.queue import Queue

            qid = Queue(self.cfg.queue_dir).enqueue(sender, [r for r, _ in failed], message)
        except (OSError, ValueError):
            return R.LOCAL_ERROR.with_text("Local error: cannot write to the mailbox, try again later")
        try:
            from mailtools.core.queue import nudge

            nudge(self.cfg.queue_dir)
        except OSError:
            pass
        _log(f"{info.session_id}: from=<{sender}>, client={peer}, nrcpt={delivered}+{len(failed)} queued as {qid}")
        return R.QUEUED.with_text(PARTLY_DEFERRED.format(n=len(failed), qid=qid))


def limits_from_config(cfg) -> Limits:
    rc = cfg.relay
    return Limits(
        max_message_size=int(rc.max_message_size),
        max_recipients=int(rc.max_recipients),
        # Inbound mail with a text line over 998 octets is accepted and stored as it came, as
        # Postfix and Dovecot's LMTP do: refusing it would bounce real (if badly made) mail
        # that is only ever delivered locally here. The MSA refuses it (RFC 6409 8 fix-up).
        max_data_line=0,
    )


async def start(cfg, listen: Optional[list] = None, tls_listen: Optional[list] = None) -> list:
    """Listen for inbound SMTP (`relay.listen` unless given); returns the asyncio servers.
    STARTTLS is offered when [tls] names a certificate; `tls_listen` is implicit TLS."""
    from mailtools.core.tls import context_from_config
    from mailtools.smtpd.server import start_server

    listen = list(cfg.relay.listen if listen is None else listen)
    tls_listen = list(tls_listen or [])
    ctx = context_from_config(cfg)
    checker = SenderCheck(cfg)
    return await start_server(
        lambda: InboundHandler(cfg, checker), listen, tls_listen, ctx,
        hostname=cfg.hostname, limits=limits_from_config(cfg),
        max_connections=int(cfg.relay.max_connections),
    )
