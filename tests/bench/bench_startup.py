#!/usr/bin/env python3
"""Benchmark: start-up of `mailtools --help` and `mailtools deliver` against a bare interpreter.

Whole-process wall time (fork + exec + exit), median of N runs (default 20), the commands
interleaved run by run so that load on a shared machine hits all alike. The interpreter is the
one in the console script's #! line, so `python3 -c pass` is the same Python mailtools runs on.
Also shows which modules `mailtools deliver` imports beyond the bare interpreter (the budget:
no typer, rich, email, argparse, asyncio, tomllib on the delivery path).

    python3 tests/bench/bench_startup.py [-n 20] [--clean-venv]

--clean-venv measures a fresh venv install as well (see bench_deliver.py): without this
machine's .pth start-up hooks, which every interpreter here pays for.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deliver import _bytecode_env, clean_venv, mailtools_script  # noqa: E402

MSG = b"From: a@example.test\nTo: b@example.test\nSubject: start-up\n\nhello\n"
HEAVY = ("typer", "click", "rich", "email", "argparse", "asyncio", "tomllib", "dns", "pathlib", "typing")


def interpreter_of(script: str) -> str:
    with open(script, "rb") as f:
        first = f.readline().decode().strip()
    if first.startswith("#!") and "python" in first:
        return first[2:].split()[0]
    return sys.executable


def wall(cmd: list[str], stdin: bytes, env) -> float:
    t = time.monotonic()
    r = subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode().strip()}")
    return dt


def extra_modules(python: str, script: str, args: list[str], env) -> list[str]:
    """Modules the command imports that `python -c pass` does not (from -X importtime)."""

    def names(cmd):
        r = subprocess.run([python, "-X", "importtime", *cmd], input=MSG, capture_output=True, env=env)
        return {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines() if "|" in line}

    return sorted(names([script, *args]) - names(["-c", "pass"]))


def measure(label: str, script: str, n: int, work: Path, env) -> None:
    python = interpreter_of(script)
    md = str(work / f"md-{abs(hash(script))}")
    cmds = {
        "python3 -c pass": ([python, "-c", "pass"], b""),
        "mailtools --help": ([script, "--help"], b""),
        "mailtools deliver": ([script, "deliver", "--maildir", md], MSG),
    }
    for cmd, stdin in cmds.values():  # warm up: bytecode written, page cache warm
        wall(cmd, stdin, env)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(n):
        for k, (cmd, stdin) in cmds.items():
            times[k].append(wall(cmd, stdin, env))
    base = statistics.median(times["python3 -c pass"])
    print(f"{label}  ({script}; interpreter {python})")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:20s} median {1000 * med:6.1f} ms  (min {1000 * min(ts):6.1f})  ratio {med / base:4.2f}x")
    extra = extra_modules(python, script, ["deliver", "--maildir", md], env)
    heavy = [m for m in extra if m.split(".")[0] in HEAVY]
    print(f"  deliver imports beyond the interpreter: {len(extra)} modules; heavy ones: {heavy or 'none'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--clean-venv", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mt-bench-startup-"))
    try:
        measure("installed console script", mailtools_script(), a.n, work, _bytecode_env(work / "pyc"))
        if a.clean_venv:
            measure("clean venv", clean_venv(work / "venv"), a.n, work, _bytecode_env())
        print("goal: mailtools --help and mailtools deliver within 2x of python3 -c pass")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
