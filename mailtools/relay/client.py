"""The outbound SMTP client: one connection, several messages, few writes.

Our own small asyncio client rather than aiosmtplib or smtplib-in-threads, because the queue
runner's throughput depends on three things neither gives us directly: PIPELINING of MAIL, every
RCPT and DATA in one write (RFC 2920), the whole dot-stuffed message plus the final "." in one more
write (a body dribbled out in small writes meets Nagle and delayed ACK: ~40 ms per message), and a
connection kept open across messages for the same next hop. On such a connection the next
message's MAIL, RCPT and DATA ride in the same write as this message's content (RFC 2920 3.1), so
a run of messages costs one write and one round trip each. It also lets us cap reply sizes and
apply the RFC 5321 4.5.3.2 timeouts per phase.

The connection only speaks SMTP; what to do with each outcome (sent, deferred, bounced) is the
runner's decision. Every reply is returned as a `Reply`; network trouble raises `ConnectionLost`
or `TransientError`; TLS that is required but unavailable raises `TLSRequired`.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import socket
import ssl
import warnings
from dataclasses import dataclass, field
from typing import Optional

# RFC 5321 4.5.3.1.5 says 512 octets per reply line; real servers exceed it, so allow more but
# never an unbounded amount (a hostile server could feed us one endless line).
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
MAX_RCPTS_PER_TRANSACTION = 100  # RFC 5321 4.5.3.1.8: servers must accept at least 100

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+; wait_for before that
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        """One line for logs and DSNs: '250 2.0.0 Ok: queued as X' (multi-line joined)."""
        s = f"{self.code} " + " ".join(line for line in self.lines if line)
        return s.strip()[:1000]

    @property
    def enhanced(self) -> Optional[str]:
        m = _ENHANCED.match(self.lines[0]) if self.lines else None
        return m.group(0) if m else None

    @property
    def status(self) -> str:
        """The RFC 3463 status for DSNs: the server's enhanced code, else one from the class."""
        return self.enhanced or {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(self.code // 100, "4.0.0")

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return not (200 <= self.code < 300 or 500 <= self.code < 600)


class SMTPClientError(Exception):
    """Base of errors that end a connection attempt; `.reply` carries the server's words."""

    def __init__(self, message: str, reply: Optional[Reply] = None, permanent: bool = False):
        super().__init__(message)
        self.reply = reply
        self.permanent = permanent

    @property
    def status(self) -> str:
        if self.reply is not None:
            return self.reply.status
        return "5.0.0" if self.permanent else "4.4.1"


class ConnectionLost(SMTPClientError):
    """Network failure, timeout, or a reply we could not parse: try later or elsewhere."""


class TLSRequired(SMTPClientError):
    """Policy says TLS, and the next hop could not give it (RFC 3207 / require_tls)."""

    @property
    def status(self) -> str:
        return "4.7.5" if self.reply is None else self.reply.status


@dataclass
class Timeouts:
    """RFC 5321 4.5.3.2: greeting 5 min, MAIL 5, RCPT 5, DATA 2, data block 3, final '.' 10."""

    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0

    @property
    def data_init(self) -> float:
        return min(self.command, 120.0)


@dataclass
class TLSInfo:
    version: str
    cipher: str
    bits: int
    verified: bool
    peer_subject: str = ""
    peer_issuer: str = ""
    verify_error: str = ""

    def summary(self) -> str:
        """For Received headers and logs: 'TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)'."""
        return f"{self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"


@dataclass
class TransactionResult:
    """One message over one connection: a reply per recipient, and the DATA reply if we got there."""

    rcpt_replies: list[Reply]
    data_reply: Optional[Reply] = None

    def outcome(self, i: int) -> Reply:
        r = self.rcpt_replies[i]
        if not r.ok or self.data_reply is None:
            return r
        return self.data_reply


@dataclass
class ClientConfig:
    helo: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    tls: str = "opportunistic"  # "none" | "opportunistic" | "required"
    verify: bool = False  # verify the peer certificate (host name + chain)
    ca_file: str = ""  # extra CA bundle; empty: the system store
    implicit_tls: bool = False  # TLS from the first byte (port 465, RFC 8314)
    username: str = ""
    password: str = ""


def prepare_data(data: bytes) -> bytes:
    """The DATA payload: CRLF line ends everywhere (no bare CR or LF ever leaves), leading dots
    doubled (RFC 5321 4.5.2), a final CRLF, then the terminating '.'."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    # RFC 5321 4.5.2 transparency
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    return data + b".\r\n"


def needs_smtputf8(sender: str, recipients: list[str]) -> bool:
    """RFC 6531: an envelope address with non-ASCII characters needs SMTPUTF8 at every hop."""
    return not all(a.isascii() for a in (sender, *recipients))


def has_8bit(data: bytes) -> bool:
    try:
        data.decode("ascii")
        return False
    except UnicodeDecodeError:
        return True


_CONTEXTS: dict = {}


def _make_context(verify: bool, ca_file: str) -> ssl.SSLContext:
    """One client context per policy, built once (loading the system CAs costs ~40 ms)."""
    key = (verify, ca_file)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = _new_context(verify, ca_file)
    return _CONTEXTS[key]


def _new_context(verify: bool, ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        # Opportunistic TLS (RFC 7435): encrypt even when the certificate cannot be checked; we
        # verify separately below only to record the result.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_STORES: dict = {}


def _trust_store(ca_file: str):
    """The trust anchors for recording verification: ca_file, else the system bundle (cached)."""
    if ca_file not in _STORES:
        from cryptography import x509
        from cryptography.x509.verification import Store

        roots = []
        for p in (ca_file or os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile,):
            try:
                with open(p or "", "rb") as f, warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # odd serial numbers in system bundles
                    roots.extend(x509.load_pem_x509_certificates(f.read()))
            except (OSError, ValueError):
                pass
        _STORES[ca_file] = Store(roots) if roots else None
    return _STORES[ca_file]


def _verify_quietly(der: Optional[bytes], server_hostname: str, ca_file: str) -> tuple[bool, str]:
    """Check a certificate we accepted without verification, for the record (never fatal)."""
    if not der:
        return False, "no certificate"
    try:
        from cryptography import x509
        from cryptography.x509.verification import PolicyBuilder  # cryptography >= 42
    except ImportError:
        return False, "not checked"
    try:
        store = _trust_store(ca_file)
        if store is None:
            return False, "no trust anchors"
        cert = x509.load_der_x509_certificate(der)
        try:
            name = x509.IPAddress(ipaddress.ip_address(server_hostname))
        except ValueError:
            name = x509.DNSName(server_hostname)
        builder = PolicyBuilder().store(store)
        try:
            # The chain and the name are what we record; MX certificates in the wild break many
            # RFC 5280 extension rules that OpenSSL tolerates, so do not judge those.
            from cryptography.x509.verification import Criticality, ExtensionPolicy

            ee = ExtensionPolicy.permit_all().require_present(
                x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
            builder = builder.extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                                 ee_policy=ee)
        except (ImportError, AttributeError):
            pass
        builder.build_server_verifier(name).verify(cert, [])
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure just means "not verified"
        return False, str(exc)[:200] or type(exc).__name__


class SMTPConnection:
    """One SMTP session to one address. Use `open()`, then `send()` as many times as wanted."""

    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.tls: Optional[TLSInfo] = None
        self.host = ""
        self.ip = ""
        self.port = 0
        self.greeting: Optional[Reply] = None
        self.dirty = False  # a transaction was left half-way: RSET before the next one
        self._announced: Optional[tuple] = None  # the next message's envelope, already sent
        self.messages_sent = 0

    # -- reading and writing ------------------------------------------------------------------

    async def _read_reply(self, timeout: float) -> Reply:
        try:
            if _timeout is not None:  # no task per read (asyncio.wait_for makes one)
                async with _timeout(timeout):
                    return await self._read_reply_nowait()
            return await asyncio.wait_for(self._read_reply_nowait(), timeout)
        except asyncio.TimeoutError:
            raise ConnectionLost(f"timeout after {timeout:g}s waiting for a reply") from None

    async def _read_reply_nowait(self) -> Reply:
        assert self.reader is not None
        lines: list[str] = []
        code = None
        while True:
            try:
                raw = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise ConnectionLost("lost connection while reading a reply") from None
            except asyncio.LimitOverrunError:
                raise ConnectionLost("reply line too long") from None
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise ConnectionLost(f"lost connection: {exc}") from None
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not (line[:3].isascii() and line[:3].isdigit()) or (len(line) > 3 and line[3] not in " -"):
                raise ConnectionLost(f"malformed reply: {line[:100]!r}")
            this = int(line[:3])
            if code is not None and this != code:
                raise ConnectionLost(f"malformed multi-line reply: {line[:100]!r}")
            code = this
            if len(lines) < MAX_REPLY_LINES:
                lines.append(line[4:])
            elif len(lines) >= 10 * MAX_REPLY_LINES:
                raise ConnectionLost("reply too long")
            if len(line) == 3 or line[3] == " ":
                return Reply(code, lines)

    def _write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def _drain(self, timeout: float) -> None:
        assert self.writer is not None
        try:
            transport = self.writer.transport
            if transport.get_write_buffer_size() == 0 and not transport.is_closing():
                return  # all written already: nothing to wait for
            if _timeout is not None:
                async with _timeout(timeout):
                    await self.writer.drain()
            else:
                await asyncio.wait_for(self.writer.drain(), timeout)
        except asyncio.TimeoutError:
            raise ConnectionLost(f"timeout after {timeout:g}s sending") from None
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            raise ConnectionLost(f"lost connection while sending: {exc}") from None

    async def command(self, line: str, timeout: Optional[float] = None) -> Reply:
        self._write(line.encode("utf-8") + b"\r\n")
        await self._drain(self.cfg.timeouts.command)
        return await self._read_reply(timeout or self.cfg.timeouts.command)

    # -- session set-up -----------------------------------------------------------------------

    async def open(self, host: str, ip: str, port: int, server_hostname: Optional[str] = None) -> None:
        """Connect, read the greeting, EHLO (HELO fallback), STARTTLS as the policy says, AUTH
        when a user name is configured. Raises SMTPClientError subclasses."""
        self.host, self.ip, self.port = host, ip, port
        sni = server_hostname or host
        t = self.cfg.timeouts
        ctx = None
        if self.cfg.implicit_tls:  # else built when STARTTLS is offered (the CAs cost ~0.1 s)
            ctx = _make_context(self.cfg.verify, self.cfg.ca_file)
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(
                    ip, port, limit=MAX_REPLY_LINE,
                    ssl=ctx if self.cfg.implicit_tls else None,
                    server_hostname=sni if self.cfg.implicit_tls else None,
                ),
                t.connect,
            )
        except asyncio.TimeoutError:
            raise ConnectionLost(f"connect to {host}[{ip}]:{port}: Connection timed out") from None
        except ssl.SSLError as exc:
            raise TLSRequired(f"TLS handshake with {host}[{ip}]:{port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectionLost(f"connect to {host}[{ip}]:{port}: {exc.strerror or exc}") from None
        self._nodelay()
        if self.cfg.implicit_tls:
            self._record_tls(sni)
        self.greeting = await self._read_reply(t.command)  # RFC 5321 4.5.3.2.1: 5 minutes
        if not self.greeting.ok:
            raise SMTPClientError(
                f"host {host}[{ip}] refused to talk to me: {self.greeting.text}",
                self.greeting, permanent=self.greeting.code >= 500,
            )
        await self._hello()
        if not self.tls and self.cfg.tls != "none":
            if "STARTTLS" in self.extensions:
                reply = await self.command("STARTTLS")
                if reply.code != 220:
                    if self.cfg.tls == "required":
                        raise TLSRequired(f"STARTTLS refused by {host}[{ip}]: {reply.text}", reply)
                else:
                    try:
                        await asyncio.wait_for(
                            self.writer.start_tls(_make_context(self.cfg.verify, self.cfg.ca_file),
                                                  server_hostname=sni), t.command
                        )
                    except (ssl.SSLError, ssl.CertificateError, OSError, asyncio.TimeoutError) as exc:
                        msg = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                        raise TLSRequired(f"TLS handshake with {host}[{ip}] failed: {msg}") from None
                    self._nodelay()
                    self._record_tls(sni)
                    # RFC 3207 4.2: forget everything learnt before the handshake; EHLO again
                    await self._hello()
            elif self.cfg.tls == "required":
                raise TLSRequired(f"TLS is required, but {host}[{ip}] does not offer STARTTLS")
        if self.cfg.username:
            await self._auth()

    def _nodelay(self) -> None:
        sock = self.writer.get_extra_info("socket") if self.writer else None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _record_tls(self, sni: str) -> None:
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return
        name, version, bits = obj.cipher() or ("?", "?", 0)
        der = obj.getpeercert(binary_form=True)
        if self.cfg.verify:
            verified, err = True, ""
        else:
            verified, err = _verify_quietly(der, sni, self.cfg.ca_file)
        subject = issuer = ""
        if der:
            try:
                from cryptography import x509

                c = x509.load_der_x509_certificate(der)
                subject, issuer = c.subject.rfc4514_string(), c.issuer.rfc4514_string()
            except Exception:  # noqa: BLE001 - the record is best effort
                pass
        self.tls = TLSInfo(obj.version() or version, name, bits or 0, verified, subject, issuer, err)

    async def _hello(self) -> None:
        reply = await self.command(f"EHLO {self.cfg.helo}")
        self.extensions = {}
        if reply.ok:
            self.esmtp = True
            for line in reply.lines[1:]:
                word, _, arg = line.partition(" ")
                self.extensions[word.upper()] = arg.strip()
            return
        if reply.code in (421,) or self.tls:
            raise SMTPClientError(f"EHLO rejected: {reply.text}", reply, permanent=reply.code >= 500)
        # RFC 5321 3.2: fall back to HELO for servers without ESMTP
        self.esmtp = False
        reply = await self.command(f"HELO {self.cfg.helo}")
        if not reply.ok:
            raise SMTPClientError(f"HELO rejected: {reply.text}", reply, permanent=reply.code >= 500)

    async def _auth(self) -> None:
        mechs = self.extensions.get("AUTH", "").upper().split()
        user, pw = self.cfg.username, self.cfg.password
        if "PLAIN" in mechs:
            token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechs:
            reply = await self.command("AUTH LOGIN")
            if reply.code == 334:
                reply = await self.command(base64.b64encode(user.encode()).decode())
            if reply.code == 334:
                reply = await self.command(base64.b64encode(pw.encode()).decode())
        else:
            raise SMTPClientError(
                f"{self.host}[{self.ip}] offers no usable AUTH mechanism (PLAIN, LOGIN)",
                Reply(530, ["5.7.0 no common authentication mechanism"]), permanent=False,
            )
        if reply.code != 235:
            # a wrong password is the operator's to fix: keep the mail and keep trying
            raise SMTPClientError(f"authentication failed: {reply.text}", reply, permanent=False)

    # -- transactions ---------------------------------------------------------------------------

    @property
    def max_size(self) -> int:
        try:
            return int(self.extensions.get("SIZE", "0").split()[0] or 0)
        except (ValueError, IndexError):
            return 0

    def _envelope(self, sender: str, recipients: list[str], size: int, smtputf8: bool,
                  eightbit: bool) -> list[str]:
        """MAIL FROM (with the parameters the server offers) and one RCPT TO per recipient."""
        params = ""
        if self.esmtp:
            if "SIZE" in self.extensions:
                params += f" SIZE={size}"
            if eightbit and "8BITMIME" in self.extensions:
                params += " BODY=8BITMIME"
            if smtputf8 and "SMTPUTF8" in self.extensions:
                params += " SMTPUTF8"
        return [f"MAIL FROM:<{sender}>{params}"] + [f"RCPT TO:<{r}>" for r in recipients]

    async def _read_replies(self, n: int, timeout: float) -> list[Reply]:
        """The replies to a pipelined group, under one timer (a timer per reply cost more than
        parsing it)."""
        try:
            if _timeout is not None:
                async with _timeout(timeout):
                    return [await self._read_reply_nowait() for _ in range(n)]
            return await asyncio.wait_for(self._read_n(n), timeout)
        except asyncio.TimeoutError:
            raise ConnectionLost(f"timeout after {timeout:g}s waiting for a reply") from None

    async def _read_n(self, n: int) -> list[Reply]:
        return [await self._read_reply_nowait() for _ in range(n)]

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    @property
    def announced(self) -> bool:
        """The next message's MAIL, RCPT and DATA are on the wire (see send(then=...))."""
        return self._announced is not None

    async def send(
        self, sender: str, recipients: list[str], payload: bytes, *, smtputf8: bool = False,
        eightbit: bool = False, then: Optional[tuple] = None,
    ) -> TransactionResult:
        """One mail transaction. `payload` is `prepare_data()` output (ends with '.\r\n').

        Pipelined when the server offers it: MAIL, every RCPT and DATA in one write, then the
        message in one more. `then` (with PIPELINING only): the next message's (sender,
        recipients, payload, smtputf8, eightbit); its MAIL, RCPT and DATA follow this message's
        content in the same write (RFC 2920 3.1: message content may be the first "command" of
        a group), so a connection carrying a run of messages writes once per message. The next
        send() must then be for exactly that message; if it never comes, close() the connection
        (the server drops a transaction that never got its content)."""
        t = self.cfg.timeouts
        key = (sender, tuple(recipients), len(payload))
        if self._announced is not None:
            if self._announced != key:
                raise RuntimeError("send() is not the message announced by the previous one")
            self._announced = None
            ahead = True  # MAIL, RCPT and DATA went out behind the previous message
        else:
            ahead = False
            if self.dirty:
                reply = await self.command("RSET")
                if not reply.ok:
                    raise ConnectionLost(f"RSET failed: {reply.text}", reply)
                self.dirty = False
        cmds = self._envelope(sender, recipients, len(payload), smtputf8, eightbit)
        self.dirty = True
        if self.pipelining:
            # RFC 2920 3.1: DATA may end the group; we read the replies in order
            if not ahead:
                self._write(("\r\n".join(cmds) + "\r\nDATA\r\n").encode("utf-8"))
                await self._drain(t.command)
            replies = await self._read_replies(len(cmds) + 1, t.command)
            mail, rcpts, data = replies[0], replies[1:-1], replies[-1]
        else:
            mail = await self.command(cmds[0])
            if not mail.ok:
                return TransactionResult([mail] * len(recipients))
            rcpts = [await self.command(c) for c in cmds[1:]]
            if not any(r.ok for r in rcpts):
                return TransactionResult(rcpts)
            data = await self.command("DATA", t.data_init)
        if not mail.ok:
            if data.code == 354:  # a server that accepted DATA anyway: send an empty body
                self._write(b".\r\n")
                await self._read_reply(t.data)
            return TransactionResult([mail] * len(recipients))
        if data.code != 354:
            # DATA refused: each accepted recipient gets the DATA reply
            return TransactionResult([r if not r.ok else data for r in rcpts])
        if not any(r.ok for r in rcpts):  # RFC 2920 3.1: 354 with no recipient: end it empty
            self._write(b".\r\n")
            await self._drain(t.data)
            await self._read_reply(t.data)
            return TransactionResult(rcpts)
        if then is not None and self.pipelining:
            n_sender, n_rcpts, n_payload, n_utf8, n_8bit = then
            nxt = self._envelope(n_sender, n_rcpts, len(n_payload), n_utf8, n_8bit)
            self._write(payload + ("\r\n".join(nxt) + "\r\nDATA\r\n").encode("utf-8"))
            self._announced = (n_sender, tuple(n_rcpts), len(n_payload))
        else:
            self._write(payload)
        await self._drain(t.data)
        final = await self._read_reply(t.data)  # RFC 5321 4.5.3.2.6: 10 minutes
        self.dirty = self._announced is not None
        self.messages_sent += 1
        return TransactionResult(rcpts, final)

    async def quit(self) -> None:
        if self.writer is None:
            return
        if self._announced is not None:
            # a transaction is open without its content: hang up, so the server drops it
            self.close()
            return
        try:
            self._write(b"QUIT\r\n")
            await asyncio.wait_for(self.writer.drain(), 5)
            await asyncio.wait_for(self._read_reply_nowait(), 5)
        except (SMTPClientError, asyncio.TimeoutError, OSError, ssl.SSLError):
            pass
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except (OSError, RuntimeError):
                pass
            self.writer = None

    @property
    def alive(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()
