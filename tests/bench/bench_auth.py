#!/usr/bin/env python3
"""bench_auth.py - the cost of one password check (a login), mailtools.core.auth against
Dovecot's own code, on hashes `doveadm pw` made.

    python3 tests/bench/bench_auth.py [-n 9]

For each scheme: mailtools' in-process verification (Users.verify through a users file) and
`doveadm pw -t HASH -p PASSWORD`, whose process start-up is measured on a {PLAIN} hash and
subtracted, so both figures are the verification alone. Medians of N; the ratio is
mailtools/Dovecot (below 1 is faster). Also an unknown user's cost (the dummy verification).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mailtools.core.auth import Users  # noqa: E402

SCHEMES = ("ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT")


def median_ms(fn, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=9)
    a = ap.parse_args()
    doveadm = shutil.which("doveadm")
    if not doveadm:
        sys.exit("doveadm (dovecot-core) is needed: it makes the hashes and is the reference")

    def dove(stored: str, pw: str = "pw") -> None:
        subprocess.run([doveadm, "pw", "-t", stored, "-p", pw], check=True, capture_output=True)

    floor = median_ms(lambda: dove("{PLAIN}pw"), a.n)
    print(f"doveadm pw -t process floor ({{PLAIN}}): {floor:.1f} ms (subtracted below)")
    work = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    try:
        lines = []
        for scheme in SCHEMES:
            stored = subprocess.run([doveadm, "pw", "-s", scheme, "-p", "pw"], capture_output=True,
                                    text=True, check=True).stdout.strip()
            lines.append((scheme, stored))
        (work / "users").write_text("".join(f"{s.lower()}@example.test:{h}::::::\n" for s, h in lines))
        users = Users(work / "users")
        print(f"{'scheme':<14}{'mailtools':>12}{'dovecot':>12}{'ratio':>8}")
        for scheme, stored in lines:
            ours = median_ms(lambda: users.verify(f"{scheme.lower()}@example.test", "pw"), a.n)
            raw = median_ms(lambda: dove(stored), a.n)
            theirs = raw - floor
            if theirs < max(2.0, floor * 0.1):  # lost in the noise of doveadm's start-up
                print(f"{scheme:<14}{ours:10.1f}ms   (doveadm {raw:.1f} ms, within its start-up noise: no ratio)")
            else:
                print(f"{scheme:<14}{ours:10.1f}ms{theirs:10.1f}ms{ours / theirs:7.2f}x")
        unknown = median_ms(lambda: users.verify("nobody@example.test", "pw"), a.n)
        print(f"unknown user (dummy verification like the file's typical hash): {unknown:.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
