"""`mailtools submit` / `sendmail` / `mailq` as real processes, with the command lines real
callers use (cron, PHP, logwatch, git send-email, mutt), and the refusals."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailtools.core.exitcodes import UsageError
from mailtools.core.queue import Queue
from mailtools.submit import front

MSG = b"Subject: test\nTo: alice@example.test\n\nhello\n"


def script_path() -> str:
    """The installed `mailtools` console script (not a pyenv shim, which dispatches by name)."""
    cand = Path(sys.executable).parent / "mailtools"
    if cand.exists():
        return str(cand)
    found = shutil.which("mailtools")
    if not found:
        pytest.skip("the mailtools console script is not installed")
    return found


@pytest.fixture
def links(tmp_path):
    """A bin/ directory with `sendmail` and `mailq` symlinks to the installed script."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("sendmail", "mailq"):
        (d / name).symlink_to(script_path())
    return d


def entries(root) -> list:
    q = Queue(root / "queue")
    return sorted(q.entries(), key=lambda e: e.queued_at) if (root / "queue").exists() else []


def message_of(root, entry) -> bytes:
    return Queue(root / "queue").read_message(entry)


def sendmail(links, *args, input=MSG, env=None):
    return subprocess.run([str(links / "sendmail"), *args], input=input, capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})})


# --- parsing (in memory) --------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"],  # cronie
    ["-i", "-FCronDaemon", "-B8BITMIME", "-oem", "root"],  # Debian cron
    ["-t", "-i"],  # PHP
    ["-i", "-f", "a@example.test", "b@example.test"],  # git send-email
    ["-oem", "-oi", "-B8BITMIME", "-f", "a@example.test", "-N", "failure,delay", "-R", "hdrs",
     "--", "b@example.test"],  # mutt
    ["-t"],  # logwatch
])
def test_caller_lines_parse(argv):
    o = front.parse(argv)
    assert o.mode == "m"


def test_parse_values_glued_and_separate():
    o = front.parse(["-froot", "-FCron Daemon", "-B8bitmime", "-Nsuccess,failure", "-Rfull", "-Vid1", "x"])
    assert (o.sender, o.full_name, o.body, o.notify, o.ret, o.envid) == (
        "root", "Cron Daemon", "8BITMIME", "FAILURE,SUCCESS", "FULL", "id1")
    o = front.parse(["-f", "root", "-ti", "--", "-notanoption"])
    assert o.sender == "root" and o.extract and o.ignore_dots and o.recipients == ["-notanoption"]
    assert front.parse(["-oi"]).ignore_dots and not front.parse(["-odi"]).ignore_dots
    assert front.parse(["-bp"]).mode == "p" and front.parse(["-bs"]).mode == "s"
    o = front.parse(["-h", "10", "-L", "x", "-O", "a=b", "-n", "-U", "-m", "-oem", "r"])
    assert o.recipients == ["r"]


@pytest.mark.parametrize("argv", [
    ["-C", "/etc/other.cf"], ["-Cfile"], ["-X", "/tmp/log"], ["-oQ/tmp/q"], ["-G"], ["-bv"],
    ["--nope"], ["-f"], ["-Bbinary"], ["-Nsometimes"], ["-Rall"],
])
def test_refused_options(argv):
    with pytest.raises(UsageError):
        front.parse(argv)


def test_fast_front_and_typer_agree_on_long_options():
    import typer.main

    from mailtools.cli import build_app

    cmd = typer.main.get_command(build_app(only="submit")).commands["submit"]
    typer_long = {name for p in cmd.params for name in p.opts if name.startswith("--")}
    assert typer_long == set(front.LONG_OPTIONS)


