"""Mail addresses: split, normalise, check. Light (no imports beyond the standard library core)."""

from __future__ import annotations


def split_address(address: str) -> tuple[str, str]:
    """'Alice@Example.TEST' -> ('Alice', 'example.test'); the domain is after the last '@'.

    The local part keeps its case (RFC 5321 2.4); the domain is case-folded and loses a
    trailing dot. Raises ValueError when there is no domain.
    """
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"not a full address: {address!r}")
    return local, domain.lower().rstrip(".")


def normalise(address: str) -> str:
    """The canonical form used for users and Maildir paths: local@domain, domain lower-case."""
    local, domain = split_address(address)
    return f"{local}@{domain}"


def is_safe_envelope(address: str) -> bool:
    """An envelope address we will write to disk or pass on: no CR/LF/NUL, no leading '-'."""
    return not (
        address.startswith("-")
        or any(c in address for c in "\r\n\0")
        or len(address) > 998
    )
