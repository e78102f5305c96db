"""`mailtools submit --install-sendmail PATH`: the `#!python -IS` launcher, as real processes.

The launcher must queue exactly what the symlink queues, work as mailq, load `site` only for
the modes that need third-party packages, refuse to overwrite another MTA's sendmail, and work
from a plain (non-editable) `pip install .` as well as from this editable checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtools.core.queue import Queue
from mailtools.submit import launcher

MSG = b"Subject: launched\nTo: alice@example.test, Bob <bob@example.test>\nBcc: carol@example.test\n\nhello\n"
REPO = Path(__file__).resolve().parent.parent


def entries(root):
    q = root / "queue"
    return sorted(Queue(q).entries(), key=lambda e: e.queued_at) if q.exists() else []


def message_of(root, entry) -> bytes:
    return Queue(root / "queue").read_message(entry)


def call(path, *args, input=MSG, env=None):
    return subprocess.run([str(path), *args], input=input, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def installed(tmp_path, run):
    """The launcher written by the real `mailtools submit --install-sendmail` process."""
    path = tmp_path / "sbin" / "sendmail"
    path.parent.mkdir()
    # -I ignores PYTHONPYCACHEPREFIX; the launcher keeps the installer's, so that byte code
    # goes to tmp_path rather than into the work tree
    r = run("submit", "--install-sendmail", path, env={"PYTHONPYCACHEPREFIX": str(tmp_path / "pyc")})
    assert r.returncode == 0, r.stderr.decode()
    assert str(path).encode() in r.stdout
    return path


def test_launcher_queues_the_message(home, installed):
    text = installed.read_text()
    assert text.startswith(f"#!{sys.executable} -IS\n") and launcher.MARKER in text
    assert installed.stat().st_mode & 0o777 == 0o755
    p = call(installed, "-v", "-t", "-i", "-f", "me@example.test", "dave@example.test")
    assert p.returncode == 0, p.stderr.decode()
    # written before the quick exit (os._exit): nothing buffered is lost
    assert p.stderr.startswith(b"submit[") and p.stderr.endswith(b"from=<me@example.test>, size=%d, nrcpt=4 (queued)\n"
                                                                % len(message_of(home, entries(home)[0])))
    [e] = entries(home)
    assert e.sender == "me@example.test"
    assert [r.address for r in e.recipients] == ["dave@example.test", "alice@example.test",
                                                  "bob@example.test", "carol@example.test"]
    data = message_of(home, e)
    assert data.startswith(b"Received: by mx.example.test (mailtools submit, from userid ")
    assert b"Bcc" not in data and b"\nMessage-ID: <" in data and data.endswith(b"\n\nhello\n")


def test_launcher_is_isolated_from_the_environment(home, installed, tmp_path):
    # -I: PYTHONPATH is not read, so a stray `mailtools` on it cannot take over sendmail
    trap = tmp_path / "trap" / "mailtools"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise SystemExit('the PYTHONPATH copy was imported')\n")
    p = call(installed, "-i", "r@example.test", env={"PYTHONPATH": str(trap.parent)})
    assert p.returncode == 0, p.stderr.decode()
    assert len(entries(home)) == 1
    # refusals keep their exit status and message
    p = call(installed, "-i", "r@example.test", input=b"")
    assert (p.returncode, p.stderr) == (65, b"sendmail: empty message: nothing queued\n")
    p = call(installed, "-C", "/etc/other.cf", "r@example.test")
    assert p.returncode == 64 and p.stderr.startswith(b"sendmail: option -C is not supported")
    assert len(entries(home)) == 1


def test_launcher_path_loads_no_site_no_pathlib_no_re(home, installed, tmp_path):
    # Run the launcher's own lines under -I -S and list what was imported at exit.
    body = installed.read_text().split("\n", 1)[1]
    # A queued message ends with os._exit (no interpreter teardown): list the modules there.
    code = ("import os, sys\n"
            "real_exit = os._exit\n"
            "def _exit(rc):\n"
            "    sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
            "    sys.stderr.flush()\n"
            "    real_exit(rc)\n"
            "os._exit = _exit\n"
            + body)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):  # the first run parses the TOML (tomllib) and caches it; then no more
        p = subprocess.run([sys.executable, "-I", "-S", "-c", code, "-t", "-i"], input=MSG,
                           capture_output=True, timeout=60, env=env)
        assert p.returncode == 0, p.stderr.decode()
    modules = set(p.stderr.decode().split("MODULES ", 1)[1].split())
    assert "mailtools.submit.front" in modules and "mailtools.core.queue" in modules
    heavy = {"site", "pathlib", "re", "typer", "click", "rich", "email", "asyncio", "argparse",
             "tomllib", "importlib.util", "dns", "ssl"} & modules
    assert not heavy
    assert len(entries(home)) == 2


def test_launcher_as_mailq_and_modes_that_need_site(home, installed):
    (installed.parent / "mailq").symlink_to(installed)
    p = call(installed.parent / "mailq", input=b"")
    assert p.returncode == 0 and p.stdout == b"Mail queue is empty\n", p.stderr
    assert call(installed, "-i", "r@example.test").returncode == 0
    p = call(installed.parent / "mailq", "--json", input=b"")
    assert p.returncode == 0 and b'"address":"r@example.test"' in p.stdout
    # -bs and -q import more than the standard library: the launcher loads site for them
    script = b"HELO localhost\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<s@example.test>\r\nDATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    p = call(installed, "-bs", input=script)
    assert b"250 2.0.0 Ok: queued as " in p.stdout, p.stderr.decode()
    assert len(entries(home)) == 2


def test_launcher_runs_the_queue_with_q(home, installed):
    from conftest import free_port

    cfg = Path(os.environ["MAILTOOLS_CONFIG"])
    cfg.write_text(cfg.read_text() + f'[relay]\nsmarthost = "127.0.0.1:{free_port()}"\nconnect_timeout = "2s"\n')
    p = call(installed, "-q", "-f", "s@example.test", "r@remote.test")
    assert p.returncode == 0, p.stderr.decode()
    [e] = entries(home)
    assert e.recipients[0].attempts == 1 and e.recipients[0].state == "deferred"


def test_install_replaces_only_mailtools(home, tmp_path, run):
    foreign = tmp_path / "sendmail"
    foreign.write_text("#!/bin/sh\necho 'another MTA'\n")
    r = run("submit", "--install-sendmail", foreign)
    assert r.returncode == 73 and b"is not mailtools" in r.stderr
    assert foreign.read_text() == "#!/bin/sh\necho 'another MTA'\n"
    # a symlink to the mailtools console script (the README's first way) is replaced
    script = shutil.which("mailtools", path=os.path.dirname(sys.executable)) or shutil.which("mailtools")
    if script:
        link = tmp_path / "link-sendmail"
        link.symlink_to(script)
        assert run("submit", "--install-sendmail", link).returncode == 0
        assert not link.is_symlink() and launcher.MARKER in link.read_text()
        assert Path(script).exists()  # the script itself is untouched
    # and a launcher is rewritten in place
    again = tmp_path / "again"
    assert run("submit", "--install-sendmail", again).returncode == 0
    assert run("submit", "--install-sendmail", again).returncode == 0
    assert run("submit", "--install-sendmail", tmp_path).returncode == 73  # a directory
    assert run("submit", "--install-sendmail").returncode == 64
    assert [p.name for p in tmp_path.iterdir() if ".mailtools-" in p.name] == []  # no temp files left


def test_launcher_without_mailtools_is_a_temporary_failure(tmp_path):
    # mailtools moved away after the launcher was written: 75 (the caller retries), a hint
    odd = tmp_path / "gone {x} 'q\""
    path = tmp_path / "sendmail"
    path.write_text(launcher.render(python=sys.executable, package=str(odd)))
    path.chmod(0o755)
    p = call(path, "r@example.test")
    assert p.returncode == 75
    assert p.stderr.decode() == (f"sendmail: cannot load mailtools from {odd} (No module named 'mailtools'); "
                                 "run 'mailtools submit --install-sendmail' again\n")


def test_render_refuses_an_interpreter_path_a_shebang_cannot_hold():
    from mailtools.core.exitcodes import CantCreate

    with pytest.raises(CantCreate):
        launcher.render(python="/opt/my python/bin/python3")
    with pytest.raises(CantCreate):
        launcher.render(python="/" + "x" * 200)
    text = launcher.render(python="/usr/bin/python3", package="/srv/lib", pycache_prefix="/var/cache/pyc")
    assert text.splitlines()[0] == "#!/usr/bin/python3 -IS"
    assert "PACKAGE = '/srv/lib'" in text and "sys.pycache_prefix = '/var/cache/pyc'" in text


def test_launcher_from_a_plain_pip_install(home, tmp_path):
    """`pip install .` (not editable) into a fresh venv: the launcher it writes points at that
    venv's site-packages and queues a message."""
    src = tmp_path / "src"  # the checkout as a release has it (pip builds in its source tree)
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "tests", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        str(src)], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    site_packages = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, check=True).stdout.decode().strip()
    assert (Path(site_packages) / "mailtools" / "submit" / "launcher.py").exists()
    target = tmp_path / "sendmail"
    r = subprocess.run([str(venv / "bin" / "mailtools"), "submit", "--install-sendmail", str(target)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    text = target.read_text()
    assert text.startswith(f"#!{py} -IS\n") and f"PACKAGE = {site_packages!r}" in text
    assert str(REPO) not in text
    p = call(target, "-t", "-i")
    assert p.returncode == 0, p.stderr.decode()
    [e] = entries(home)
    assert [r.address for r in e.recipients] == ["alice@example.test", "bob@example.test", "carol@example.test"]


def test_exit_handlers_still_run_through_the_link(home, tmp_path):
    """The `sendmail` link skips the interpreter's teardown only when nothing registered an exit
    handler: one from a sitecustomize (as coverage's subprocess hook does) still runs."""
    script = shutil.which("mailtools", path=os.path.dirname(sys.executable)) or shutil.which("mailtools")
    if not script:
        pytest.skip("the mailtools console script is not installed")
    link = tmp_path / "sendmail"
    link.symlink_to(script)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "atexit.register(lambda: open(os.environ['EXIT_MARK'], 'w').write('ran'))\n")
    mark = tmp_path / "mark"
    p = call(link, "-i", "r@example.test", env={"PYTHONPATH": str(hook), "EXIT_MARK": str(mark)})
    assert p.returncode == 0, p.stderr.decode()
    assert mark.read_text() == "ran"
    assert len(entries(home)) == 1


# core/config.py parses durations without `re` (not imported on the sendmail path); it must
# accept and refuse exactly what the regex it replaced did.
_DURATION_RE = r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0129.smhdwx \t\n-+e\u0665\u00b2", max_size=8))
def test_parse_duration_agrees_with_the_regex(text):
    import re

    from mailtools.core.config import _UNITS, parse_duration

    m = re.match(_DURATION_RE, text)
    expected = float(m.group(1)) * _UNITS[m.group(2)] if m else None
    try:
        got = parse_duration(text)
    except ValueError:
        got = None
    assert got == expected


def test_closed_standard_descriptors(home, installed):
    """A caller that closed stdout/stderr (some daemons do) still gets exit 0 and a clean
    entry; a closed stdin is an empty message (65), not an internal error."""
    q = f"'{installed}'"
    p = subprocess.run(["sh", "-c", f"exec {q} -v -t -i >&- 2>&-"], input=MSG, timeout=60)
    assert p.returncode == 0
    [e] = entries(home)
    assert message_of(home, e).endswith(b"\n\nhello\n") and b"submit[" not in message_of(home, e)
    p = subprocess.run(["sh", "-c", f"exec {q} -i r@example.test <&-"], capture_output=True, timeout=60)
    assert (p.returncode, p.stderr) == (65, b"sendmail: empty message: nothing queued\n")
    assert len(entries(home)) == 1


def test_quick_exit_waits_for_a_live_thread(tmp_path):
    """The os._exit shortcut is skipped while another thread is alive: its work completes."""
    mark = tmp_path / "mark"
    code = ("import sys, threading, time\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from mailtools.submit import front\n"
            "def work():\n"
            "    time.sleep(0.3)\n"
            f"    open({str(mark)!r}, 'w').write('done')\n"
            "threading.Thread(target=work).start()\n"
            "front._quick_exit(3)\n"
            "sys.exit(4)\n")
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 4, p.stderr.decode()  # returned: the normal exit, which waits
    assert mark.read_text() == "done"
    # and with no other thread it does end the process at once, with its code
    code = f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom mailtools.submit import front\nfront._quick_exit(3)\nsys.exit(4)\n"
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 3, p.stderr.decode()
