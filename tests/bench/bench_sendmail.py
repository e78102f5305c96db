#!/usr/bin/env python3
"""bench_sendmail.py - per-message wall time of `sendmail -t -i < 2 KB message`, start-up
included: mailtools two ways, (a) a `sendmail` symlink to the installed console script and (b)
the launcher `mailtools submit --install-sendmail` writes (`#!python -IS`: no site), against
Postfix's /usr/sbin/sendmail (hand-off to postdrop; the Postfix daemon may be stopped, the
maildrop keeps it) and msmtp in sendmail mode handing to a local smtp-sink; plus the two
interpreter floors (`python -c pass`, `python -I -S -c pass`).

    python3 tests/bench/bench_sendmail.py [-n 50] [--python /usr/bin/python3]

--python: also the launcher and the -I -S floor of another interpreter (say Debian's python3,
built with PGO/LTO and a static libpython, unlike a pyenv build), from a venv of it holding a
copy of this checkout's mailtools, as `pip install .` there would have it.

Each figure: median (min-max) of N runs after 3 warm-ups (like reference-bench/cmdtime.py); the
commands take turns run by run, so load from other users of the machine hits all alike.
Files this run adds to Postfix's maildrop are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared loopback helpers
from support_net import free_port  # noqa: E402

MAILDROP = Path("/var/spool/postfix/maildrop")
REPO = Path(__file__).resolve().parent.parent.parent


CPU: dict[str, float] = {}


def once(cmd, stdin_file, env=None) -> tuple[float, float]:
    """(wall ms, cpu ms) of one run; any failure aborts the benchmark."""
    with open(stdin_file, "rb") if stdin_file else open(os.devnull, "rb") as f:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.monotonic()
        p = subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        dt = time.monotonic() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"exit {p.returncode}: {cmd}: {p.stderr.decode(errors='replace')}")
    return dt * 1000, ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) * 1000


def timed_interleaved(cases: dict, n: int, warmup: int = 3) -> dict:
    """cases: key -> (cmd, stdin file or None, env). Runs them in turns; key -> (walls, cpu)."""
    runs: dict = {k: [] for k in cases}
    for i in range(warmup + n):
        for key, (cmd, stdin_file, env) in cases.items():
            r = once(cmd, stdin_file, env)
            if i >= warmup:
                runs[key].append(r)
    return {k: (sorted(w for w, _ in rs), statistics.median(c for _, c in rs)) for k, rs in runs.items()}


def show(label, result):
    walls, cpu = result
    med = statistics.median(walls)
    CPU[label] = cpu
    print(f"{label:<48} median {med:7.1f} ms  (min {walls[0]:.1f}, max {walls[-1]:.1f}, n={len(walls)}), "
          f"cpu {cpu:.1f} ms")
    return med


def venv_with_mailtools(python: str, dest: Path) -> Path:
    """A venv of `python` with a byte-compiled copy of mailtools in its site-packages (the
    sendmail path needs no third-party package); returns the venv's interpreter."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(dest)], check=True)
    vpy = dest / "bin" / "python3"
    purelib = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    shutil.copytree(REPO / "mailtools", Path(purelib) / "mailtools", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    subprocess.run([str(vpy), "-m", "compileall", "-q", str(Path(purelib) / "mailtools")], check=True, env=env)
    return vpy


def script_path() -> str:
    cand = Path(sys.executable).parent / "mailtools"
    return str(cand) if cand.exists() else shutil.which("mailtools") or sys.exit("mailtools not installed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--python", help="also measure the launcher on this interpreter")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sendmail-"))
    root = work / "root"
    root.mkdir()
    cfg = work / "mailtools.toml"
    cfg.write_text(f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n')
    (work / "sendmail").symlink_to(script_path())
    eml = work / "msg.eml"
    body = "".join(f"line {i:04d} of the benchmark message, padded to a realistic width.....\n" for i in range(26))
    eml.write_text("From: bench@example.test\nTo: user@example.test\nSubject: bench\n\n" + body[: 2048 - 60])
    # Byte code as an installed package has it (pip compiles on install). Where
    # PYTHONDONTWRITEBYTECODE is set (as in some sandboxes) every run would compile mailtools
    # from source; a private pycache prefix, filled by the warm-up runs, avoids that without
    # writing into the source tree. The interpreter floor runs with the same settings.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # XDG_CACHE_HOME: the parsed-config cache (core/config.py) of this run alone, so parallel
    # test runs of other configurations do not evict it.
    env.update(MAILTOOLS_CONFIG=str(cfg), PYTHONPYCACHEPREFIX=str(work / "pycache"),
               XDG_CACHE_HOME=str(work / "cache"))
    print(f"message: {eml.stat().st_size} bytes; N={a.n}; load average {os.getloadavg()[0]:.1f}")

    # (b) the launcher, written by the real command; it keeps the pycache prefix of env
    launcher = work / "sbin" / "sendmail"
    launcher.parent.mkdir()
    subprocess.run([script_path(), "submit", "--install-sendmail", str(launcher)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    py = Path(sys.executable).name
    other = None
    if a.python:  # its own launcher, byte code from compileall (no pycache prefix to keep)
        other = venv_with_mailtools(a.python, work / "venv-other")
        plain = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
        subprocess.run([str(other), "-m", "mailtools", "submit", "--install-sendmail", str(work / "sbin" / "sendmail-other")],
                       env=plain, check=True, stdout=subprocess.DEVNULL)
    cases = {
        "mailtools": ("mailtools sendmail -t -i (symlink)", [str(work / "sendmail"), "-t", "-i"], eml, env),
        "launcher": ("mailtools sendmail -t -i (launcher, -I -S)", [str(launcher), "-t", "-i"], eml, env),
    }
    if Path("/usr/sbin/sendmail").exists() and Path("/usr/sbin/postdrop").exists():
        cases["postfix"] = ("postfix /usr/sbin/sendmail -t -i", ["/usr/sbin/sendmail", "-t", "-i"], eml, None)
    else:
        print("postfix sendmail: not installed, skipped")
    sink = None
    if shutil.which("msmtp") and shutil.which("smtp-sink"):
        port = free_port()
        sink = subprocess.Popen(["smtp-sink", *(["-u", "nobody"] if os.getuid() == 0 else []), "-c", f"127.0.0.1:{port}", "100"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        rc = work / "msmtprc"
        rc.write_text(f"defaults\nauth off\ntls off\naccount default\nhost 127.0.0.1\nport {port}\nfrom bench@example.test\n")
        rc.chmod(0o600)
        cases["msmtp"] = ("msmtp -t -i (SMTP to a local smtp-sink)", ["msmtp", "-C", str(rc), "-t", "-i"], eml, None)
    else:
        print("msmtp / smtp-sink: not installed, skipped")
    cases["python"] = (f"{py} -c pass (floor of the symlink)", [sys.executable, "-c", "pass"], None, env)
    cases["python_S"] = (f"{py} -I -S -c pass (floor of the launcher)", [sys.executable, "-I", "-S", "-c", "pass"], None, env)
    if other:
        cases["other"] = (f"launcher on {a.python}", [str(work / "sbin" / "sendmail-other"), "-t", "-i"], eml, plain)
        cases["other_S"] = (f"{a.python} -I -S -c pass", [a.python, "-I", "-S", "-c", "pass"], None, plain)

    before = set(os.listdir(MAILDROP)) if MAILDROP.exists() else set()
    try:
        timings = timed_interleaved({k: (cmd, f, e) for k, (_, cmd, f, e) in cases.items()}, a.n)
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(5)
        if MAILDROP.exists():
            for name in set(os.listdir(MAILDROP)) - before:
                try:
                    os.unlink(MAILDROP / name)
                except OSError:
                    pass
    queued = len(list((root / "queue" / "new").iterdir()))
    expect = (3 if other else 2) * (a.n + 3)
    assert queued == expect, f"expected {expect} queue entries, found {queued}"
    results = {k: show(label, timings[k]) for k, (label, *_rest) in cases.items()}
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    print()
    for key, label, floor_key in (("mailtools", "symlink", "python"), ("launcher", "launcher", "python_S"),
                                  ("other", "--python", "other_S")):
        if key not in results:
            continue
        m = results[key]
        floor = results[floor_key]
        for ref, ref_label in (("postfix", "Postfix sendmail"), ("msmtp", "msmtp")):
            if ref in results:
                print(f"ratio mailtools ({label:<8}) / {ref_label:<17} {m / results[ref]:5.2f}x")
        if "postfix" in results:  # CPU time: what the load average does not stretch
            c = CPU[cases[key][0]] / CPU[cases["postfix"][0]]
            print(f"cpu   mailtools ({label:<8}) / Postfix sendmail  {c:5.2f}x")
        print(f"ratio mailtools ({label:<8}) / its interpreter floor {m / floor:5.2f}x;"
              f"  own work (median - floor) {m - floor:5.1f} ms")
    if "postfix" in results:
        print("goal: launcher within 1.5x of Postfix's sendmail")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
