"""Replay tests/transcripts/imap_*.txt against the sans-I/O session (no sockets).

Format: `C: line` is sent (CRLF added); `S: line` must be the next line the server sent, where
`<*>` matches any text. `# messages: N` delivers N messages to alice before the session starts;
`# user: ADDR` adds another user. Everything the server sends must be expected.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imap_helpers import PASSWORD, deliver, make_root, message

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("imap_*.txt"))


def _load(path: Path):
    steps, meta = [], {"messages": 0, "users": ["alice@example.test"], "secure": False, "loopback": True}
    for raw in path.read_text().splitlines():
        if raw.startswith("# messages:"):
            meta["messages"] = int(raw.split(":", 1)[1])
        elif raw.startswith("# user:"):
            meta["users"].append(raw.split(":", 1)[1].strip())
        elif raw.startswith("# remote"):
            meta["loopback"] = False
        elif raw.startswith(("C: ", "S: ")) or raw in ("C:", "S:"):
            steps.append((raw[0], raw[3:]))
    return steps, meta


def _matches(pattern: str, line: str) -> bool:
    rx = ".*".join(re.escape(p) for p in pattern.split("<*>"))
    return re.fullmatch(rx, line, re.S) is not None


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_transcript(path, tmp_path):
    from mailtools.core import config
    from mailtools.imap.session import Session

    steps, meta = _load(path)
    root = make_root(tmp_path, users=meta["users"])
    cfg = config.load(str(tmp_path / "mailtools.toml"), reload=True)
    for i in range(meta["messages"]):
        deliver(root, message(i + 1, body=f"body of message {i + 1}\nsecond line\n"))
    sess = Session(cfg, loopback=meta["loopback"], tls_available=True)
    pending = sess.greeting().decode().split("\r\n")[:-1]
    for kind, text in steps:
        if kind == "C":
            assert not pending, f"{path.name}: server said more than expected: {pending!r}"
            out = b"".join(x for x in sess.feed(text.replace("$PASSWORD", PASSWORD).encode() + b"\r\n")
                           if isinstance(x, bytes))
            pending = out.decode("utf-8", "replace").split("\r\n")[:-1]
        else:
            assert pending, f"{path.name}: expected {text!r}, server said nothing more"
            line = pending.pop(0)
            assert _matches(text, line), f"{path.name}: expected {text!r}, got {line!r}"
    assert not pending, f"{path.name}: unexpected {pending!r}"
