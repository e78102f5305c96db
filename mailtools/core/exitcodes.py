"""The one exit-code map (sysexits.h) and the wrapper that turns exceptions into it.

Every subcommand runs through :func:`run`, so a failure always ends as one line on stderr,
prefixed with the command's name, and a sysexits code a caller (an MTA, cron, a script) can act
on. Nothing here imports anything heavy: the sendmail and deliver paths load this module.
"""

from __future__ import annotations

import errno
import os
import sys

OK = 0
USAGE = 64  # command line usage error
DATAERR = 65  # bad input data
NOINPUT = 66  # input file missing
NOUSER = 67  # addressee unknown
NOHOST = 68  # host name unknown / no mail there
UNAVAILABLE = 69  # service unavailable
SOFTWARE = 70  # internal error
OSERR = 71
OSFILE = 72
CANTCREAT = 73  # cannot create (user) output file
IOERR = 74  # input/output error
TEMPFAIL = 75  # temporary failure, the caller should retry
PROTOCOL = 76
NOPERM = 77
CONFIG = 78  # configuration error


class MailtoolsError(Exception):
    """An error that ends a command with a known exit code and a one-line message."""

    code = SOFTWARE

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(MailtoolsError):
    code = USAGE


class DataError(MailtoolsError):
    code = DATAERR


class NoUser(MailtoolsError):
    code = NOUSER


class NoHost(MailtoolsError):
    code = NOHOST


class Unavailable(MailtoolsError):
    code = UNAVAILABLE


class CantCreate(MailtoolsError):
    code = CANTCREAT


class IOFailure(MailtoolsError):
    code = IOERR


class TempFail(MailtoolsError):
    code = TEMPFAIL


class ConfigError(MailtoolsError):
    code = CONFIG


# errno values a later retry may fix: the calling MTA should keep the message and try again.
_TEMPORARY_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.EIO,
    errno.ENFILE, errno.EMFILE, errno.ENOMEM, errno.ETIMEDOUT, errno.ESTALE, errno.EROFS,
}


def code_for_oserror(exc: OSError) -> int:
    """Map an OSError to a sysexits code: 75 when a retry may help, 73 for permissions."""
    if exc.errno in _TEMPORARY_ERRNOS:
        return TEMPFAIL
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CANTCREAT
    return TEMPFAIL


def _quiet_stdout() -> None:
    # A closed stdout (`mailtools ... | head`) is not an error: point stdout at /dev/null so the
    # interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def error(name: str, message: str) -> None:
    """Print the one-line error message for command `name`."""
    try:
        sys.stderr.write(f"{name}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def standard_fds() -> None:
    """Standard input, output and error open, on /dev/null where the caller closed them (as
    Postfix's sendmail does): else the first file we open (a queue entry, a Maildir file) would
    be fd 1 or 2, and Python leaves sys.stdout None (it does so exactly when the descriptor was
    not open), which the first print or flush would trip over. Cron and daemons start jobs so."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, mode, closefd=False))


def run(name: str, fn, *args, **kwargs) -> int:
    """Call fn and turn its outcome into an exit code; never lets a traceback reach the user."""
    try:
        rc = fn(*args, **kwargs)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        if rc is NotImplemented:  # a fast front handing over to typer
            return rc
        return OK if rc is None else int(rc)
    except MailtoolsError as exc:
        error(name, str(exc))
        return exc.code
    except BrokenPipeError:
        _quiet_stdout()
        return OK
    except KeyboardInterrupt:
        error(name, "interrupted")
        return 130
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        error(name, f"{exc.strerror or exc}{where}")
        return code_for_oserror(exc)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that catches everything
        error(name, f"internal error: {type(exc).__name__}: {exc}")
        if os.environ.get("MAILTOOLS_DEBUG"):
            import traceback

            traceback.print_exc()
        return SOFTWARE
