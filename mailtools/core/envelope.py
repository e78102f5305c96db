"""The queue envelope: a small, versioned, plain-text file a person can read with `cat`.

Envelope format (``cat`` it)::

    mailtools-envelope 1
    id: 0005F4E3A2B1C7D3E9F0A1B2C
    queued-at: 2026-11-28T15:47:01.123456Z
    sender: alice@example.test          (empty for the null sender <>)
    size: 1234
    body: 8BITMIME                      (optional: 7BIT | 8BITMIME | BINARYMIME)
    smtputf8: yes                       (optional)
    ret: HDRS                           (optional DSN RET: FULL | HDRS)
    envid: QQ123                        (optional DSN ENVID, xtext as given)
    warned: yes                         (optional: a delay warning was sent)
    rcpt: queued attempts=0 next=- notify=- orcpt=- to=bob@example.net reply=
    rcpt: deferred attempts=2 next=2026-11-28T16:17:01Z notify=- orcpt=- to=c@x.test reply=451 4.7.1 later

One ``rcpt:`` line per recipient; ``reply=`` is always last and takes the rest of the line.
Values escape '%', whitespace and unprintable characters as %XX (UTF-8 bytes), so a field is
always one word and a line one line. Unknown ``key: value`` lines are kept (Entry.meta) and
written back unchanged. A line added to the format gets a new key; a meaning that changes
gets a new version number in the first line (readers refuse versions they do not know).

Only `time` is imported: the sendmail path loads this module.
"""

from __future__ import annotations

import time

FORMAT_VERSION = 1
STATES = ("queued", "deferred", "sent", "bounced")
FINAL_STATES = ("sent", "bounced")


def _escape(value: str, keep_space: bool = False) -> str:
    """Percent-encode (as UTF-8 bytes) '%', whitespace and anything unprintable, so a value
    never splits a line or a field; other characters (UTF-8 addresses too) stay readable."""
    # the usual value needs nothing: among printable characters only ' ' is whitespace
    if "%" not in value and value.isprintable() and (keep_space or " " not in value):
        return value
    out = []
    for ch in value:
        if ch == "%" or (not ch.isprintable() or ch.isspace()) and not (keep_space and ch == " "):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")))
        else:
            out.append(ch)
    return "".join(out)


def _optional(value: str | None) -> str:
    """An optional field: '-' when absent; a value that is itself '-' is written %2D."""
    if not value:
        return "-"
    return "%2D" if value == "-" else _escape(value)


def _unescape(value: str) -> str:
    if "%" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%" and _ishex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _ishex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)


def format_time(t: float, fraction: bool = False) -> str:
    """Epoch seconds -> '2026-11-28T15:47:01Z' (UTC)."""
    tm = time.gmtime(t)
    s = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    if fraction:
        s += f".{int((t % 1) * 1_000_000):06d}"
    return s + "Z"


def parse_time(s: str) -> float:
    """'2026-11-28T15:47:01[.123456]Z' -> epoch seconds. Raises ValueError."""
    if not s.endswith("Z") or len(s) < 20 or s[4] != "-" or s[7] != "-" or s[10] != "T":
        raise ValueError(f"not a UTC time: {s!r}")
    y, mo, d = int(s[0:4]), int(s[5:7]), int(s[8:10])
    hh, mm, ss = int(s[11:13]), int(s[14:16]), int(s[17:19])
    frac = float("0" + s[19:-1]) if len(s) > 20 else 0.0
    # days from civil (Howard Hinnant's algorithm), proleptic Gregorian
    y2 = y - (mo <= 2)
    era = y2 // 400
    yoe = y2 - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss + frac



class Recipient:
    """One recipient with its own delivery state."""

    __slots__ = ("address", "state", "attempts", "next_attempt", "last_reply", "notify", "orcpt")

    def __init__(self, address: str, state: str = "queued", attempts: int = 0,
                 next_attempt: float | None = None, last_reply: str = "",
                 notify: str | None = None, orcpt: str | None = None):
        self.address = address
        self.state = state
        self.attempts = attempts
        self.next_attempt = next_attempt
        self.last_reply = last_reply
        self.notify = notify  # DSN NOTIFY (e.g. "SUCCESS,FAILURE", "NEVER") or None
        self.orcpt = orcpt  # DSN ORCPT ("rfc822;addr") or None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict:
        return {
            "address": self.address,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": None if self.next_attempt is None else int(self.next_attempt),
            "last_reply": self.last_reply or None,
        }

    def _line(self) -> str:
        nxt = "-" if self.next_attempt is None else format_time(self.next_attempt)
        return (
            f"rcpt: {self.state} attempts={self.attempts} next={nxt}"
            f" notify={_optional(self.notify)} orcpt={_optional(self.orcpt)}"
            f" to={_escape(self.address)} reply={_escape(self.last_reply, keep_space=True)}"
        )

    @classmethod
    def _parse(cls, value: str) -> "Recipient":
        head, sep, reply = value.partition(" reply=")
        if not sep:
            raise ValueError("rcpt line without reply=")
        parts = [p for p in head.split(" ") if p]
        if not parts or parts[0] not in STATES:
            raise ValueError(f"bad recipient state in {value!r}")
        fields = {}
        for p in parts[1:]:
            k, eq, v = p.partition("=")
            if not eq:
                raise ValueError(f"bad recipient field {p!r}")
            fields[k] = v
        if "to" not in fields:
            raise ValueError("rcpt line without to=")
        nxt = fields.get("next", "-")
        notify = fields.get("notify", "-")
        orcpt = fields.get("orcpt", "-")
        return cls(
            _unescape(fields["to"]),
            parts[0],
            int(fields.get("attempts", "0")),
            None if nxt == "-" else parse_time(nxt),
            _unescape(reply),
            None if notify == "-" else _unescape(notify),
            None if orcpt == "-" else _unescape(orcpt),
        )

    def __repr__(self) -> str:
        return f"Recipient({self.address!r}, {self.state!r}, attempts={self.attempts})"


