"""`mailtools user add|del|list|passwd` driven as a real process, as an operator would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mailtools.core.auth import Users

DOVEADM = shutil.which("doveadm")


def users_file(home):
    return home / "users"


def test_add_list_passwd_del_round_trip(home, run):
    r = run("user", "add", "alice@example.test", "--password-stdin", input=b"s3cret pass\n")
    assert r.returncode == 0, r.stderr
    line = users_file(home).read_text()
    assert line.startswith("alice@example.test:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert line.endswith("::::::\n")
    assert Users(users_file(home)).verify("alice@example.test", "s3cret pass")
    assert not Users(users_file(home)).verify("alice@example.test", "s3cret pas")

    r = run("user", "add", "bob@example.test", "--password-stdin", "--scheme", "blf-crypt", input=b"pw-bob\r\n")
    assert r.returncode == 0, r.stderr
    r = run("user", "list")
    assert r.returncode == 0 and r.stdout.decode() == "alice@example.test\nbob@example.test\n"
    rows = [json.loads(x) for x in run("user", "list", "--json").stdout.splitlines()]
    assert [(x["user"], x["scheme"], x["maildir_exists"]) for x in rows] == [
        ("alice@example.test", "ARGON2ID", True), ("bob@example.test", "BLF-CRYPT", True)]

    r = run("user", "passwd", "bob@example.test", "--password-stdin", "--scheme", "BLF-CRYPT", input=b"new-bob\n")
    assert r.returncode == 0, r.stderr
    u = Users(users_file(home))
    assert u.verify("bob@example.test", "new-bob") and not u.verify("bob@example.test", "pw-bob")
    assert u.verify("alice@example.test", "s3cret pass")

    r = run("user", "del", "BOB@example.test")
    assert r.returncode == 0, r.stderr
    assert run("user", "list").stdout.decode() == "alice@example.test\n"
    assert (home / "mail" / "example.test" / "bob" / "cur").is_dir()  # the mail is kept


def test_add_creates_maildir_with_special_use_folders(home, run):
    assert run("user", "add", "carol@example.test", "--password-stdin", input=b"pw\n").returncode == 0
    md = home / "mail" / "example.test" / "carol"
    for sub in ("cur", "new", "tmp"):
        assert (md / sub).is_dir()
    for folder in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (md / f".{folder}" / "cur").is_dir()
        assert (md / f".{folder}" / "maildirfolder").exists()
    subs = (md / "subscriptions").read_text().split("\n")
    assert subs[0] == "V\t2" and {"Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(subs)


@pytest.mark.parametrize("args,stdin,code,words", [
    (("user", "add", "alice", "--password-stdin"), b"pw\n", 65, "not a full address"),
    (("user", "add", "../../etc@example.test", "--password-stdin"), b"pw\n", 65, "not a usable"),
    (("user", "add", "dave@example..test", "--password-stdin"), b"pw\n", 65, "not a usable"),
    (("user", "add", "dave@-x.example.test", "--password-stdin"), b"pw\n", 65, "not a usable"),
    (("user", "add", "dave@exa_mple.test", "--password-stdin"), b"pw\n", 65, "not a usable"),
    (("user", "add", "dave@[192.0.2.1]", "--password-stdin"), b"pw\n", 65, "not a usable"),
    (("user", "add", "dave@example.test", "--password-stdin"), b"\n", 65, "empty password"),
    (("user", "add", "dave@example.test"), b"", 64, "--password-stdin"),
    (("user", "add", "dave@example.test", "--scheme", "MD5", "--password-stdin"), b"pw\n", 64, "SCHEME"),
    (("user", "del", "nobody@example.test"), b"", 67, "no such user"),
    (("user", "passwd", "nobody@example.test", "--password-stdin"), b"pw\n", 67, "no such user"),
    (("user", "frobnicate"), b"", 64, "No such command"),
])
def test_errors_have_the_right_exit_code(home, run, args, stdin, code, words):
    r = run(*args, input=stdin)
    assert r.returncode == code, (r.stdout, r.stderr)
    err = r.stderr.decode()
    assert words.lower() in err.lower()
    assert "Traceback" not in err
    assert not users_file(home).exists() or "dave" not in users_file(home).read_text()


def test_add_existing_user_is_refused(home, run):
    assert run("user", "add", "alice@example.test", "--password-stdin", "--scheme", "BLF-CRYPT", input=b"one\n").returncode == 0
    before = users_file(home).read_text()
    r = run("user", "add", "Alice@Example.TEST", "--password-stdin", input=b"two\n")
    assert r.returncode == 73 and b"already exists" in r.stderr
    assert users_file(home).read_text() == before


def test_bad_config_is_exit_78(tmp_path, run):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('root = "/tmp"\nno_such_key = 1\n')
    r = run("--config", cfg, "user", "list")
    assert r.returncode == 78 and b"no_such_key" in r.stderr


def test_malformed_line_is_reported_and_others_still_work(home, run):
    users_file(home).write_text("garbage without colon\n")
    assert run("user", "add", "erin@example.test", "--password-stdin", "--scheme", "BLF-CRYPT", input=b"pw-erin\n").returncode == 0
    r = run("user", "list")
    assert r.returncode == 0 and r.stdout == b"erin@example.test\n"
    assert b"users:1: malformed line" in r.stderr
    assert users_file(home).read_text().startswith("garbage without colon\n")  # never thrown away
    assert Users(users_file(home)).verify("erin@example.test", "pw-erin")


@pytest.mark.skipif(DOVEADM is None, reason="doveadm (dovecot-core) not installed")
@pytest.mark.parametrize("scheme", ["ARGON2ID", "BLF-CRYPT"])
def test_written_hashes_verify_with_doveadm(home, run, scheme):
    r = run("user", "add", "frank@example.test", "--password-stdin", "--scheme", scheme, input=b"pa ss\n")
    assert r.returncode == 0, r.stderr
    stored = users_file(home).read_text().split(":")[1]
    ok = subprocess.run([DOVEADM, "pw", "-t", stored, "-p", "pa ss"], capture_output=True, text=True)
    assert ok.returncode == 0 and "verified" in ok.stdout


@pytest.mark.skipif(DOVEADM is None, reason="doveadm (dovecot-core) not installed")
def test_doveadm_made_lines_verify(home):
    lines = []
    for i, scheme in enumerate(["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID"]):
        h = subprocess.run([DOVEADM, "pw", "-s", scheme, "-p", f"pw{i}"], capture_output=True,
                           text=True, check=True).stdout.strip()
        lines.append(f"u{i}@example.test:{h}::::::\n")
    users_file(home).write_text("".join(lines))
    u = Users(users_file(home))
    assert all(u.verify(f"u{i}@example.test", f"pw{i}") for i in range(3))
    assert not any(u.verify(f"u{i}@example.test", f"pw{i + 1}") for i in range(3))


def test_tty_prompt_asks_twice(home):
    """With a terminal, the password is asked twice; a mismatch changes nothing (exit 65)."""
    import pty
    import sys
    import time

    def drive(answers):
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp(sys.executable, [sys.executable, "-m", "mailtools", "user", "add", "gina@example.test",
                                       "--scheme", "BLF-CRYPT"])
        out = b""
        for answer in answers:
            deadline = time.monotonic() + 30
            while b"assword" not in out.split(b"\n")[-1] and time.monotonic() < deadline:
                try:
                    out += os.read(fd, 1024)
                except OSError:
                    break
            out = b""
            os.write(fd, answer + b"\n")
        try:
            while os.read(fd, 1024):
                pass
        except OSError:
            pass
        return os.waitpid(pid, 0)[1]

    assert os.waitstatus_to_exitcode(drive([b"one", b"two"])) == 65
    assert not users_file(home).exists() or "gina" not in users_file(home).read_text()
    assert os.waitstatus_to_exitcode(drive([b"same pw", b"same pw"])) == 0
    assert Users(users_file(home)).verify("gina@example.test", "same pw")


def test_ctrl_c_at_the_prompt_ends_the_line_and_exits_130(home):
    import pty
    import sys
    import time

    import select
    import signal

    pid, fd = pty.fork()
    if pid == 0:
        # as from a shell: a test run in the background (SIGINT ignored, which Python then
        # leaves ignored) would otherwise never see the Ctrl-C and wait at the prompt forever
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execvp(sys.executable, [sys.executable, "-m", "mailtools", "user", "add", "hal@example.test"])

    def read_some(deadline):
        """What the program wrote next; b"" once it closed the terminal, None at the deadline."""
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        try:
            return os.read(fd, 1024)
        except OSError:  # EIO: the program has ended
            return b""

    out = b""
    deadline = time.monotonic() + 30
    while b"assword" not in out:
        chunk = read_some(deadline)
        if not chunk:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"no password prompt: {out!r}")
        out += chunk
    os.write(fd, b"\x03")  # the terminal turns it into SIGINT
    deadline = time.monotonic() + 30
    while chunk := read_some(deadline):
        out += chunk
    if chunk is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"still running 30 s after Ctrl-C: {out!r}")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 130
    assert out.endswith(b"\n"), out  # the prompt's line is ended
    assert not users_file(home).exists() or "hal" not in users_file(home).read_text()


@pytest.mark.skipif(DOVEADM is None or shutil.which("dovecot") is None or os.geteuid() != 0,
                    reason="needs dovecot and doveadm, as root")
def test_dovecot_accepts_the_users_file(home, run, tmp_path):
    """The file `mailtools user` writes is a working Dovecot passwd-file passdb: a private
    Dovecot (auth service only, no listeners) logs the users in with `doveadm auth test`."""
    import tempfile
    import time

    assert run("user", "add", "alice@example.test", "--password-stdin", input=b"pw alice\n").returncode == 0
    assert run("user", "add", "bob@example.test", "--password-stdin", "--scheme", "BLF-CRYPT",
               input=b"pw bob\n").returncode == 0
    d = tempfile.mkdtemp(prefix="mtdv")  # short: unix socket paths are limited
    os.chmod(d, 0o755)
    for sub in ("run", "state"):
        os.mkdir(os.path.join(d, sub))
    # Dovecot's auth process runs as its own user: give it a readable copy, byte for byte.
    shutil.copyfile(users_file(home), os.path.join(d, "users"))
    os.chmod(os.path.join(d, "users"), 0o644)
    conf = os.path.join(d, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(f"""protocols =
