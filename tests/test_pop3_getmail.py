"""getmail6 against pop3-serve: a 500-message maildrop retrieved completely, then a second run
that fetches nothing new (getmail remembers UIDLs in its oldmail file)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailtools.core import maildir
from pop3_support import PASSWORD
from test_pop3_fetchmail import COUNT, USER, pop, subjects  # noqa: F401 - pop is a fixture


@pytest.mark.skipif(not shutil.which("getmail"), reason="getmail6 not installed")
def test_getmail(pop, tmp_path):
    import tempfile

    # as root getmail delivers as `nobody`, who cannot enter pytest's private tmp_path
    outside = Path(tempfile.mkdtemp(prefix="pop3-getmail-"))
    outside.chmod(0o711)
    try:
        _getmail(pop, tmp_path, outside / "Maildir")
    finally:
        shutil.rmtree(outside)


def _getmail(pop, tmp_path, dest):
    maildir.make_dirs(str(dest))
    user = ""
    if os.geteuid() == 0:  # getmail refuses to deliver as root: it switches to `user`
        import pwd

        nobody = pwd.getpwnam("nobody")
        for d in (dest, dest / "new", dest / "cur", dest / "tmp"):
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        user = "user = nobody\n"
    gdir = tmp_path / "getmail"
    gdir.mkdir()
    (gdir / "getmailrc").write_text(
        "[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
        f"port = {pop.port}\nusername = {USER}\npassword = {PASSWORD}\n"
        f"[destination]\ntype = Maildir\npath = {dest}/\n{user}"
        "[options]\nread_all = false\ndelete = false\nverbose = 1\n"
    )

    def run():
        r = subprocess.run(["getmail", "--getmaildir", str(gdir), "--rcfile", "getmailrc"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()[-2000:]
        return r.stdout.decode()

    out = run()
    files = [p for p in (dest / "new").iterdir()]
    assert len(files) == COUNT, out[-1000:]
    assert subjects(files) == set(range(COUNT))
    out = run()
    assert "0 messages" in out and len(list((dest / "new").iterdir())) == COUNT, out[-1000:]
