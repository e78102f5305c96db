"""`mailtools deliver` as an MTA runs it: a real process per message, stdin in, exit code out.

Also: the crash test (SIGKILL at random points never leaves a partial message in new/ or cur/),
200 concurrent deliveries, the fast front against the typer definition, and the import budget.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, mailtools_cmd

MSG = b"From: Alice <alice@example.net>\nTo: bob@example.test\nSubject: hi\n\nHello Bob.\n\n-- \nAlice\n"
MSG_CRLF = MSG.replace(b"\n", b"\r\n")


def files(maildir: Path) -> list[Path]:
    out = []
    for sub in ("new", "cur"):
        d = maildir / sub
        if d.is_dir():
            out.extend(sorted(d.iterdir()))
    return out


def only_message(maildir: Path) -> bytes:
    got = files(maildir)
    assert len(got) == 1, got
    assert os.listdir(maildir / "tmp") == []
    return got[0].read_bytes()


# -- --maildir: the bytes ---------------------------------------------------------------------


def test_lf_message_gets_return_path_and_delivered_to(run, tmp_path):
    md = tmp_path / "Maildir"
    r = run("deliver", "--maildir", md, "-f", "alice@example.net", "bob@example.test", input=MSG)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert only_message(md) == b"Return-Path: <alice@example.net>\nDelivered-To: bob@example.test\n" + MSG
    name = files(md)[0].name
    assert files(md)[0].parent.name == "new" and name.endswith(f",S={len(MSG) + 64}")


def test_crlf_message_keeps_crlf_for_added_headers(run, tmp_path):
    md = tmp_path / "Maildir"
    r = run("deliver", "--maildir", md, "-f", "<alice@example.net>", input=MSG_CRLF)
    assert r.returncode == 0
    assert only_message(md) == b"Return-Path: <alice@example.net>\r\n" + MSG_CRLF


def test_without_sender_or_address_the_message_is_untouched(run, tmp_path):
    md = tmp_path / "Maildir"
    body = MSG + bytes(range(256)) + b"\r\n\x00no final newline"
    assert run("deliver", "--maildir", md, input=body).returncode == 0
    assert only_message(md) == body


@pytest.mark.parametrize(
    "args,header",
    [
        (["-fbounce@example.net"], b"Return-Path: <bounce@example.net>\n"),
        (["-f", ""], b"Return-Path: <>\n"),
        (["-f", "<>"], b"Return-Path: <>\n"),
        (["-f<>"], b"Return-Path: <>\n"),
    ],
)
def test_sender_forms(run, tmp_path, args, header):
    md = tmp_path / "M"
    r = run("deliver", f"--maildir={md}", *args, input=MSG)
    assert r.returncode == 0, r.stderr
    assert only_message(md) == header + MSG


def test_mbox_from_line_is_dropped(run, tmp_path):
    md = tmp_path / "M"
    r = run("deliver", "--maildir", md, input=b"From alice@example.net Sat Nov 28 10:00:00 2026\n" + MSG)
    assert r.returncode == 0
    assert only_message(md) == MSG


def test_folder_is_created_as_maildirplusplus(run, tmp_path):
    md = tmp_path / "M"
    r = run("deliver", "--maildir", md, "--folder", "Lists/python", input=MSG)
    assert r.returncode == 0, r.stderr
    assert only_message(md / ".Lists.python") == MSG
    assert (md / ".Lists.python" / "maildirfolder").is_file()
    assert run("deliver", "--maildir", md, "--folder", "INBOX", input=MSG).returncode == 0
    assert only_message(md) == MSG


@pytest.mark.parametrize("name", ["..", "../x", "a/../../b", "x\x01", "cur", "New", "a.b", "/etc", ""])
def test_unsafe_folder_is_a_usage_error_and_writes_nothing(run, tmp_path, name):
    md = tmp_path / "M"
    r = run("deliver", "--maildir", md, "--folder", name, input=MSG)
    assert r.returncode == 64
    assert r.stderr.startswith(b"mailtools deliver: ") and r.stderr.count(b"\n") == 1
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


# -- exit codes ------------------------------------------------------------------------------


def test_empty_input_is_65(run, tmp_path):
    r = run("deliver", "--maildir", tmp_path / "M", input=b"")
    assert r.returncode == 65 and b"empty" in r.stderr
    assert files(tmp_path / "M") == []


@pytest.mark.parametrize("args", [[], ["--bogus", "--maildir", "x"], ["--maildir"], ["-f"],
                                  ["--maildir", "a", "--maildir", "b"]])
def test_usage_errors_are_64(run, args):
    r = run("deliver", *args, input=MSG)
    assert r.returncode == 64, r.stderr
    assert r.stderr.startswith(b"mailtools deliver: ") and r.stderr.count(b"\n") == 1, r.stderr


def test_maildir_that_is_a_file_is_73(run, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run("deliver", "--maildir", f, input=MSG)
    assert r.returncode == 73, r.stderr
    assert r.stderr.startswith(b"mailtools deliver: cannot deliver to ")


@pytest.mark.parametrize(
    "err,code", [(errno.ENOSPC, 75), (errno.EDQUOT, 75), (errno.EIO, 75), (errno.EROFS, 75), (errno.EFBIG, 74)]
)
def test_write_failures_map_to_sysexits_and_leave_nothing(tmp_path, monkeypatch, err, code):
    """A failing write (disk full, quota, I/O error) inside the real code path, in process."""
    from mailtools import deliver
    from mailtools.core import exitcodes

    md = tmp_path / "M"
    real_write = os.write

    def failing_write(fd, data):
        if fd > 2:
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    r, w = os.pipe()
    real_write(w, MSG)
    os.close(w)
    monkeypatch.setattr(os, "write", failing_write)
    rc = exitcodes.run("mailtools deliver", deliver.run, str(md), None, None, [], fd=r)
    os.close(r)
    assert rc == code
    assert files(md) == [] and os.listdir(md / "tmp") == []


def test_permission_denied_is_73(tmp_path, monkeypatch):
    from mailtools import deliver
    from mailtools.core import exitcodes

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(os, "makedirs", denied)
    monkeypatch.setattr(os, "open", denied)
    r, w = os.pipe()
    os.write(w, MSG)
    os.close(w)
    assert exitcodes.run("mailtools deliver", deliver.run, str(tmp_path / "M"), None, None, [], fd=r) == 73
    os.close(r)


# -- ADDRESS: the users' Maildirs under the data root ------------------------------------------


def test_address_goes_to_existing_users_maildir(run, home):
    md = home / "mail" / "example.test" / "bob"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    r = run("deliver", "-f", "alice@example.net", "bob@EXAMPLE.test", input=MSG)
    assert r.returncode == 0, r.stderr
    assert only_message(md) == b"Return-Path: <alice@example.net>\nDelivered-To: bob@example.test\n" + MSG


def test_unknown_user_is_67_and_creates_nothing(run, home):
    for addr in ("nobody@example.test", "bob@elsewhere.example", "not-an-address", "../x@example.test"):
        r = run("deliver", addr, input=MSG)
        assert r.returncode == 67, (addr, r.stderr)
        assert b"unknown user" in r.stderr
    assert not (home / "mail").exists()


def test_user_in_users_file_gets_a_new_maildir(run, home):
    (home / "users").write_text("carol@example.test:{SHA512-CRYPT}$6$salt$hash::::::\n")
    r = run("deliver", "carol@example.test", input=MSG)
    assert r.returncode == 0, r.stderr
    md = home / "mail" / "example.test" / "carol"
    assert only_message(md) == b"Delivered-To: carol@example.test\n" + MSG


def test_several_addresses_each_get_their_own_copy(run, home):
    for u in ("bob", "dave"):
        (home / "mail" / "example.test" / u).mkdir(parents=True)
    r = run("deliver", "-f", "", "bob@example.test", "dave@example.test", "bob@example.test", input=MSG_CRLF)
    assert r.returncode == 0, r.stderr
    for u in ("bob", "dave"):
        got = only_message(home / "mail" / "example.test" / u)
        assert got == b"Return-Path: <>\r\nDelivered-To: %s@example.test\r\n" % u.encode() + MSG_CRLF


def test_plus_extension_goes_to_the_base_user(run, home):
    md = home / "mail" / "example.test" / "bob"
    md.mkdir(parents=True)
    r = run("deliver", "bob+lists@example.test", input=MSG)
    assert r.returncode == 0, r.stderr
    assert only_message(md) == b"Delivered-To: bob+lists@example.test\n" + MSG
    assert run("deliver", "carol+x@example.test", input=MSG).returncode == 67
    assert run("deliver", "+x@example.test", input=MSG).returncode == 67


def test_one_unknown_address_delivers_nothing(run, home):
    (home / "mail" / "example.test" / "bob").mkdir(parents=True)
    r = run("deliver", "bob@example.test", "ghost@example.test", input=MSG)
    assert r.returncode == 67
    assert files(home / "mail" / "example.test" / "bob") == []


def test_bad_config_is_78(run, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("no_such_key = 1\n")
    r = run("--config", cfg, "deliver", "bob@example.test", input=MSG)
    assert r.returncode == 78 and b"no_such_key" in r.stderr


def test_as_postfix_mailbox_command(home, tmp_path):
    """Postfix runs mailbox_command through /bin/sh with SENDER and RECIPIENT set."""
    (home / "mail" / "example.test" / "bob").mkdir(parents=True)
    cmd = " ".join(mailtools_cmd()) + ' deliver -f "$SENDER" "$RECIPIENT"'
    env = dict(os.environ, SENDER="alice@example.net", RECIPIENT="bob@example.test")
    r = subprocess.run(["/bin/sh", "-c", cmd], input=MSG, env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert only_message(home / "mail" / "example.test" / "bob").startswith(b"Return-Path: <alice@example.net>\n")


# -- the fast front and the typer definition agree -----------------------------------------------


def test_typer_options_match_fast_front():
    from mailtools.completions import tree
    from mailtools.deliver import OPTIONS

    node = tree().children["deliver"]
    names = {n for o in node.options for n in o.names} - {"--help"}
    assert names == set(OPTIONS)


def test_typer_path_writes_the_same_message(tmp_path):
    """Run through typer (as `mailtools deliver` would without the fast front)."""
    code = textwrap.dedent(
        f"""
        import sys
        from mailtools.cli import run_typer
        sys.exit(run_typer("deliver", ["--maildir", {str(tmp_path / "T")!r}, "-f", "a@example.net", "b@example.test"]))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], input=MSG, capture_output=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert only_message(tmp_path / "T") == b"Return-Path: <a@example.net>\nDelivered-To: b@example.test\n" + MSG
    r = subprocess.run([sys.executable, "-c", code.replace('"-f"', '"--bogus"')], input=MSG, capture_output=True)
    assert r.returncode == 64


