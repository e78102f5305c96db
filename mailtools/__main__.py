"""Entry point: argv[0] dispatch (sendmail, mailq), global options, fast fronts, then typer.

Nothing heavy is imported here: typer only loads for commands that have no fast front, or for
`--help` of a single command.
"""

from __future__ import annotations

import os
import sys

from mailtools.core import exitcodes


def _load(spec: str):
    module, _, func = spec.partition(":")
    __import__(module)  # not importlib.import_module: importlib costs start-up time
    return getattr(sys.modules[module], func)


def main(argv: list[str] | None = None) -> int:
    whole_process = argv is None  # argv from sys.argv: the program itself, not a caller's test
    argv = list(sys.argv if argv is None else argv)
    prog = os.path.basename(argv[0]) if argv else "mailtools"
    if whole_process and (sys.stdin is None or sys.stdout is None or sys.stderr is None):
        exitcodes.standard_fds()
    if prog in ("sendmail", "mailq"):
        entry = "process_main" if whole_process else "sendmail_main"  # process_main may os._exit
        return exitcodes.run(prog, lambda: _load(f"mailtools.submit.front:{entry}")(argv[1:], prog))
    return dispatch(argv[1:])


def dispatch(args: list[str]) -> int:
    from mailtools import commands

    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if arg == "--version":
            from mailtools import __version__

            sys.stdout.write(f"mailtools {__version__}\n")
            return exitcodes.OK
        if arg in ("--help", "-h"):
            sys.stdout.write(commands.help_text())
            return exitcodes.OK
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
                i += 1
            elif i + 1 < len(args):
                value = args[i + 1]
                i += 2
            else:
                exitcodes.error("mailtools", "--config needs a FILE")
                return exitcodes.USAGE
            from mailtools.core import config  # only now: --help and --version stay light

            config.set_path(value)
            continue
        exitcodes.error("mailtools", f"unknown option {arg!r} (try 'mailtools --help')")
        return exitcodes.USAGE
    if i >= len(args):
        sys.stderr.write(commands.help_text())
        return exitcodes.USAGE
    name, rest = args[i], args[i + 1 :]
    cmd = commands.COMMANDS.get(name)
    if cmd is None:
        exitcodes.error("mailtools", f"unknown command {name!r} (try 'mailtools --help')")
        return exitcodes.USAGE
    if cmd.fast and "--help" not in rest:
        rc = exitcodes.run(f"mailtools {name}", lambda: _load(cmd.fast)(rest))
        if rc is not NotImplemented:
            return rc
    from mailtools.cli import run_typer

    return run_typer(name, rest)


if __name__ == "__main__":
    sys.exit(main())