def test_sendmail_path_imports_nothing_heavy(home, tmp_path):
    code = (
        "import sys\n"
        "from mailtools.__main__ import main\n"
        "rc = main(['sendmail', '-t', '-i'])\n"
        "heavy = sorted(m for m in ('typer', 'click', 'rich', 'email', 'asyncio', 'argparse', 'dns', 'ssl') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], input=MSG, capture_output=True, timeout=60)
    assert p.stdout.decode().strip() == "0 []", p.stderr.decode()


def test_sendmail_path_loads_only_what_it_uses(tmp_path):
    """Each module costs the per-message start-up: no socket for the host name (config without
    one), no core.maildir for the queue, no core.log for the default log, no smtpd package for
    a date, no syslog extension without /dev/log; and the message is queued all the same."""
    cfg = tmp_path / "mailtools.toml"
    cfg.write_text(f'root = "{tmp_path / "root"}"\n')
    code = (
        "import sys, os\n"
        f"sys.path.append({str(Path(__file__).resolve().parents[1])!r})  # as the launcher does\n"
        "from mailtools.__main__ import main\n"
        "rc = main(['sendmail', '-t', '-i'])\n"
        "extra = ['syslog'] if not os.path.exists('/dev/log') else []\n"
        "loaded = sorted(m for m in ['socket', 'mailtools.core.maildir', 'mailtools.core.log', 'mailtools.smtpd', *extra] if m in sys.modules)\n"
        "print(rc, loaded)\n"
    )
    env = {**os.environ, "MAILTOOLS_CONFIG": str(cfg)}
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], input=MSG, capture_output=True, timeout=60,
                       env=env)
    assert p.stdout.decode().strip() == "0 []", p.stderr.decode()
    assert len(os.listdir(tmp_path / "root" / "queue" / "new")) == 1


# --- real callers ---------------------------------------------------------------------------
def test_cronie(home, links):
    msg = b"Subject: Cron <root@host> run-parts\nTo: root\n\nout\n"
    p = sendmail(links, "-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root", input=msg)
    assert p.returncode == 0, p.stderr
    [e] = entries(home)
    assert e.sender == "root@mx.example.test"
    assert [r.address for r in e.recipients] == ["root@mx.example.test"]
    data = message_of(home, e)
    assert b"\nFrom: CronDaemon <root@mx.example.test>\n" in data
    assert b"\nDate: " in data and b"\nMessage-ID: <" in data
    assert data.endswith(b"\n\nout\n")
    # our trace header names the queue id, as Postfix's "by host (Postfix, from userid 0) id ..."
    assert re.match(rb"Received: by mx\.example\.test \(mailtools submit, from userid \d+\)\r?\n\tid "
                    + e.id.encode() + rb"; ", data)


def test_debian_cron(home, links):
    msg = b"From: root (Cron Daemon)\nTo: root\nSubject: x\n\n.\nstill here\n"
    p = sendmail(links, "-i", "-FCronDaemon", "-B8BITMIME", "-oem", "backup", input=msg)
    assert p.returncode == 0, p.stderr
    [e] = entries(home)
    assert [r.address for r in e.recipients] == ["backup@mx.example.test"]
    assert e.dsn.get("body") == "8BITMIME"
    data = message_of(home, e)
    assert data.count(b"From: ") == 1 and b"\n.\nstill here\n" in data  # -i: '.' is content


def test_php_mail(home, links):
    msg = (b"To: alice@example.test\r\nSubject: PHP\r\nX-PHP-Originating-Script: 0:a.php\r\n"
           b"Cc: carol@example.test\r\nBcc: hidden@example.test\r\n\r\nbody\r\n")
    p = sendmail(links, "-t", "-i", input=msg)
    assert p.returncode == 0, p.stderr
    [e] = entries(home)
    assert [r.address for r in e.recipients] == ["alice@example.test", "carol@example.test", "hidden@example.test"]
    data = message_of(home, e)
    assert b"hidden" not in data and b"Bcc" not in data  # RFC 5322 3.6.3
    assert b"\r\nDate: " in data and data.endswith(b"\r\n\r\nbody\r\n")  # CRLF kept


def test_logwatch_dot_ends_message(home, links):
    msg = b"To: root\nSubject: logwatch\n\nline\n.\nnot part of it\n"
    p = sendmail(links, "-t", input=msg)
    assert p.returncode == 0, p.stderr
    [e] = entries(home)
    data = message_of(home, e)
    assert data.endswith(b"\n\nline\n") and b"not part" not in data


