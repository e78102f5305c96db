"""The sans-I/O IMAP session: bytes in, replies and actions out (RFC 3501 + extensions).

`Session.feed(data)` returns a list of bytes (to send, in order) and action objects for the
transport (StartTLS, Delay, Close, CheckPassword, Resume). Which commands each state allows is
the STATE table; what runs them is the COMMANDS table. IDLE and AUTHENTICATE switch the reader
to plain lines.

Long commands (FETCH, SEARCH) are generators that yield every so often. A `cooperative`
session (the asyncio server's) stops there with a Resume action: the transport sends what is
ready, lets other connections run, and calls resume(); pipelined commands wait meanwhile. Else
the command runs to its end at once, as in the transcript tests.
"""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_left, bisect_right
from types import GeneratorType

from mailtools.imap import fetch as fetchmod
from mailtools.imap import search as searchmod
from mailtools.imap.parser import (
    Command, CommandReader, Continue, Cursor, Limits, ParseError, Refused, in_ranges, parse_seqset, tag_of,
)
from mailtools.imap.mailbox import (
    SPECIAL, SUBSCRIPTIONS, Bad, MailboxCommands, No, read_subscriptions, write_subscriptions,
)
from mailtools.imap.store import SYSTEM_FLAGS, Folder, Gone, Store


class StartTLS:
    """Upgrade the connection now (the OK was sent before this action)."""


class Close:
    """Close the connection after sending what came before."""


class CheckPassword:
    """Verify a password off the event loop, then call Session.finish_login(ok)."""

    def __init__(self, users, user: str, password: str):
        self.users, self.user, self.password = users, user, password


class Delay:
    def __init__(self, seconds: float):
        self.seconds = seconds


class Resume:
    """A command paused: send what came before, let others run, then call Session.resume()."""


FETCH_CHUNK = 256 * 1024  # a paused FETCH hands over at least this much output
FETCH_SLICE = 0.01  # ... or this many seconds of work


NOT_AUTH, AUTH, SELECTED, LOGOUT = "not-authenticated", "authenticated", "selected", "logout"
ANY = {NOT_AUTH, AUTH, SELECTED}
AUTHED = {AUTH, SELECTED}

# RFC 3501 section 3: which commands each state allows (plus the extensions we advertise).
STATE = {
    "CAPABILITY": ANY, "NOOP": ANY, "LOGOUT": ANY, "ID": ANY,
    "STARTTLS": {NOT_AUTH}, "AUTHENTICATE": {NOT_AUTH}, "LOGIN": {NOT_AUTH},
    "SELECT": AUTHED, "EXAMINE": AUTHED, "CREATE": AUTHED, "DELETE": AUTHED, "RENAME": AUTHED,
    "SUBSCRIBE": AUTHED, "UNSUBSCRIBE": AUTHED, "LIST": AUTHED, "LSUB": AUTHED, "STATUS": AUTHED,
    "APPEND": AUTHED, "NAMESPACE": AUTHED, "ENABLE": AUTHED, "IDLE": AUTHED,
    "CHECK": {SELECTED}, "CLOSE": {SELECTED}, "UNSELECT": {SELECTED}, "EXPUNGE": {SELECTED},
    "SEARCH": {SELECTED}, "FETCH": {SELECTED}, "STORE": {SELECTED}, "COPY": {SELECTED},
    "MOVE": {SELECTED}, "UID": {SELECTED},
}

BASE_CAPS = ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN SPECIAL-USE"
             " LIST-EXTENDED LIST-STATUS UTF8=ACCEPT")


