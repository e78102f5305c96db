"""Mailbox-level commands (RFC 3501 6.3): CREATE, DELETE, RENAME, SUBSCRIBE, LIST (with
RFC 5258 LIST-EXTENDED and RFC 5819 LIST-STATUS), LSUB, NAMESPACE, ENABLE, STATUS, APPEND;
Dovecot's `subscriptions` file; mailbox names on the wire (RFC 6855 UTF8=ACCEPT).

`MailboxCommands` is mixed into `Session`; it relies on the session's send(), store and
_mailbox_arg(), and never touches the socket.
"""

from __future__ import annotations

import os
import re
from calendar import timegm

from mailtools.imap.parser import ParseError, astring_out, mutf7_decode, mutf7_encode

SPECIAL = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}
SUBSCRIPTIONS = "subscriptions"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_dt_re = re.compile(r"^\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")


class No(Exception):
    """Ends a command with a tagged NO (text may start with a [CODE])."""


class Bad(Exception):
    """Ends a command with a tagged BAD."""


def parse_datetime(s: str) -> float:
    m = _dt_re.match(s)
    if not m:
        raise ParseError("bad date-time")
    d, mon, y, hh, mm, ss, sign, oh, om = m.groups()
    try:
        month = MONTHS.index(mon.capitalize()) + 1
    except ValueError:
        raise ParseError("bad month") from None
    t = timegm((int(y), month, int(d), int(hh), int(mm), int(ss), 0, 0, 0))
    off = (int(oh) * 60 + int(om)) * 60
    return t - off if sign == "+" else t + off


def read_subscriptions(root) -> list[str]:
    """Dovecot's `subscriptions` file: optional 'V\\t2' header and blank line, one name a line
    (version 2 separates levels with TAB)."""
    try:
        with open(os.path.join(root, SUBSCRIPTIONS), "rb") as f:
            lines = f.read().decode("utf-8", "replace").split("\n")
    except FileNotFoundError:
        return []
    v2 = False
    if lines and lines[0].startswith("V\t"):
        v2 = True
        lines = lines[1:]
        if lines and lines[0] == "":
            lines = lines[1:]
    return [ln.replace("\t", "/") if v2 else ln for ln in lines if ln]


def write_subscriptions(root, names: list[str]) -> None:
    body = "V\t2\n\n" + "".join(n.replace("/", "\t") + "\n" for n in names)
    tmp = os.path.join(root, f".{SUBSCRIPTIONS}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(root, SUBSCRIPTIONS))


def pattern_re(ref: str, pat: str) -> re.Pattern:
    """LIST reference + pattern -> regex ('*' anything, '%' anything but '/'), RFC 3501 6.3.8."""
    full = (ref + pat) if ref.endswith("/") or not ref else ref + "/" + pat if pat else ref
    out = []
    for c in full:
        out.append(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c))
    rx = "".join(out)
    if full.upper().startswith("INBOX"):
        rx = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(rx + r"\Z")



