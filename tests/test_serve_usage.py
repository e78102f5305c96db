"""serve's command line: a bad --submission-workers is a usage error (64), as DESIGN.md's exit
codes say for a bad option value; it was reported as a configuration error (78) naming the
file's key, though the file was fine."""

from __future__ import annotations


def test_negative_submission_workers_is_a_usage_error(tmp_path, run):
    r = run("serve", "--root", tmp_path / "root", "--submission-workers", "-5",
            env={"MAILTOOLS_CONFIG": "", "MAILTOOLS_HOME": ""})
    assert r.returncode == 64, r.stderr
    assert b"--submission-workers" in r.stderr
