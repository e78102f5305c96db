"""`mailtools submit --install-sendmail PATH`: write a small sendmail launcher script at PATH.

cron, PHP, git and mutt start sendmail once per message, so interpreter start-up is most of its
cost. A console-script symlink runs Python with `site`, which processes every `.pth` file of the
installation (an editable install's import finder, setuptools' distutils hook) before mailtools
gets control; `python3 -I -S` skips all of that. The launcher is

    #!<this interpreter> -IS
    import gc; gc.disable()
    import sys
    sys.path.append("<the directory that holds the mailtools package>")
    from mailtools.submit.front import launcher_main  # (exit 75 if it is gone)
    sys.exit(launcher_main(sys.argv))

-I (isolated: no PYTHON* variables, no user site, no script directory on sys.path) and -S (no
site). The cyclic garbage collector is off from the first line: the imports alone allocate enough
to trigger a few collections (2% of the launcher's instructions) that find nothing;
front.process_main turns it on again for the modes that keep running (-q, -bs, the servers). The package directory goes after the standard library, so nothing beside mailtools in it
can shadow a standard module. The sendmail path needs nothing but the standard library; the
modes that use third-party packages (-q, -bs, -bd, --listen) load `site` first (front.py).
It works the same for `pip install .` (the directory is site-packages) and an editable install
(the source tree). Called through a link named `mailq` it is `sendmail -bp`.

The launcher names the interpreter and the directory it was written for: write it again after
moving mailtools to another Python or directory (upgrades in place need nothing).
"""

from __future__ import annotations

import os
import sys

from mailtools.core.exitcodes import CantCreate

MARKER = "# mailtools sendmail launcher"

TEMPLATE = """\
#!{python} -IS
{marker}, written by `mailtools submit --install-sendmail` (mailtools {version}).
# -I -S: no site start-up hooks, no PYTHON* variables; see mailtools-submit(1).
import gc; gc.disable()  # queuing a message makes no garbage cycles; other modes enable it again
import sys
PACKAGE = {package_dir!r}
sys.path.append(PACKAGE)
{pycache}try:
    from mailtools.submit.front import launcher_main
except ImportError as exc:  # mailtools moved or removed: 75 = try again later (sysexits)
    sys.stderr.write(f"sendmail: cannot load mailtools from {{PACKAGE}} ({{exc}}); "
                     "run 'mailtools submit --install-sendmail' again\\n")
    sys.exit(75)
sys.exit(launcher_main(sys.argv))
"""

# Linux reads at most 255 bytes of a #! line (127 before 5.1); stay well below either.
_MAX_SHEBANG = 120


def package_dir() -> str:
    """The directory holding the `mailtools` package this process runs from."""
    import mailtools

    return os.path.dirname(os.path.dirname(os.path.abspath(mailtools.__file__)))


def render(python: str | None = None, package: str | None = None, pycache_prefix: str | None = None) -> str:
    from mailtools import __version__

    python = python or sys.executable
    if not python or not os.path.isabs(python):
        raise CantCreate("cannot tell which Python runs mailtools (sys.executable is empty)")
    if any(c.isspace() for c in python) or len(python) > _MAX_SHEBANG:
        raise CantCreate(f"the interpreter path {python!r} cannot go on a #! line "
                         "(spaces, or too long): keep the plain 'sendmail' symlink instead")
    # PYTHONPYCACHEPREFIX is ignored under -I: keep the byte-code cache the installer used.
    pycache = f"sys.pycache_prefix = {pycache_prefix!r}\n" if pycache_prefix else ""
    return TEMPLATE.format(python=python, marker=MARKER, version=__version__,
                           package_dir=package or package_dir(), pycache=pycache)


def _replaceable(path: str) -> bool:
    """True when path is absent, a dangling link, or mailtools already (a launcher, or a link
    to the mailtools console script or to a launcher): never overwrite another MTA's sendmail."""
    if not os.path.lexists(path):
        return True
    if os.path.isdir(path):
        return False
    if os.path.islink(path) and not os.path.exists(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and (MARKER.encode() in head or b"mailtools.__main__" in head)


def install(path: str) -> str:
    """Write the launcher at path atomically (mode 0755): a temporary file in the same
    directory, fsynced, renamed over path, directory fsynced. Returns the text written."""
    path = os.path.abspath(path)
    if not _replaceable(path):
        raise CantCreate(f"{path} exists and is not mailtools (another MTA's sendmail?): "
                         "remove or move it first")
    text = render(pycache_prefix=sys.pycache_prefix)
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.mailtools-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o755)  # whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CantCreate(f"cannot write {path}: {exc.strerror or exc}") from None
    from mailtools.core.maildir import _fsync_dir

    _fsync_dir(directory)
    return text
