"""`mx-lookup --check`: talk to every exchanger address and read the domain's mail policy records.

Per address: connect, banner, EHLO (extensions), STARTTLS (TLS version, cipher, certificate
subject/SAN, issuer, expiry, whether the MX name matches, whether the chain is trusted), QUIT;
each step timed and bounded by the timeout, and all addresses probed concurrently, so one dead
exchanger never holds up the report. Policy records: SPF (TXT), DMARC (_dmarc), MTA-STS
(_mta-sts), TLS-RPT (_smtp._tls). Common faults are collected in `faults`.

The result is a plain dict (it is the `checks` field of `--json`):
    {"servers": [{"host", "address", "port", "ok", "banner", "extensions", "starttls",
                  "tls": {"version", "cipher", "subject", "san", "issuer", "not_after",
                          "expired", "name_match", "verified", "verify_error"} | null,
                  "steps": [{"step", "ok", "ms", "detail"}], "error"}],
     "records": {"spf": [...], "dmarc": [...], "mta_sts": [...], "tls_rpt": [...]},
     "faults": [...]}
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time

from mailtools.core import dns as mxdns

# (key, owner name prefix, version tag the TXT record must start with)
POLICY_RECORDS = (
    ("spf", "", "v=spf1"),  # RFC 7208 4.5
    ("dmarc", "_dmarc.", "v=dmarc1"),  # RFC 7489 6.1
    ("mta_sts", "_mta-sts.", "v=stsv1"),  # RFC 8461 3.1
    ("tls_rpt", "_smtp._tls.", "v=tlsrptv1"),  # RFC 8460 3
)


class StepFailed(Exception):
    pass


class VerifyFailed(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    """One SMTP reply (RFC 5321 4.2: multi-line with "NNN-"); returns (code, text lines)."""
    lines: list[str] = []
    while True:
        raw = await reader.readline()
        if not raw:
            raise ConnectionError("connection closed by the server")
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(text) < 3 or not (text[:3].isascii() and text[:3].isdigit()) or (len(text) > 3 and text[3] not in " -"):
            raise ConnectionError(f"not an SMTP reply: {text[:80]!r}")
        lines.append(text[4:])
        if len(text) == 3 or text[3] == " ":
            return int(text[:3]), lines
        if len(lines) > 200:
            raise ConnectionError("reply too long")


class Checker:
    def __init__(self, resolver: mxdns.Resolver, *, port: int = 25, timeout: float = 5.0, helo: str | None = None):
        self.resolver, self.port, self.timeout = resolver, port, timeout
        self.helo = helo or _helo_name()
        self.verify_ctx = ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR
        self.verify_ctx.check_hostname = False  # the name is compared separately (name_match)
        self.plain_ctx = ssl.create_default_context()
        self.plain_ctx.check_hostname = False
        self.plain_ctx.verify_mode = ssl.CERT_NONE

    async def check(self, result: mxdns.MXResult) -> dict:
        targets = [(ex.host, a) for ex in result.exchangers for a in ex.addresses]
        probes = asyncio.gather(*(self.probe(h, a) for h, a in targets))
        if result.status == "nxdomain":
            records, record_faults = {k: [] for k, _, _ in POLICY_RECORDS}, []
            servers = await probes
        else:
            servers, (records, record_faults) = await asyncio.gather(probes, self.records(result.domain))
        return {"servers": servers, "records": records, "faults": _faults(result, servers) + record_faults}

    async def records(self, domain: str) -> tuple[dict, list[str]]:
        async def one(key, prefix, tag):
            try:
                ans = await self.resolver.query(prefix + domain, "TXT")
            except mxdns.DNSTempFail as exc:
                return key, [], f"{key.upper().replace('_', '-')} lookup failed: {exc}"
            texts = [t.decode("utf-8", "replace") for t in ans.records]
            found = [t for t in texts if t.lower() == tag or t.lower().startswith(tag + " ") or t.lower().startswith(tag + ";")]
            return key, sorted(found), None

        done = await asyncio.gather(*(one(*spec) for spec in POLICY_RECORDS))
        records = {key: found for key, found, _ in done}
        faults = [err for _, _, err in done if err]
        failed = {key for key, _, err in done if err}
        if len(records["spf"]) > 1:
            faults.append(f"{len(records['spf'])} SPF records: receivers treat this as an error (RFC 7208 3.2)")
        if not records["spf"] and "spf" not in failed:  # a failed lookup says nothing about the record
            faults.append("no SPF record")
        if len(records["dmarc"]) > 1:
            faults.append(f"{len(records['dmarc'])} DMARC records: receivers ignore them all (RFC 7489 6.6.3)")
        return records, faults

    async def probe(self, host: str, address: str) -> dict:
        res = {"host": host, "address": address, "port": self.port, "ok": False, "banner": None,
               "extensions": [], "starttls": False, "tls": None, "steps": [], "error": None}
        try:
            await self._session(host, address, res, self.verify_ctx)
        except VerifyFailed as exc:
            # The chain is not trusted: look again without verification to read the certificate.
            try:
                await self._session(host, address, res, self.plain_ctx, steps=[])
            except (StepFailed, VerifyFailed):
                pass
            if res["tls"] is not None:
                res["tls"]["verified"] = False
                res["tls"]["verify_error"] = str(exc)
            res["ok"] = res["error"] is None
        except StepFailed:
            pass
        return res

    async def _step(self, steps: list, name: str, coro, detail=None):
        t0 = time.perf_counter()
        try:
            value = await asyncio.wait_for(coro, self.timeout)
        except ssl.SSLCertVerificationError as exc:
            steps.append(_step_doc(name, False, t0, exc.verify_message or str(exc)))
            raise VerifyFailed(exc.verify_message or str(exc)) from None
        except asyncio.TimeoutError:
            steps.append(_step_doc(name, False, t0, f"timed out after {self.timeout:g}s"))
            raise StepFailed(f"{name}: timed out after {self.timeout:g}s") from None
        except (OSError, ConnectionError, ssl.SSLError, EOFError, asyncio.IncompleteReadError, ValueError) as exc:
            steps.append(_step_doc(name, False, t0, str(exc) or type(exc).__name__))
            raise StepFailed(f"{name}: {exc or type(exc).__name__}") from None
        d = detail(value) if detail else None
        steps.append(_step_doc(name, True, t0, d))
        return value

    async def _session(self, host, address, res, ctx, steps=None) -> None:
        steps = res["steps"] if steps is None else steps
        writer = None
        try:
            reader, writer = await self._step(steps, "connect", asyncio.open_connection(address, self.port), lambda _: f"{address} port {self.port}")
            code, lines = await self._step(steps, "banner", _reply(reader), lambda r: f"{r[0]} {r[1][0]}")
            res["banner"] = f"{code} {lines[0]}"
            if code != 220:
                raise StepFailed(f"banner is not 220: {code} {lines[0]}")
            ext = await self._ehlo(steps, reader, writer)
            res["extensions"] = ext
            res["starttls"] = "STARTTLS" in [e.split()[0].upper() for e in ext]
            if res["starttls"]:
                writer.write(b"STARTTLS\r\n")
                code, lines = await self._step(steps, "starttls", _reply(reader), lambda r: f"{r[0]} {r[1][0]}")
                if code != 220:
                    raise StepFailed(f"STARTTLS refused: {code} {lines[0]}")
                sni = None if mxdns._is_ip_literal(host) else host
                await self._step(steps, "tls", writer.start_tls(ctx, server_hostname=sni), lambda _: None)
                res["tls"] = _tls_info(writer.get_extra_info("ssl_object"), host, verified=ctx.verify_mode != ssl.CERT_NONE)
                steps[-1]["detail"] = f"{res['tls']['version']} {res['tls']['cipher']}"
                await self._ehlo(steps, reader, writer, name="ehlo-tls")
            writer.write(b"QUIT\r\n")
            await self._step(steps, "quit", _reply(reader), lambda r: f"{r[0]}")
            res["ok"] = True
        except StepFailed as exc:
            res["error"] = res["error"] or str(exc)
            raise
        finally:
            if writer is not None:
                writer.close()

    async def _ehlo(self, steps, reader, writer, name="ehlo") -> list[str]:
        writer.write(f"EHLO {self.helo}\r\n".encode())
        code, lines = await self._step(steps, name, _reply(reader), lambda r: " ".join(x.split()[0] for x in r[1][1:] if x.split()) or f"{r[0]}")
        if code == 250:
            return [x for x in lines[1:] if x.split()]
        if name == "ehlo" and 500 <= code < 600:  # RFC 5321 4.1.4: an old server may know only HELO
            writer.write(f"HELO {self.helo}\r\n".encode())
            code, lines = await self._step(steps, "helo", _reply(reader), lambda r: f"{r[0]}")
            if code == 250:
                return []
        raise StepFailed(f"{name.upper()} refused: {code} {lines[0]}")


def _step_doc(name: str, ok: bool, t0: float, detail) -> dict:
    return {"step": name, "ok": ok, "ms": round((time.perf_counter() - t0) * 1000, 1), "detail": detail}


def _helo_name() -> str:
    try:
        from mailtools.core import config

        return config.load().hostname
    except Exception:  # noqa: BLE001 - a bad config must not stop a diagnosis
        import socket

        return socket.gethostname() or "localhost"


def _tls_info(sslobj, host: str, verified: bool) -> dict:
    from cryptography import x509

    info = {"version": sslobj.version(), "cipher": sslobj.cipher()[0], "subject": None, "san": [],
            "issuer": None, "not_after": None, "expired": None, "name_match": None,
            "verified": verified, "verify_error": None}
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return info
    cert = x509.load_der_x509_certificate(der)
    info["subject"] = cert.subject.rfc4514_string()
    info["issuer"] = cert.issuer.rfc4514_string()
    not_after = cert.not_valid_after_utc
    info["not_after"] = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc)
    info["expired"] = not_after < now or cert.not_valid_before_utc > now
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        info["san"] = names + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [a.value.lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    info["name_match"] = any(_name_matches(host, n) for n in names)
    return info


def _name_matches(host: str, pattern: str) -> bool:
    """RFC 6125 6.4.3: exact, or a wildcard as the whole left-most label only."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern


