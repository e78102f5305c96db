"""GnuTLS clients against `mailtools serve`: msmtp sends over submission with STARTTLS and over
implicit TLS, and reads nothing back but the Maildir through IMAP. GnuTLS puts the client's
first command in the same TCP segment as its TLS Finished, which the OpenSSL-based tests never
do; a server that drops it hangs these clients."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from test_serve import PASSWORD, add_user, serve, wait_imap_message  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(shutil.which("msmtp") is None, reason="msmtp not installed (.ci/run installs it)")


def _msmtp(s, port, starttls: bool, subject: str):
    msg = f"From: me@localhost\nTo: me@localhost\nSubject: {subject}\n\nsent by msmtp\n".encode()
    args = ["msmtp", "--host=127.0.0.1", f"--port={port}", "--tls=on",
            f"--tls-starttls={'on' if starttls else 'off'}", "--tls-certcheck=off",
            "--auth=plain", "--user=me@localhost", "--passwordeval=cat " + str(s.root.parent / "pw"),
            "--from=me@localhost", "--", "me@localhost"]
    return subprocess.run(args, input=msg, capture_output=True, timeout=30)


@pytest.mark.parametrize("starttls", [True, False], ids=["starttls-587", "implicit-465"])
def test_msmtp_submits_over_tls(serve, tmp_path, starttls):
    s = serve()
    add_user(s)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    port = s.ports["submission" if starttls else "submissions"]
    r = _msmtp(s, port, starttls, f"via msmtp {port}")
    assert r.returncode == 0, (r.stdout, r.stderr)
    (got,) = wait_imap_message(s, "me@localhost")
    assert f"Subject: via msmtp {port}".encode() in got
    assert b"with ESMTPSA" in got