listen = 127.0.0.1
instance_name = mailtools-user-{os.getpid()}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
passdb {{
  driver = passwd-file
  args = scheme=CRYPT username_format=%Lu {d}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/home/%d/%n
}}
""")
    subprocess.run(["dovecot", "-c", conf], check=True, timeout=30)
    pid = None
    try:
        for _ in range(600):  # up to 30 s: Dovecot starting on a loaded machine
            if os.path.exists(f"{d}/run/master.pid") and os.path.exists(f"{d}/run/auth-client"):
                break
            time.sleep(0.05)
        pid = int(open(f"{d}/run/master.pid").read())

        def auth_test(user, pw):
            return subprocess.run([DOVEADM, "-c", conf, "auth", "test", user, pw],
                                  capture_output=True, text=True, timeout=30)

        for user, pw in (("alice@example.test", "pw alice"), ("bob@example.test", "pw bob")):
            r = auth_test(user, pw)
            assert r.returncode == 0 and "auth succeeded" in r.stdout, (r.stdout, r.stderr)
        r = auth_test("alice@example.test", "pw bob")
        assert r.returncode != 0 and "auth failed" in r.stdout
    finally:
        if pid:
            os.kill(pid, 15)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        shutil.rmtree(d, ignore_errors=True)


def test_non_local_domain_gets_a_note(home, run):
    r = run("user", "add", "ext@example.org", "--password-stdin", "--scheme", "BLF-CRYPT", input=b"pw\n")
    assert r.returncode == 0 and b"not in local_domains" in r.stderr
    assert Users(users_file(home)).verify("ext@example.org", "pw")


def test_single_label_host_name_is_a_usable_domain(home, run):
    # serve puts the host name in local_domains; on a host called "mybox", cron's mail to root
    # goes to root@mybox, so that user must be possible.
    r = run("user", "add", "root@MyBox", "--password-stdin", input=b"pw\n")
    assert r.returncode == 0, r.stderr
    assert run("user", "list").stdout == b"root@mybox\n"
    r = run("user", "add", "bj\u00f6rn@b\u00fccher.example", "--password-stdin", input=b"pw\n")
    assert r.returncode == 0, r.stderr