class Session(MailboxCommands):
    def __init__(self, cfg, *, users=None, secure: bool = False, loopback: bool = False,
                 tls_available: bool = False, limits: Limits | None = None):
        self.cfg = cfg
        self.users = users
        self.secure = secure
        self.loopback = loopback
        self.tls_available = tls_available
        self.limits = limits or Limits()
        self.reader = CommandReader(self.limits)
        self.state = NOT_AUTH
        self.user: str | None = None
        self.store: Store | None = None
        self.folder: Folder | None = None
        self.readonly = False
        self.view: list[int] = []  # sequence number - 1 -> uid
        self.seen_generation = -1  # the folder generation this session has fully reported
        self.vflags: dict[int, str] = {}
        self.recent: set[int] = set()
        self.auth_tag: str | None = None
        self.idle_tag: str | None = None
        self.out: list = []
        self.closed = False
        self.failures = 0
        self.utf8 = False  # ENABLE UTF8=ACCEPT (RFC 6855)
        self._users = users
        self.threaded_auth = False  # the transport verifies passwords in a thread
        self.cooperative = False  # long commands pause with Resume (the transport resumes them)
        self.work = None  # the paused command (a generator), while cooperative
        self.pending_login: tuple | None = None  # (tag, user) while a password is checked

    # -- plumbing -----------------------------------------------------------------------
    def greeting(self) -> bytes:
        return b"* OK [CAPABILITY " + self.capabilities().encode() + b"] mailtools IMAP ready\r\n"

    def capabilities(self) -> str:
        caps = BASE_CAPS
        if self.tls_available and not self.secure and self.state == NOT_AUTH:
            caps += " STARTTLS"
        if self.state == NOT_AUTH:
            caps += " AUTH=PLAIN" if self.plain_ok() else " LOGINDISABLED"
        return caps

    def plain_ok(self) -> bool:
        # RFC 3501 6.2.3 / RFC 8314: no cleartext passwords off loopback unless configured.
        return self.secure or self.loopback or bool(self.cfg.imap.allow_plaintext_auth)

    def send(self, line) -> None:
        self.out.append(line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape") + b"\r\n")

    def feed(self, data: bytes) -> list:
        self.out = []
        self.reader.push(data)
        if self.work is None:  # else it waits for the paused command
            self._run()
        self._flush_folder()
        out, self.out = self.out, []
        return out

    def resume(self) -> list:
        """Continue the paused command (the transport's answer to Resume), then what was
        pipelined after it."""
        self.out = []
        if self.work is not None:
            self._continue()
            if self.work is None and not self.closed:
                self._run()
        self._flush_folder()
        out, self.out = self.out, []
        return out

    def _continue(self) -> None:
        """Run the current command until it ends, or until it yields in a cooperative session."""
        gen = self.work
        while True:
            try:
                next(gen)
            except StopIteration:
                self.work = None
                return
            if self.cooperative:
                self.out.append(Resume())
                return

    def finish_login(self, ok: bool) -> list:
        """The transport's answer to CheckPassword; go on with what was pipelined."""
        self.out = []
        tag, user = self.pending_login
        self.pending_login = None
        try:
            text = self._login_result(user, ok)
            self.send(f"{tag} OK {text}")
        except No as exc:
            self.send(f"{tag} NO {exc}")
        self._run()
        self._flush_folder()
        out, self.out = self.out, []
        return out

    def _run(self) -> None:
        """Handle the reader's events one at a time: IDLE/AUTHENTICATE switch how the next
        line is read, and STARTTLS or a pending login stop reading (the rest waits)."""
        for ev in self.reader.events():
            if isinstance(ev, Continue):
                self.send("+ Ready for literal data")
            elif isinstance(ev, Refused):
                if ev.fatal:
                    self.send(f"* BYE {ev.text}")
                    self.out.append(Close())
                    self.closed = True
                else:
                    self.send(f"{ev.tag} BAD {ev.text}")
            elif isinstance(ev, Command):
                self.command(ev.data)
                if self.out and isinstance(self.out[-1], StartTLS):
                    self.reader.reset()  # RFC 3501 6.2.1: pipelined plaintext is discarded
                    return
            if self.closed or self.pending_login is not None or self.work is not None:
                return

    def _flush_folder(self):
        if self.folder is not None and self.work is None:  # a paused command flushes at its end
            self.folder.flush(background=self.cooperative)

    def poll(self) -> list:
        """While idling: report changes to the selected mailbox (called by the transport)."""
        self.out = []
        if self.idle_tag and self.state == SELECTED:
            try:
                self.sync(expunge_ok=True)
            except Gone:
                self.send("* BYE The selected mailbox was deleted")
                self.out.append(Close())
                self.closed = True
        self._flush_folder()
        out, self.out = self.out, []
        return out

    def tls_started(self) -> None:
        self.secure = True

    # -- dispatch -----------------------------------------------------------------------
    def command(self, data: bytes) -> None:
        if self.auth_tag is not None:
            return self.auth_response(data)
        if self.idle_tag is not None:
            tag, self.idle_tag = self.idle_tag, None
            self.reader.raw_lines = False
            if data.strip().upper() == b"DONE":
                self.send(f"{tag} OK IDLE terminated")
            else:
                self.send(f"{tag} BAD Expected DONE")
            return
        tag = tag_of(data)
        cur = Cursor(data, self.limits)
        try:
            tag = cur.atom()
            if "+" in tag:
                raise ParseError("bad tag")
            cur.sp()
            name = cur.atom().upper()
        except ParseError:  # RFC 3501 7.1.3: untagged BAD when the line has no valid tag
            self.send(f"{tag_of(data)} BAD Error in IMAP command: missing tag or command")
            return
        uid = False
        if name == "UID" and self.state == SELECTED:
            try:
                cur.sp()
                name = cur.atom().upper()
            except ParseError:
                self.send(f"{tag} BAD UID needs a command")
                return
            if name not in ("FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"):
                self.send(f"{tag} BAD Unknown UID command")
                return
            uid = True
        allowed = STATE.get(name)
        if allowed is None:
            self.send(f"{tag} BAD Unknown command {name[:40]}")
            return
        if self.state not in allowed:
            self.send(f"{tag} BAD {name} not allowed now")
            return
        handler = getattr(self, "cmd_" + name.lower())
        self.work = self._execute(tag, name, uid, handler, cur)
        self._continue()

    def _execute(self, tag, name, uid, handler, cur):
        """Run one command's handler (a generator when it can pause) and send its tagged reply."""
        try:
            text = handler(tag, cur, uid)
            if isinstance(text, GeneratorType):
                text = yield from text
        except ParseError as exc:
            self.send(f"{tag} BAD Error in arguments: {exc}")
            return
        except No as exc:
            self.send(f"{tag} NO {exc}")
            return
        except Bad as exc:
            self.send(f"{tag} BAD {exc}")
            return
        except Gone:
            self.send("* BYE The selected mailbox was deleted")
            self.out.append(Close())
            self.closed = True
            return
        except OSError as exc:
            self.send(f"{tag} NO [SERVERBUG] {exc.strerror or 'I/O error'}")
            return
        if text is not None:
            if self.state == SELECTED and name not in ("CLOSE", "UNSELECT", "SELECT", "EXAMINE", "LOGOUT", "IDLE"):
                self.sync(expunge_ok=name not in ("FETCH", "STORE", "SEARCH") or uid)
            self.send(f"{tag} OK {text}")

    # -- any state ------------------------------------------------------------------------
    def cmd_capability(self, tag, cur, uid):
        cur.eol()
        self.send("* CAPABILITY " + self.capabilities())
        return "CAPABILITY completed"

    def cmd_noop(self, tag, cur, uid):
        cur.eol()
        return "NOOP completed"

    def cmd_logout(self, tag, cur, uid):
        cur.eol()
        self.send("* BYE Logging out")
        self.send(f"{tag} OK LOGOUT completed")
        self.out.append(Close())
        self.closed = True
        self.state = LOGOUT
        return None

    def cmd_id(self, tag, cur, uid):
        cur.sp()
        if not cur.take(b"NIL"):
            cur.paren_list(lambda c: c.nstring_or_astring())
        cur.eol()
        self.send('* ID ("name" "mailtools")')
        return "ID completed"

    # -- not authenticated ----------------------------------------------------------------
    def cmd_starttls(self, tag, cur, uid):
        cur.eol()
        if not self.tls_available or self.secure:
            raise Bad("STARTTLS not available")
        self.send(f"{tag} OK Begin TLS negotiation now")
        self.out.append(StartTLS())
        return None

    def _login_checks(self):
        if not self.plain_ok():
            raise No("[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections")

    def cmd_login(self, tag, cur, uid):
        cur.sp()
        user = cur.astring()
        cur.sp()
        password = cur.astring()
        cur.eol()
        self._login_checks()
        return self._authenticate(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"), tag)

    def cmd_authenticate(self, tag, cur, uid):
        cur.sp()
        mech = cur.atom().upper()
        initial = None
        if cur.take(b" "):
            initial = cur._re(re.compile(rb"[A-Za-z0-9+/=]+"), "base64").decode()
        cur.eol()
        if mech != "PLAIN":
            raise No("Unsupported authentication mechanism")
        self._login_checks()
        if initial is None:
            self.auth_tag = tag
            self.reader.raw_lines = True
            self.send("+ ")
            return None
        return self._sasl_plain(initial, tag)

    def auth_response(self, data: bytes) -> None:
        tag, self.auth_tag = self.auth_tag, None
        self.reader.raw_lines = False
        line = data.strip().decode("ascii", "replace")
        if line == "*":
            self.send(f"{tag} BAD Authentication cancelled")
            return
        try:
            text = self._sasl_plain(line, tag)
        except No as exc:
            self.send(f"{tag} NO {exc}")
            return
        if text is not None:
            self.send(f"{tag} OK {text}")

    def _sasl_plain(self, b64: str, tag: str) -> str | None:
        from mailtools.core.auth import decode_sasl_plain

        try:
            authzid, authcid, password = decode_sasl_plain(b64 if b64 != "=" else "")
        except ValueError:
            raise No("[AUTHENTICATIONFAILED] Malformed SASL PLAIN response") from None
        if authzid and authzid != authcid:
            raise No("[AUTHORIZATIONFAILED] Proxy authentication is not supported")
        return self._authenticate(authcid, password, tag)

    def _authenticate(self, user: str, password: str, tag: str) -> str | None:
        users = self.users
        if users is None:
            from mailtools.core.auth import load_users

            users = load_users(self.cfg)
        self._users = users
        if self.threaded_auth:
            self.pending_login = (tag, user)
            self.out.append(CheckPassword(users, user, password))
            return None
        try:
            ok = users.verify(user, password)
        except ValueError:
            ok = False
        return self._login_result(user, ok)

    def _login_result(self, user: str, ok: bool) -> str:
        path = None
        if ok:
            # the name as written in the users file: 'ALICE@example.test ' and
            # 'alice@example.test' are one user with one Maildir
            rec = getattr(self._users, "get", lambda u: None)(user)
            if rec is not None and getattr(rec, "name", None):
                user = rec.name
            try:
                path = self.cfg.maildir_for(user)
            except ValueError:
                ok = False
        if not ok:
            self.failures += 1
            self.out.append(Delay(float(self.cfg.auth.fail_delay) * min(self.failures, 5)))
            raise No("[AUTHENTICATIONFAILED] Authentication failed")
        self.user = user
        self.store = Store(path)
        if self.store.ensure_inbox() or not os.path.exists(os.path.join(path, SUBSCRIPTIONS)):
            self._new_user_folders()
        self.state = AUTH
        return f"[CAPABILITY {self.capabilities()}] Logged in"

    def _new_user_folders(self):
        """RFC 6154: a new user gets Sent, Drafts, Trash, Junk and Archive (subscribed)."""
        subs = read_subscriptions(self.store.root)
        for name in SPECIAL:
            if not self.store.exists(name):
                try:
                    self.store.maildir.create_folder(name)
                except FileExistsError:
                    pass
            if name not in subs:
                subs.append(name)
        write_subscriptions(self.store.root, subs)

    # -- authenticated --------------------------------------------------------------------
    def _mailbox_arg(self, cur, strip_delimiter: bool = False) -> str:
        cur.sp()
        name = self.name_in(cur.mailbox())
        if strip_delimiter:  # RFC 3501 6.3.3: CREATE 'a/' creates 'a'
            name = name.rstrip("/")
        if len(name.encode()) > 512:
            raise No("[CANNOT] Mailbox name too long")
        try:
            self.store.path_of(name)
        except ValueError as exc:
            raise No(f"[CANNOT] Invalid mailbox name: {exc}") from None
        return name

    def cmd_select(self, tag, cur, uid, readonly=False):
        name = self._mailbox_arg(cur)
        cur.eol()
        self._unselect()
        if not self.store.exists(name):
            raise No("[NONEXISTENT] Mailbox doesn't exist")
        folder = self.store.open(name)
        folder.refresh()
        self.readonly = readonly
        self.folder = folder
        self.state = SELECTED
        recent = set()
        if not readonly:
            for m in folder.msgs:
                if m.subdir == "new":
                    recent.add(m.uid)
                    folder.set_flags(m, m.flags)  # new/ -> cur/ (the client has seen it arrive)
        self.recent = recent
        self.view = [m.uid for m in folder.msgs]
        self.vflags = {m.uid: m.flags for m in folder.msgs}
        self.seen_generation = folder.generation
        kws = folder.keywords().names.values()
        flags = " ".join([*SYSTEM_FLAGS, *kws])
        self.send(f"* FLAGS ({flags})")
        if readonly:
            self.send("* OK [PERMANENTFLAGS ()] Read-only mailbox.")
        else:
            self.send(f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted.")
        self.send(f"* {len(self.view)} EXISTS")
        self.send(f"* {len(recent)} RECENT")
        for i, m in enumerate(folder.msgs):
            if "S" not in m.flags:
                self.send(f"* OK [UNSEEN {i + 1}] First unseen.")
                break
        self.send(f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid")
        self.send(f"* OK [UIDNEXT {folder.nextuid}] Predicted next UID")
        return ("[READ-ONLY]" if readonly else "[READ-WRITE]") + (" EXAMINE" if readonly else " SELECT") + " completed"

    def cmd_examine(self, tag, cur, uid):
        return self.cmd_select(tag, cur, uid, readonly=True)

    def _unselect(self):
        if self.folder is not None:
            self.folder.flush(background=self.cooperative)
        self.folder = None
        self.view, self.vflags, self.recent = [], {}, set()
        self.seen_generation = -1
        if self.state == SELECTED:
            self.state = AUTH

    def cmd_idle(self, tag, cur, uid):
        cur.eol()
        self.idle_tag = tag
        self.reader.raw_lines = True
        self.send("+ idling")
        if self.state == SELECTED:
            self.sync(expunge_ok=True)
        return None

    # -- selected ---------------------------------------------------------------------------
    def sync(self, expunge_ok: bool) -> None:
        """Tell the client what changed (RFC 3501 5.2, 7.4.1: no EXPUNGE during FETCH/STORE/SEARCH)."""
        f = self.folder
        f.refresh()
        if f.generation == self.seen_generation:
            return
        by_uid = f.by_uid
        if expunge_ok:
            gone = [i for i, u in enumerate(self.view) if u not in by_uid]
            for i in reversed(gone):
                self.send(f"* {i + 1} EXPUNGE")
                u = self.view.pop(i)
                self.vflags.pop(u, None)
                self.recent.discard(u)
        # flag changes made by others (another session, mutt in the Maildir)
        for seq, u in enumerate(self.view, 1):
            m = by_uid.get(u)
            if m is not None and m.flags != self.vflags.get(u):
                self.vflags[u] = m.flags
                self.send(b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (seq, u, self.flag_bytes(m)))
        top = self.view[-1] if self.view else 0
        new = [m for m in f.msgs if m.uid > top]
        if new:
            for m in new:
                self.view.append(m.uid)
                self.vflags[m.uid] = m.flags
                if m.subdir == "new" and not self.readonly:
                    self.recent.add(m.uid)
                    f.set_flags(m, m.flags)
                    self.vflags[m.uid] = m.flags
            self.send(f"* {len(self.view)} EXISTS")
            self.send(f"* {len(self.recent)} RECENT")
        if len(self.view) == len(by_uid):  # everything reported (no expunge held back)
            self.seen_generation = f.generation

    def flag_bytes(self, m, letters: str | None = None) -> bytes:
        names = self.folder.flag_names(m.flags if letters is None else letters)
        if m.uid in self.recent:
            names.append("\\Recent")
        return " ".join(names).encode("utf-8", "surrogateescape")

    def _select_msgs(self, setstr: str, uid: bool) -> list[tuple[int, object]]:
        """[(seq, Msg)] for a sequence set (UIDs when uid), ordered by sequence number."""
        f = self.folder
        view = self.view
        if not view:
            if uid or setstr == "$":
                return []
            raise No("No messages")  # RFC 3501: a sequence number on an empty mailbox is invalid
        if uid:
            # the view is in UID order: each range is one slice of it
            spans = [range(bisect_left(view, lo), bisect_right(view, hi)) for lo, hi in parse_seqset(setstr, view[-1])]
        else:
            spans = [range(lo - 1, hi) for lo, hi in parse_seqset(setstr, len(view))]
            for r in spans:
                if r.start < 0 or r.stop > len(view):
                    raise Bad("Invalid message sequence number")
        idx = spans[0] if len(spans) == 1 else sorted({i for r in spans for i in r})
        get = f.by_uid.get
        return [(i + 1, m) for i in idx if (m := get(view[i])) is not None]

    def cmd_check(self, tag, cur, uid):
        cur.eol()
        return "CHECK completed"

    def cmd_close(self, tag, cur, uid):
        cur.eol()
        if not self.readonly:
            self._expunge(None, silent=True)
        self._unselect()
        return "CLOSE completed"

    def cmd_unselect(self, tag, cur, uid):
        cur.eol()
        self._unselect()
        return "UNSELECT completed"

    def _expunge(self, uids, silent=False) -> None:
        if self.readonly:
            raise No("[READ-ONLY] Mailbox is read-only")
        f = self.folder
        f.refresh()
        for u in self.view:
            m = f.by_uid.get(u)
            if m is not None and "T" in m.flags and (uids is None or in_ranges(u, uids)):
                f.expunge(m)
        if not silent:
            self.sync(expunge_ok=True)

    def cmd_expunge(self, tag, cur, uid):
        uids = None
        if uid:
            cur.sp()
            uids = parse_seqset(cur.seqset(), self.view[-1] if self.view else 0)
        cur.eol()
        self._expunge(uids)
        return "EXPUNGE completed"

    def cmd_search(self, tag, cur, uid):
        cur.sp()
        f = self.folder
        try:
            prog = searchmod.parse_program(
                cur, self, uid_max=self.view[-1] if self.view else 0, seq_max=len(self.view),
                keyword_letter=lambda kw: f.keywords().letter(kw),
            )
        except searchmod.BadCharset:
            raise No("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset") from None
        return self._search(prog, uid)

    def _search(self, prog, uid: bool):
        """Generator (see _continue): the search pauses now and then when cooperative."""
        f = self.folder
        get = f.by_uid.get
        items = [(seq, m) for seq, m in enumerate(map(get, self.view), 1) if m is not None]
        hits = yield from prog.run(f, items, self.recent)
        self.send("* SEARCH" + "".join([f" {m.uid}" for _, m in hits] if uid else [f" {s}" for s, _ in hits]))
        return ("UID SEARCH" if uid else "SEARCH") + " completed"

    def cmd_fetch(self, tag, cur, uid):
        cur.sp()
        setstr = cur.seqset()
        cur.sp()
        atts = fetchmod.parse_atts_cached(cur)
        if cur.take(b" ("):  # fetch modifiers (CONDSTORE's CHANGEDSINCE): not offered
            raise ParseError("unsupported FETCH modifier")
        cur.eol()
        f = self.folder
        msgs = self._select_msgs(setstr, uid)
        seen = not self.readonly and any(a.sets_seen for a in atts)
        want_flags = any(a.kind == "FLAGS" for a in atts)
        if seen and not want_flags:
            atts = atts + [fetchmod.Att("FLAGS")]
        return self._fetch(f, msgs, atts, seen, uid)

    def _fetch(self, f, msgs, atts, seen: bool, uid: bool):
        """Generator (see _continue): hands over every FETCH_CHUNK bytes or FETCH_SLICE seconds
        when cooperative, so a big FETCH streams while the client reads, and others get a turn."""
        render = fetchmod.render
        vflags = self.vflags
        recent = self.recent
        names = {}  # (flag letters, recent) -> FLAGS bytes, for this command
        clock = time.monotonic
        size, until = 0, clock() + FETCH_SLICE
        for seq, m in msgs:
            if seen and "S" not in m.flags:
                f.set_flags(m, m.flags + "S")
            vflags[m.uid] = m.flags
            key = (m.flags, m.uid in recent)
            fb = names.get(key)
            if fb is None:
                fb = names[key] = self.flag_bytes(m)
            line = render(f, m, seq, atts, fb, uid)
            if line is not None:
                self.out.append(line)
                size += len(line)
                if size >= FETCH_CHUNK or clock() > until:
                    yield
                    size, until = 0, clock() + FETCH_SLICE
        return ("UID FETCH" if uid else "FETCH") + " completed"

    def cmd_store(self, tag, cur, uid):
        cur.sp()
        setstr = cur.seqset()
        cur.sp()
        if cur.take(b" ("):
            raise ParseError("unsupported STORE modifier")
        op = cur._re(re.compile(rb"[+-]?FLAGS(?:\.SILENT)?", re.I), "+FLAGS, -FLAGS or FLAGS").decode().upper()
        cur.sp()
        if cur.peek() == b"(":
            flags = cur.flag_list()
        else:
            flags = [cur.flag()]
            while cur.take(b" "):
                flags.append(cur.flag())
        cur.eol()
        if self.readonly:
            raise No("[READ-ONLY] Mailbox is read-only")
        f = self.folder
        for fl in flags:
            if fl.startswith("\\") and fl.lower() not in ("\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft", "\\recent"):
                raise Bad(f"Invalid system flag {fl}")
        flags = [fl for fl in flags if fl.lower() != "\\recent"]
        letters = f.letters(flags, create=not op.startswith("-"))
        silent = op.endswith(".SILENT")
        for seq, m in self._select_msgs(setstr, uid):
            if op.startswith("+"):
                new = "".join(sorted(set(m.flags) | set(letters)))
            elif op.startswith("-"):
                new = "".join(sorted(set(m.flags) - set(letters)))
            else:
                new = "".join(sorted(set(letters) | (set(m.flags) & set("P"))))
            if new != m.flags:
                f.set_flags(m, new)
            self.vflags[m.uid] = m.flags
            if not silent:
                uidpart = b"UID %d " % m.uid if uid else b""
                self.out.append(b"* %d FETCH (%sFLAGS (%s))\r\n" % (seq, uidpart, self.flag_bytes(m)))
        return ("UID STORE" if uid else "STORE") + " completed"

    def cmd_copy(self, tag, cur, uid, move=False):
        cur.sp()
        setstr = cur.seqset()
        name = self._mailbox_arg(cur)
        cur.eol()
        if not self.store.exists(name):
            raise No("[TRYCREATE] Mailbox doesn't exist")
        if move and self.readonly:
            raise No("[READ-ONLY] Mailbox is read-only")
        src = self.folder
        dst = self.store.open(name)
        msgs = self._select_msgs(setstr, uid)
        items, copied = [], []
        for seq, m in msgs:
            data = src.read(m)
            if data is None:
                continue  # expunged meanwhile (RFC 2180 4.4.1)
            info = src.info_for(m)
            letters = "".join(c for c in m.flags if c in "DFPRST") + dst.letters(
                [k for k in src.flag_names(m.flags) if not k.startswith("\\")])
            items.append((data, letters, info.idate if info else None))
            copied.append(m.uid)
        pairs = list(zip(copied, dst.append_many(items))) if items else []
        dst.flush(background=self.cooperative)
        code = ""
        if pairs:
            code = f"[COPYUID {dst.uidvalidity} {','.join(str(a) for a, _ in pairs)} {','.join(str(b) for _, b in pairs)}] "
        if move:
            # RFC 6851 3.3: COPYUID in an untagged OK, then the EXPUNGEs
            if code:
                self.send(f"* OK {code.strip()} Moved")
            for seq, m in msgs:
                src.expunge(m)
            self.sync(expunge_ok=True)
            return "MOVE completed"
        return code + "COPY completed"

    def cmd_move(self, tag, cur, uid):
        return self.cmd_copy(tag, cur, uid, move=True)