def test_t_adds_to_argv_recipients_and_bcc_removed_always(home, links):
    msg = b"To: a@example.test\nBcc: b@example.test,\n c@example.test\nSubject: s\n\nx\n"
    assert sendmail(links, "-t", "d@example.test", input=msg).returncode == 0
    assert sendmail(links, "e@example.test", input=msg).returncode == 0
    first, second = entries(home)
    assert [r.address for r in first.recipients] == ["d@example.test", "a@example.test", "b@example.test", "c@example.test"]
    assert [r.address for r in second.recipients] == ["e@example.test"]
    for e in (first, second):
        data = message_of(home, e)
        assert b"Bcc" not in data and b"c@example.test" not in data


def test_existing_headers_are_kept(home, links):
    msg = b"From: Me <me@example.test>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <x@y>\n\nb\n"
    assert sendmail(links, "-f", "me@example.test", "r@example.test", input=msg).returncode == 0
    data = message_of(home, entries(home)[0])
    assert data.count(b"Date:") == 1 and data.count(b"Message-ID:") == 1 and data.count(b"From:") == 1


@pytest.mark.parametrize("args,input,code", [
    (["-f", "-oQ/tmp", "r@example.test"], MSG, 64),  # sender that is an option
    (["--", "-r@example.test"], MSG, 64),
    (["-f", "a\r\nRCPT TO:<x@y>", "r@example.test"], MSG, 65),
    (["r@exa\nmple.test"], MSG, 65),
    ([], b"Subject: no recipients\n\nx\n", 64),
    (["-t"], b"Subject: no recipients\n\nx\n", 64),
    (["r@example.test"], b"", 65),
    (["r@example.test"], b"Subject: x\n\n" + b"a" * 999 + b"\n", 65),
    (["-C", "/etc/x.cf", "r@example.test"], MSG, 64),
    (["-X", "/tmp/log", "r@example.test"], MSG, 64),
    (["-oQ/tmp/q", "r@example.test"], MSG, 64),
    (["-G", "r@example.test"], MSG, 64),
])
def test_refused_and_nothing_queued(home, links, args, input, code):
    p = sendmail(links, *args, input=input)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stderr.startswith(b"sendmail: ")
    assert entries(home) == []


def test_long_line_message_is_clear(home, links):
    p = sendmail(links, "r@example.test", input=b"Subject: x\n\n" + b"a" * 1200 + b"\n")
    assert p.returncode == 65 and b"998" in p.stderr


