"""Listener addresses shared by every server (smtpd, imap, pop3): parse `HOST:PORT`, tell a
loopback socket (where plaintext AUTH/LOGIN may be allowed), and name what was bound."""

from __future__ import annotations

import ipaddress


def parse_listen(spec: str, default_host: str = "127.0.0.1") -> tuple[str | None, int]:
    """'127.0.0.1:587' | '[::1]:587' | ':587' | '587' -> (host, port); ValueError if bad.
    A host of '' or '*' means every address (None)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"listen address needs HOST:PORT, not {spec!r}")
        port = rest[1:]
    elif ":" in spec:
        host, _, port = spec.rpartition(":")
    else:
        host, port = default_host, spec
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address needs HOST:PORT (port 1-65535), not {spec!r}")
    if host in ("", "*"):
        host = None
    return host, int(port)


def is_loopback(sockname) -> bool:
    """True for a socket address on 127.0.0.0/8 or ::1 (zone ids ignored)."""
    try:
        return ipaddress.ip_address(str(sockname[0]).split("%")[0]).is_loopback
    except (ValueError, TypeError, IndexError):
        return False


def bound_addresses(servers) -> list[str]:
    """'host:port' for every listening socket (for 'listening on ...' lines)."""
    out = []
    for server in servers:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out