_DSN_KEYS = ("body", "smtputf8", "ret", "envid")


class Entry:
    """A queue entry: the envelope plus where it lives now.

    `.dsn` is a dict with any of: "ret" ("FULL"|"HDRS"), "envid" (str), "body" ("7BIT"|
    "8BITMIME"|"BINARYMIME"), "smtputf8" (bool). Per-recipient NOTIFY/ORCPT live on Recipient.
    `.state_dir` is "new", "active" or "hold"; `.held` is true in hold/.
    """

    __slots__ = ("id", "sender", "recipients", "queued_at", "size", "dsn", "warned", "meta",
                 "state_dir", "path", "claimed_by")

    def __init__(self, qid: str, sender: str, recipients: list[Recipient], queued_at: float,
                 size: int, dsn: dict | None = None, warned: bool = False):
        self.id = qid
        self.sender = sender
        self.recipients = recipients
        self.queued_at = queued_at
        self.size = size
        self.dsn = dict(dsn or {})
        self.warned = warned
        self.meta: dict[str, str] = {}
        self.state_dir = "new"
        self.path: str | None = None  # the entry directory, as last seen
        self.claimed_by: str | None = None  # "PID.HOST" in active/

    @property
    def held(self) -> bool:
        return self.state_dir == "hold"

    def pending(self) -> list[Recipient]:
        """Recipients still to deliver (queued or deferred)."""
        return [r for r in self.recipients if not r.final]

    def due(self, now: float | None = None) -> list[Recipient]:
        """Pending recipients whose next attempt has come."""
        now = time.time() if now is None else now
        return [r for r in self.pending() if r.next_attempt is None or r.next_attempt <= now]

    @property
    def done(self) -> bool:
        return all(r.final for r in self.recipients)

    def to_json(self) -> dict:
        """The queue listing object of DESIGN.md (times as integer epoch seconds)."""
        return {
            "id": self.id,
            "sender": self.sender,
            "size": self.size,
            "queued_at": int(self.queued_at),
            "recipients": [r.to_json() for r in self.recipients],
        }

    def serialise(self) -> bytes:
        lines = [
            f"mailtools-envelope {FORMAT_VERSION}",
            f"id: {self.id}",
            f"queued-at: {format_time(self.queued_at, fraction=True)}",
            f"sender: {_escape(self.sender)}",
            f"size: {self.size}",
        ]
        for key in _DSN_KEYS:
            value = self.dsn.get(key)
            if value is None or value is False:
                continue
            if value is True:
                value = "yes"
            lines.append(f"{key}: {_escape(str(value))}")
        if self.warned:
            lines.append("warned: yes")
        for key, value in self.meta.items():
            lines.append(f"{key}: {value}")
        lines.extend(r._line() for r in self.recipients)
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, where: str = "envelope") -> "Entry":
        """Parse an envelope file; raises ValueError naming the line that is wrong."""
        text = data.decode("utf-8", errors="surrogateescape")
        lines = text.split("\n")
        if not lines or not lines[0].startswith("mailtools-envelope "):
            raise ValueError(f"{where}: not a mailtools envelope")
        version = lines[0].split(" ", 1)[1].strip()
        if version != str(FORMAT_VERSION):
            raise ValueError(f"{where}: envelope version {version} not understood")
        fields: dict[str, str] = {}
        meta: dict[str, str] = {}
        rcpts: list[Recipient] = []
        for n, line in enumerate(lines[1:], start=2):
            if not line:
                continue
            key, sep, value = line.partition(": ")
            if not sep:
                key, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"{where}:{n}: not 'key: value'")
            try:
                if key == "rcpt":
                    rcpts.append(Recipient._parse(value))
                elif key in ("id", "queued-at", "sender", "size", "warned", *_DSN_KEYS):
                    fields[key] = value
                else:
                    meta[key] = value
            except ValueError as exc:
                raise ValueError(f"{where}:{n}: {exc}") from None
        try:
            entry = cls(
                fields["id"],
                _unescape(fields.get("sender", "")),
                rcpts,
                parse_time(fields["queued-at"]),
                int(fields.get("size", "0")),
                warned=fields.get("warned") == "yes",
            )
        except KeyError as exc:
            raise ValueError(f"{where}: missing {exc.args[0]!r}") from None
        for key in _DSN_KEYS:
            if key in fields:
                v = _unescape(fields[key])
                entry.dsn[key] = (v == "yes") if key == "smtputf8" else v
        entry.meta = meta
        return entry

    def __repr__(self) -> str:
        return f"Entry({self.id!r}, {self.sender!r}, {self.recipients!r}, {self.state_dir})"