def test_line_of_998_is_fine(home, links):
    p = sendmail(links, "r@example.test", input=b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n")
    assert p.returncode == 0, p.stderr


def test_spool_not_writable_is_75(home, links):
    (home / "queue").write_text("not a directory")
    p = sendmail(links, "r@example.test")
    assert p.returncode == 75 and b"queue" in p.stderr


def test_nudges_a_waiting_relay(home, links):
    from mailtools.core.queue import NudgeListener

    with NudgeListener(home / "queue") as listener:
        assert sendmail(links, "r@example.test").returncode == 0
        assert listener.wait(5)


def test_mailq_plain_and_json(home, links, run):
    empty = subprocess.run([str(links / "mailq")], capture_output=True, timeout=30)
    assert empty.returncode == 0 and empty.stdout == b"Mail queue is empty\n"
    assert sendmail(links, "-f", "s@example.test", "r@example.test").returncode == 0
    plain = subprocess.run([str(links / "mailq")], capture_output=True, timeout=30)
    e = entries(home)[0]
    assert plain.returncode == 0
    lines = plain.stdout.decode().splitlines()
    assert lines[0].startswith("-Queue ID-") and lines[1].startswith(e.id)
    assert "s@example.test" in lines[1] and lines[2].strip() == "r@example.test"
    assert lines[-1] == "-- 1 Kbytes in 1 Request."
    import json

    j = run("submit", "-bp", "--json")
    doc = json.loads(j.stdout)
    assert doc["id"] == e.id and doc["sender"] == "s@example.test"
    assert doc["recipients"][0] == {"address": "r@example.test", "state": "queued", "attempts": 0,
                                    "next_attempt": None, "last_reply": None}
    assert set(doc) >= {"id", "sender", "size", "queued_at", "recipients"}


def test_bs_speaks_smtp(home, links):
    script = (b"EHLO localhost\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<r@example.test>\r\n"
              b"DATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    p = sendmail(links, "-bs", input=script)
    assert p.returncode == 0
    out = p.stdout.decode()
    assert out.startswith("220 mx.example.test") and "250 2.0.0 Ok: queued as " in out and "221 2.0.0" in out
    [e] = entries(home)
    data = message_of(home, e)
    assert f"with ESMTP id {e.id};".encode() in data and b"Subject: bs" in data


def test_verbose_log_line(home, links):
    p = sendmail(links, "-v", "-f", "s@example.test", "r@example.test")
    e = entries(home)[0]
    assert f"]: {e.id}: uid={os.getuid()} from=<s@example.test>, size={e.size}, nrcpt=1".encode() in p.stderr


# --- git send-email and mutt, for real --------------------------------------------------------
def test_git_send_email(home, links, tmp_path):
    if not shutil.which("git") or not Path("/usr/lib/git-core/git-send-email").exists():
        pytest.skip("git-email not installed")
    repo = tmp_path / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.test",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.test",
           "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "f.txt").write_text("hello\n")
    subprocess.run(["git", "-C", str(repo), "add", "f.txt"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "Add f"], check=True, env=env)
    patch = subprocess.run(["git", "-C", str(repo), "format-patch", "-1", "-o", str(tmp_path / "out")],
                           check=True, env=env, capture_output=True, text=True).stdout.strip()
    for how in (["-c", f"sendemail.sendmailcmd={links / 'sendmail'}"], []):
        # the second run also sets the envelope sender: git then passes -f
        extra = [] if how else [f"--sendmail-cmd={links / 'sendmail'}", "--envelope-sender=dev@example.test"]
        p = subprocess.run(["git", *how, "-C", str(repo), "send-email", "--confirm=never", "--quiet", "--suppress-cc=all",
                            "--from=Dev <dev@example.test>", "--to=list@example.test", *extra, patch],
                           capture_output=True, env=env, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
    first, second = entries(home)
    assert first.sender == f"{front.local_user()}@mx.example.test" and second.sender == "dev@example.test"
    for e in (first, second):
        assert [r.address for r in e.recipients] == ["list@example.test"]
        data = message_of(home, e)
        assert b"Subject: [PATCH] Add f" in data and b"+hello" in data


def test_mutt_batch_mode(home, links, tmp_path):
    if not shutil.which("mutt"):
        pytest.skip("mutt not installed")
    rc = tmp_path / "muttrc"
    rc.write_text(f'set sendmail="{links / "sendmail"} -oem -oi"\nset from="me@example.test"\n'
                  'set use_from=yes\nset envelope_from=yes\nset record=""\nset charset="utf-8"\n'
                  'set send_charset="utf-8"\n')
    env = {**os.environ, "HOME": str(tmp_path), "MAIL": str(tmp_path / "mbox")}
    p = subprocess.run(["mutt", "-n", "-F", str(rc), "-s", "mutt subject", "you@example.test"],
                       input=b"Body from mutt, gr\xc3\xbc\xc3\x9fe\n", capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    [e] = entries(home)
    assert e.sender == "me@example.test"
    assert [r.address for r in e.recipients] == ["you@example.test"]
    data = message_of(home, e)
    assert b"Subject: mutt subject" in data and b"<me@example.test>" in data
    assert data.count(b"Message-ID:") == 1 and data.endswith("grüße\n".encode())


def test_q_runs_the_queue_once(home, links):
    from conftest import free_port

    cfg = Path(str(home) + "/../mailtools.toml").resolve()
    cfg.write_text(cfg.read_text() + f'[relay]\nsmarthost = "127.0.0.1:{free_port()}"\nconnect_timeout = "2s"\n')
    p = sendmail(links, "-q", "-f", "s@example.test", "r@remote.test")
    assert p.returncode == 0, p.stderr
    [e] = entries(home)
    # queued, then one delivery attempt (the smarthost is down): deferred, still in the queue
    assert e.recipients[0].attempts == 1 and e.recipients[0].state == "deferred"
    assert sendmail(links, "-q", input=b"").returncode == 0  # -q alone reads no message


def test_typer_definition_runs_the_same_code(home, capsys):
    from mailtools.cli import run_typer

    assert run_typer("submit", ["-b", "p"]) == 0
    assert capsys.readouterr().out == "Mail queue is empty\n"
    assert run_typer("submit", ["-o", "Q/tmp", "r@example.test"]) == 64


def test_mbox_from_line_is_dropped(home, links):
    msg = b"From someone@example.test Sat Nov 28 16:00:00 2026\nSubject: x\n\nbody\n"
    assert sendmail(links, "r@example.test", input=msg).returncode == 0
    data = message_of(home, entries(home)[0])
    assert b"From someone" not in data and b"\nSubject: x\n" in data


def test_config_cache_never_stale(home, links, tmp_path):
    # core/config.py caches the parsed TOML per user; a changed file must be read again
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert sendmail(links, "r", env=env).returncode == 0
    assert (tmp_path / "cache" / "mailtools" / "config.marshal").exists()
    cfg = Path(str(home) + "/../mailtools.toml").resolve()
    cfg.write_text(cfg.read_text().replace("mx.example.test", "other.example.test"))
    assert sendmail(links, "r", env=env).returncode == 0
    first, second = entries(home)
    assert first.recipients[0].address == "r@mx.example.test"
    assert second.recipients[0].address == "r@other.example.test"
    cfg.write_text("not = [valid toml")
    p = sendmail(links, "r", env=env)
    assert p.returncode == 78 and b"not valid TOML" in p.stderr


def test_bs_accepts_bare_lf_from_a_local_script(home, links):
    script = (b"HELO localhost\nMAIL FROM:<root@example.test>\nRCPT TO:<r@example.test>\n"
              b"DATA\nSubject: lf\n\nhi\n.\nQUIT\n")
    p = sendmail(links, "-bs", input=script)
    assert b"250 2.0.0 Ok: queued as " in p.stdout and b"221 2.0.0" in p.stdout
    data = message_of(home, entries(home)[0])
    assert b"\r\nSubject: lf\r\n" in data and data.endswith(b"\r\n\r\nhi\r\n")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_mailq_for_a_user_who_cannot_read_the_queue_says_so(run):
    # Postfix's mailq shows everyone the whole queue; ours reads the spool itself, so a user
    # without access gets what is readable, a clear line, and exit 77, not a bare EACCES.
    import tempfile

    from conftest import mailtools_cmd

    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*as_nobody, *mailtools_cmd(), "--version"], capture_output=True, timeout=60,
                           env={**os.environ, "HOME": "/nonexistent"})
    if probe.returncode != 0:  # a checkout under a 0700 home: nobody cannot even start mailtools
        pytest.skip(f"nobody cannot run mailtools from here: {probe.stderr[-200:]!r}")
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        root = base / "root"
        root.mkdir(mode=0o755)
        cfg = base / "mailtools.toml"
        cfg.write_text(f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n')
        cfg.chmod(0o644)
        env = {"MAILTOOLS_CONFIG": str(cfg), "PYTHONDONTWRITEBYTECODE": "1"}
        assert run("submit", "-f", "s@example.test", "r@example.test", input=MSG, env=env).returncode == 0
        (root / "queue").chmod(0o755)
        (root / "queue" / "new").chmod(0o755)  # listable, but the entry itself is root's, 0700
        r = subprocess.run([*as_nobody, *mailtools_cmd(), "submit", "-bp"],
                           capture_output=True, timeout=60, env={**os.environ, **env, "HOME": "/nonexistent"})
        assert r.returncode == 77, (r.returncode, r.stderr)
        assert b"not readable by this user" in r.stderr and b"Traceback" not in r.stderr, r.stderr
        assert r.stdout == b"No readable queue entries\n"
        root_view = run("submit", "-bp", env=env)
        assert root_view.returncode == 0 and b"1 Request." in root_view.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
