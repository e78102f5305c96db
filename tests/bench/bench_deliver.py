#!/usr/bin/env python3
"""Benchmark: `mailtools deliver --maildir` against Dovecot's dovecot-lda, one process per message.

The workload is the reference one (tests/bench/workload, anchor 4 of the reference figures): COUNT messages of
2-20 KB, generated with a fixed seed, each delivered by its own process as an MTA invokes an
MDA, sequentially (or --parallel N at a time). Both sides get the same messages in the same run,
interleaved in chunks so that load drift on a shared machine hits both alike; each side's
Maildir ends up holding all COUNT messages. Prints msg/s of each and the ratio.

    python3 tests/bench/bench_deliver.py [--count 2000] [--parallel 1] [--chunk 250] [--clean-venv]

mailtools runs through its installed console script (the real one, not a pyenv shim) with its
bytecode cached, as after `pip install`. With --clean-venv it is measured a second time from a
fresh venv without the system site-packages (the package copied in, the console script written
by pip's own ScriptMaker): what a `pip install .` user gets, without this machine's .pth start-up
hooks (an editable-install finder, a certifi hook) that every interpreter here pays for.
dovecot-lda needs root and Dovecot (a private instance is started and stopped here); without it
only mailtools is measured.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import support_dovecot  # noqa: E402

REFERENCE_GEN = Path(__file__).resolve().parent / "workload" / "gen_maildir.py"


def generate(dest: Path, count: int, seed: int) -> list[Path]:
    """The reference corpus when its generator is at hand, else an equivalent one (2-20 KB)."""
    dest.mkdir(parents=True, exist_ok=True)
    if REFERENCE_GEN.exists():
        subprocess.run([sys.executable, str(REFERENCE_GEN), "eml", str(dest), str(count), "--seed", str(seed)],
                       check=True, stdout=subprocess.DEVNULL)
    else:
        rng = random.Random(seed)
        words = "lorem ipsum dolor sit amet meeting invoice report schedule project release".split()
        for i in range(count):
            size = rng.randint(2048, 20480)
            head = (f"From: a{i}@example.org\nTo: user@example.test\nSubject: message {i}\n"
                    f"Message-ID: <{i}.bench@example.org>\nDate: Sat, 28 Nov 2026 10:00:00 +0000\n\n")
            body, n = [], len(head)
            while n < size:
                line = " ".join(rng.choice(words) for _ in range(10))
                body.append(line)
                n += len(line) + 1
            (dest / f"{i + 1:06d}.eml").write_text(head + "\n".join(body) + "\n")
    return sorted(dest.glob("*.eml"))


def mailtools_script() -> str:
    cand = Path(sysconfig.get_path("scripts")) / "mailtools"
    if cand.exists():
        return str(cand)
    found = shutil.which("mailtools")
    if not found:
        sys.exit("mailtools is not installed (pip install -e .)")
    return found


def clean_venv(dest: Path, repo: Path = HERE.parent.parent) -> str:
    """A venv holding only mailtools (no third-party packages: the paths measured need none),
    with the console script pip would write; returns the script's path."""
    import venv

    from pip._vendor.distlib.scripts import ScriptMaker

    venv.create(dest, with_pip=False, symlinks=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(dest), "platbase": str(dest)}))
    shutil.copytree(repo / "mailtools", site / "mailtools", ignore=shutil.ignore_patterns("__pycache__"))
    maker = ScriptMaker(None, str(dest / "bin"), add_launchers=False)
    maker.executable = str(dest / "bin" / "python3")
    maker.variants = {""}
    maker.make("mailtools = mailtools.__main__:main")
    subprocess.run([str(dest / "bin" / "python3"), "-m", "compileall", "-q", str(site / "mailtools")], check=True,
                   env=_bytecode_env())
    return str(dest / "bin" / "mailtools")


def _bytecode_env(prefix: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if prefix is not None:
        env["PYTHONPYCACHEPREFIX"] = str(prefix)  # the work tree stays clean
    return env


def deliver_all(cmd: list[str], files: list[Path], parallel: int, env=None) -> float:
    """Run cmd once per file (stdin = the file); return the wall time. Any failure aborts."""

    def one(f: Path) -> None:
        with open(f, "rb") as fin:
            r = subprocess.run(cmd, stdin=fin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{cmd[0]} exit {r.returncode} on {f.name}: {r.stderr.decode().strip()}")

    t0 = time.monotonic()
    if parallel <= 1:
        for f in files:
            one(f)
    else:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(one, files))
    return time.monotonic() - t0


def count_files(maildir: Path) -> int:
    return sum(len(os.listdir(maildir / s)) for s in ("new", "cur") if (maildir / s).is_dir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=250, help="messages per side before switching")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--clean-venv", action="store_true", help="also measure a fresh venv install")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mt-bench-deliver-"))
    work.chmod(0o755)
    dovecot = None
    try:
        files = generate(work / "eml", a.count, a.seed)
        sizes = [f.stat().st_size for f in files]
        print(f"workload: {len(files)} messages, {min(sizes)}-{max(sizes)} B (avg {sum(sizes) // len(sizes)} B), "
              f"one process per message, parallel={a.parallel}")

        env = _bytecode_env(work / "pyc")  # bytecode cached, as after pip install
        sides = [("mailtools deliver", mailtools_script(), env)]
        if a.clean_venv:
            sides.append(("mailtools (clean venv)", clean_venv(work / "venv"), _bytecode_env()))
        runs = []
        for label, script, e in sides:
            md = work / label.replace(" ", "_").replace("(", "").replace(")", "") / "Maildir"
            cmd = [script, "deliver", "--maildir", str(md), "-f", "sender@example.test", "user@example.test"]
            subprocess.run([script, "--version"], env=e, check=True, stdout=subprocess.DEVNULL)
            print(f"{label}: {' '.join(cmd[:4])} ...")
            runs.append([label, cmd, e, md, 0.0])
        if support_dovecot.available():
            dovecot = support_dovecot.Dovecot().start()
            print(f"reference: {' '.join(dovecot.lda_cmd())}")
            runs.append(["dovecot-lda", dovecot.lda_cmd(), None, dovecot.maildir, 0.0])
        else:
            print("reference: dovecot-lda not available (needs root and Dovecot): mailtools only")

        for i in range(0, len(files), a.chunk):
            for r in runs:
                r[4] += deliver_all(r[1], files[i : i + a.chunk], a.parallel, r[2])

        rates = {}
        for label, _cmd, _env, md, t in runs:
            assert count_files(md) == len(files), f"{label}: messages missing"
            rates[label] = len(files) / t
            print(f"{label:24s}: {rates[label]:7.1f} msg/s  ({t:.2f} s, {1000 * t / len(files):.1f} ms/msg)")
        if "dovecot-lda" in rates:
            for label in rates:
                if label != "dovecot-lda":
                    print(f"ratio {label} / dovecot-lda: {rates[label] / rates['dovecot-lda']:.2f}x")
        la = os.getloadavg()
        print(f"load average during run: {la[0]:.1f} {la[1]:.1f} {la[2]:.1f} on {os.cpu_count()} CPUs")
    finally:
        if dovecot:
            dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