def _faults(result: mxdns.MXResult, servers: list[dict]) -> list[str]:
    faults = []
    if result.status == "no-address" and result.exchangers and result.exchangers[0].host == result.domain:
        faults.append("no MX and no A/AAAA records")
    elif result.status in ("no-address", "nxdomain", "null-mx", "tempfail"):
        faults += result.warnings[:1]
    for ex in result.exchangers:
        for w in ex.warnings:
            if "IP address" in w:
                faults.append(f"MX {ex.host} is an IP address literal, not a host name")
            elif "CNAME" in w:
                faults.append(f"MX {ex.host} points at an alias (CNAME), not a host name")
            elif not ex.addresses:
                faults.append(f"MX {ex.host}: {w}")
    for s in servers:
        where = f"{s['host']} [{s['address']}]:{s['port']}"
        if s["error"]:
            faults.append(f"{where}: {s['error']}")
        elif not s["starttls"]:
            faults.append(f"{where}: STARTTLS missing")
        tls = s["tls"]
        if tls:
            if tls["expired"]:
                faults.append(f"{where}: certificate expired (not after {tls['not_after']})")
            if tls["name_match"] is False:
                faults.append(f"{where}: certificate does not match {s['host']}")
            if tls["verified"] is False:
                faults.append(f"{where}: certificate not trusted ({tls['verify_error']})")
    if servers and not any(s["ok"] for s in servers):
        faults.append("no exchanger completed an SMTP session")
    return faults