class MailboxCommands:
    def cmd_create(self, tag, cur, uid):
        name = self._mailbox_arg(cur, strip_delimiter=True)
        cur.eol()
        if name == "INBOX" or self.store.exists(name):
            raise No("[ALREADYEXISTS] Mailbox already exists")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):  # RFC 3501 6.3.3: create missing parents too
            sub = "/".join(parts[:i])
            if not self.store.exists(sub):
                try:
                    self.store.maildir.create_folder(sub)
                except FileExistsError:
                    pass
                except ValueError as exc:
                    raise No(f"[CANNOT] {exc}") from None
        return "CREATE completed"

    def cmd_delete(self, tag, cur, uid):
        name = self._mailbox_arg(cur)
        cur.eol()
        if name == "INBOX":
            raise No("[CANNOT] INBOX can't be deleted")
        if not self.store.exists(name):
            raise No("[NONEXISTENT] Mailbox doesn't exist")
        if self.folder is not None and self.folder.path == self.store.path_of(name):
            self._unselect()
        self.store.forget(name)
        self.store.maildir.delete_folder(name)
        return "DELETE completed"

    def cmd_rename(self, tag, cur, uid):
        old = self._mailbox_arg(cur)
        new = self._mailbox_arg(cur)
        cur.eol()
        if not self.store.exists(old):
            raise No("[NONEXISTENT] Mailbox doesn't exist")
        if new == "INBOX" or self.store.exists(new):
            raise No("[ALREADYEXISTS] Target mailbox already exists")
        parts = new.split("/")
        for i in range(1, len(parts)):
            sub = "/".join(parts[:i])
            if not self.store.exists(sub):
                self.store.maildir.create_folder(sub)
        self.store.forget(old)
        try:
            self.store.maildir.rename_folder(old, new)
        except ValueError as exc:
            raise No(f"[CANNOT] {exc}") from None
        subs = read_subscriptions(self.store.root)
        if any(s == old or s.startswith(old + "/") for s in subs):
            subs = [new + s[len(old):] if (s == old or s.startswith(old + "/")) else s for s in subs]
            write_subscriptions(self.store.root, subs)
        return "RENAME completed"

    def cmd_subscribe(self, tag, cur, uid, on=True):
        name = self._mailbox_arg(cur)
        cur.eol()
        subs = read_subscriptions(self.store.root)
        if on and name not in subs:
            write_subscriptions(self.store.root, subs + [name])
        elif not on and name in subs:
            write_subscriptions(self.store.root, [s for s in subs if s != name])
        return ("SUBSCRIBE" if on else "UNSUBSCRIBE") + " completed"

    def cmd_unsubscribe(self, tag, cur, uid):
        return self.cmd_subscribe(tag, cur, uid, on=False)

    def _attrs(self, name: str, names: set[str]) -> list[str]:
        attrs = []
        kids = any(n.startswith(name + "/") for n in names)
        attrs.append("\\HasChildren" if kids else "\\HasNoChildren")
        if name in SPECIAL:
            attrs.append(SPECIAL[name])
        return attrs

    def cmd_list(self, tag, cur, uid, lsub=False):
        # RFC 5258 LIST-EXTENDED: LIST [(selection)] ref (pattern | (patterns)) [RETURN (options)]
        cur.sp()
        select: set[str] = set()
        if not lsub and cur.peek() == b"(":
            select = {x.upper() for x in cur.paren_list(lambda c: c.atom())}
            cur.sp()
            if select - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}:
                raise ParseError("unknown LIST selection option")
            if select == {"RECURSIVEMATCH"}:
                raise ParseError("RECURSIVEMATCH needs another selection option")
        ref = self.name_in(cur.astring().decode("utf-8", "replace"))
        cur.sp()
        if not lsub and cur.peek() == b"(":
            pats = [p.decode("utf-8", "replace") for p in cur.paren_list(lambda c: c.list_mailbox())]
        else:
            pats = [cur.list_mailbox().decode("utf-8", "replace")]
        pats = [self.name_in(p) for p in pats]
        ret: set[str] = set()
        status_items: list[str] = []
        if not lsub and cur.take(b" RETURN "):
            def opt(c):
                word = c.atom().upper()
                if word == "STATUS":
                    c.sp()
                    status_items.extend(x.upper() for x in c.paren_list(lambda c2: c2.atom()))
                return word
            ret = set(cur.paren_list(opt))
            if ret - {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}:
                raise ParseError("unknown LIST return option")
        cur.eol()
        word = "LSUB" if lsub else "LIST"
        if pats == [""] and not lsub:
            self.send('* LIST (\\Noselect) "/" ""')
            return "LIST completed"
        rxs = [pattern_re(ref, p) for p in pats]

        def match(n):
            return any(rx.match(n) for rx in rxs)

        names = self.store.list()
        nameset = set(names)
        subs = read_subscriptions(self.store.root) if (lsub or select & {"SUBSCRIBED"} or "SUBSCRIBED" in ret) else []
        subset = set(subs)
        if lsub:
            for n in subs:
                if match(n):
                    attrs = [] if n in nameset or n.upper() == "INBOX" else ["\\Noselect"]
                    self.send(f'* LSUB ({" ".join(attrs)}) "/" ' + self.name_out(n))
            return "LSUB completed"
        if "SUBSCRIBED" in select:
            candidates = [n for n in subs]
        else:
            candidates = list(names)
        seen = set()
        for n in candidates:
            if not match(n):
                continue
            attrs = self._attrs(n, nameset) if n in nameset else ["\\NonExistent"]
            if "SPECIAL-USE" in select and n not in SPECIAL:
                continue
            if n in subset and (select & {"SUBSCRIBED"} or "SUBSCRIBED" in ret):
                attrs.append("\\Subscribed")
            seen.add(n)
            self.send(f'* {word} ({" ".join(attrs)}) "/" ' + self.name_out(n))
            if status_items and n in nameset:
                self._status_line(n, status_items)
        # a '%' pattern also shows parents whose children match (RFC 3501 6.3.8)
        if any("%" in p for p in pats) and not select:
            for n in names:
                parts = n.split("/")
                for i in range(1, len(parts)):
                    p = "/".join(parts[:i])
                    if p not in seen and p not in nameset and match(p):
                        seen.add(p)
                        self.send('* LIST (\\Noselect \\HasChildren) "/" ' + self.name_out(p))
        return "LIST completed"

    def cmd_lsub(self, tag, cur, uid):
        return self.cmd_list(tag, cur, uid, lsub=True)

    def cmd_namespace(self, tag, cur, uid):
        cur.eol()
        self.send('* NAMESPACE (("" "/")) NIL NIL')
        return "NAMESPACE completed"

    def cmd_enable(self, tag, cur, uid):
        cur.sp()
        wanted = [cur.atom().upper()]
        while cur.take(b" "):
            wanted.append(cur.atom().upper())
        cur.eol()
        enabled = []
        if "UTF8=ACCEPT" in wanted and not self.utf8:  # RFC 6855 3
            self.utf8 = True
            enabled.append("UTF8=ACCEPT")
        self.send("* ENABLED" + "".join(" " + e for e in enabled))
        return "ENABLE completed"

    def name_out(self, name: str) -> str:
        """A mailbox name for the wire: modified UTF-7 (as stored), or UTF-8 once enabled."""
        if self.utf8 and "&" in name:
            try:
                u = mutf7_decode(name)
            except ValueError:
                return astring_out(name).decode()
            return '"' + u.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return astring_out(name).decode("utf-8", "replace")

    def name_in(self, name: str) -> str:
        """A mailbox name from the wire -> the stored (modified UTF-7) form."""
        if self.utf8 and name != "INBOX":
            return mutf7_encode(name)
        return name

    def cmd_status(self, tag, cur, uid):
        name = self._mailbox_arg(cur)
        cur.sp()
        items = [x.upper() for x in cur.paren_list(lambda c: c.atom())]
        cur.eol()
        if not items:  # RFC 3501 9: "(" status-att *(SP status-att) ")", at least one item
            raise ParseError("empty status list")
        if not self.store.exists(name):
            raise No("[NONEXISTENT] Mailbox doesn't exist")
        self._status_line(name, items)
        return "STATUS completed"

    def _status_line(self, name: str, items: list[str]) -> None:
        f = self.store.open(name)
        f.refresh()
        vals = []
        for it in items:
            if it == "MESSAGES":
                vals.append(f"MESSAGES {len(f.msgs)}")
            elif it == "RECENT":
                vals.append(f"RECENT {sum(1 for m in f.msgs if m.subdir == 'new')}")
            elif it == "UIDNEXT":
                vals.append(f"UIDNEXT {f.nextuid}")
            elif it == "UIDVALIDITY":
                vals.append(f"UIDVALIDITY {f.uidvalidity}")
            elif it == "UNSEEN":
                vals.append(f"UNSEEN {sum(1 for m in f.msgs if 'S' not in m.flags)}")
            else:
                raise ParseError(f"unknown status item {it}")
        self.send(f"* STATUS {self.name_out(name)} ({' '.join(vals)})")

    def cmd_append(self, tag, cur, uid):
        name = self._mailbox_arg(cur)
        cur.sp()
        flags: list[str] = []
        idate = None
        if cur.peek() == b"(":
            flags = cur.flag_list()
            cur.sp()
        if cur.peek() == b'"':
            idate = parse_datetime(cur.quoted().decode("ascii", "replace"))
            cur.sp()
        if cur.take(b"UTF8 ("):  # RFC 6855 4: APPEND ... UTF8 (~{n}...)
            if not self.utf8:
                raise Bad("UTF8 APPEND needs ENABLE UTF8=ACCEPT")
            cur.expect(b"~")
            data = cur.literal()
            cur.expect(b")")
        else:
            data = cur.literal()
        cur.eol()
        if not self.store.exists(name):
            raise No("[TRYCREATE] Mailbox doesn't exist")
        if "\\recent" in [f.lower() for f in flags]:
            flags = [f for f in flags if f.lower() != "\\recent"]
        f = self.store.open(name)
        f.refresh()
        new_uid = f.append(data, f.letters(flags), idate)
        return f"[APPENDUID {f.uidvalidity} {new_uid}] APPEND completed"