def test_help_comes_from_typer(run):
    r = run("deliver", "--help")
    assert r.returncode == 0
    for opt in (b"--maildir", b"--folder", b"-f SENDER", b"ADDRESS"):
        assert opt in r.stdout


def test_delivery_path_imports_nothing_heavy(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from mailtools.__main__ import main
        rc = main(["mailtools", "deliver", "--maildir", {str(tmp_path / "M")!r}, "-f", "a@b.example"])
        heavy = sorted(m for m in ("typer", "click", "rich", "email", "argparse", "asyncio", "tomllib",
                                   "dns", "mailtools.cli") if m in sys.modules)
        print(rc, heavy)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], input=MSG, capture_output=True, timeout=60, cwd=REPO)
    assert r.stdout.decode().strip() == "0 []", r.stdout + r.stderr


# -- durability and concurrency ------------------------------------------------------------------


def light_cmd(*args: str) -> list[str]:
    """`mailtools ARGS` through the same main(), minus site-packages start-up (-S): the 200
    processes below would otherwise spend a minute starting interpreters on two cores."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from mailtools.__main__ import main; sys.exit(main())"
    return [sys.executable, "-S", "-c", code, *args]


def test_two_hundred_concurrent_deliveries_give_two_hundred_files(tmp_path):
    md = tmp_path / "M"
    procs = []
    msgs = [MSG + b"message %d\n" % i + b"x" * random.randint(0, 20000) for i in range(200)]
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp_path / "pyc"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(light_cmd("--version"), env=env, capture_output=True, check=True)  # compile once
    for m in msgs:
        p = subprocess.Popen(light_cmd("deliver", "--maildir", str(md)), stdin=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        procs.append((p, m))
    for p, m in procs:
        p.stdin.write(m)
        p.stdin.close()
    for p, _ in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
        p.stderr.close()
    got = files(md)
    assert len(got) == 200 and len({f.name for f in got}) == 200
    assert sorted(f.read_bytes() for f in got) == sorted(msgs)
    assert os.listdir(md / "tmp") == []


SLOW_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from mailtools.core import maildir
    real_write = os.write
    def slow_write(fd, data):  # 64 KiB at a time, so a kill lands in the middle of the file
        n = real_write(fd, bytes(data[:65536]))
        time.sleep(0.0005)
        return n
    os.write = slow_write
    data = sys.stdin.buffer.read()
    sys.stdout.write("start\\n"); sys.stdout.flush()
    maildir.deliver_path(sys.argv[1], data)
    """
)