def plain_lines(checks: dict) -> list[str]:
    """Line-oriented report: `check HOST ADDRESS:PORT STEP ok|fail MS DETAIL`,
    `tls HOST ADDRESS:PORT KEY=VALUE...`, `record KIND TEXT`, `fault TEXT`."""
    out = []
    for s in checks["servers"]:
        where = f"{s['host']} {s['address']}:{s['port']}"
        for st in s["steps"]:
            detail = f" {st['detail']}" if st["detail"] else ""
            out.append(f"check {where} {st['step']} {'ok' if st['ok'] else 'fail'} {st['ms']}ms{detail}")
        tls = s["tls"]
        if tls:
            fields = [("version", tls["version"]), ("cipher", tls["cipher"]), ("subject", tls["subject"]),
                      ("san", ",".join(tls["san"]) or "-"), ("issuer", tls["issuer"]), ("not_after", tls["not_after"]),
                      ("expired", _yn(tls["expired"])), ("name_match", _yn(tls["name_match"])), ("verified", _yn(tls["verified"]))]
            out.append(f"tls {where} " + " ".join(f"{k}={_quote(v)}" for k, v in fields))
    for key, _, _ in POLICY_RECORDS:
        values = checks["records"].get(key) or ["-"]
        out.extend(f"record {key.replace('_', '-')} {v}" for v in values)
    out.extend(f"fault {f}" for f in checks["faults"])
    return out


def _quote(v) -> str:
    """A value for a KEY=VALUE field: double-quoted (shell style) when it has spaces."""
    v = "-" if v is None else str(v)
    if not v or any(c in v for c in ' "\\\t'):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


def _yn(v) -> str:
    return "-" if v is None else ("yes" if v else "no")


def rich_view(checks: dict) -> list:
    from rich.table import Table
    from rich.text import Text

    parts = []
    table = Table(title="SMTP", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("Host", "Address", "Banner", "Extensions", "TLS", "Certificate", "Steps (ms)"):
        table.add_column(col)
    for s in checks["servers"]:
        tls = s["tls"]
        if tls:
            good = not tls["expired"] and tls["name_match"] and tls["verified"]
            cert = Text(f"{tls['subject']}\nissuer {tls['issuer']}\nuntil {tls['not_after']}\n"
                        f"match {_yn(tls['name_match'])}, trusted {_yn(tls['verified'])}", style="green" if good else "red")
            tls_text = Text(f"{tls['version']}\n{tls['cipher']}")
        else:
            cert = Text("-")
            tls_text = Text("none", style="red") if s["banner"] else Text("-")
        steps = Text(" ".join(f"{st['step']}={st['ms']}" for st in s["steps"]), style="green" if s["ok"] else "red")
        exts = " ".join(e.split()[0] for e in s["extensions"])
        table.add_row(s["host"], f"{s['address']}:{s['port']}", s["banner"] or Text(s["error"] or "-", style="red"), exts, tls_text, cert, steps)
    if checks["servers"]:
        parts.append(table)
    recs = Table(title="Policy records", title_justify="left", show_edge=False, pad_edge=False, show_header=False)
    recs.add_column("kind")
    recs.add_column("value")
    for key, _, _ in POLICY_RECORDS:
        values = checks["records"].get(key) or []
        recs.add_row(key.replace("_", "-").upper(), "\n".join(values) if values else Text("none", style="dim"))
    parts.append(recs)
    for f in checks["faults"]:
        parts.append(Text(f"  fault: {f}", style="red"))
    return parts