def _check_no_partial(md: Path, expected: set[bytes]) -> int:
    n = 0
    for f in files(md):
        assert f.read_bytes() in expected, f"partial or foreign message {f}"
        n += 1
    return n


def test_sigkill_at_random_points_never_leaves_a_partial_message(tmp_path):
    """Kill deliveries with SIGKILL at random moments: new/ and cur/ hold whole messages only."""
    md = tmp_path / "M"
    rng = random.Random(1234)
    big = MSG + os.urandom(2_000_000).hex().encode()  # 4 MB: writing it takes a while

    def start(data: bytes, maildir: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(maildir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=REPO)
        p.stdin.write(data)
        p.stdin.close()
        p.stdout.readline()  # the child has the message and is about to deliver
        return p

    # How long a whole delivery takes on this machine now (a loaded one is many times slower):
    # the kills are spread over 1.5 times that, so some land mid-write and some after delivery.
    took = []
    for _ in range(2):
        p = start(big, tmp_path / "unkilled")
        t = time.monotonic()
        assert p.wait(60) == 0
        took.append(time.monotonic() - t)
        p.stdout.close()
    window = 1.5 * max(took)
    killed_mid_write = delivered = 0
    i = 0
    while i < 25 or not (killed_mid_write and delivered):
        assert i < 100, ("kills never landed both mid-write and after delivery", killed_mid_write, delivered)
        data = big + b"%d\n" % i
        p = start(data, md)
        time.sleep(rng.uniform(0, window))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        before = delivered
        delivered = _check_no_partial(md, {big + b"%d\n" % k for k in range(i + 1)})
        if delivered == before and any(os.path.getsize(t) for t in (md / "tmp").iterdir()):
            killed_mid_write += 1
        i += 1
    # the test means something only if some kills landed mid-write and some after delivery
    assert killed_mid_write > 0 and delivered > 0, (killed_mid_write, delivered)


def test_sigkill_of_the_real_command(tmp_path):
    """The same with the real `mailtools deliver` process, killed at random times."""
    md = tmp_path / "M"
    rng = random.Random(99)
    msgs = set()
    for i in range(15):
        data = MSG + b"%d\n" % i + b"y" * 3_000_000
        msgs.add(data)
        p = subprocess.Popen([*mailtools_cmd(), "deliver", "--maildir", str(md)], stdin=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        try:
            p.stdin.write(data)
            p.stdin.close()
        except BrokenPipeError:
            pass
        time.sleep(rng.uniform(0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        _check_no_partial(md, msgs)


# -- the fast parser agrees with typer/click on every option form -------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789@._/", min_size=1, max_size=12)


@st.composite
def command_lines(draw):
    args: list[str] = []
    for opt in draw(st.permutations(["--maildir", "--folder", "-f"])):
        if draw(st.booleans()):
            value = draw(WORD)
            form = draw(st.sampled_from(["split", "glued"]))
            if form == "split":
                args += [opt, value]
            else:
                args.append(f"{opt}={value}" if opt.startswith("--") else f"{opt}{value}")
        for _ in range(draw(st.integers(0, 2))):
            args.append(draw(WORD))
    return args


@settings(max_examples=60, deadline=None)
@given(command_lines())
def test_fast_parser_matches_click(argv):
    import typer.main

    from mailtools.cli import build_app
    from mailtools.deliver import parse_args

    global _CLICK_DELIVER
    if "_CLICK_DELIVER" not in globals():
        _CLICK_DELIVER = typer.main.get_command(build_app(only="deliver")).commands["deliver"]
    ctx = _CLICK_DELIVER.make_context("deliver", list(argv))
    fast = parse_args(argv)
    assert {k: ctx.params[k] for k in ("maildir", "folder", "sender")} == {k: fast[k] for k in ("maildir", "folder", "sender")}
    assert list(ctx.params["addresses"] or []) == fast["addresses"]
