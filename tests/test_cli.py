"""The CLI skeleton and the docs that must never drift from it: --help, --version, the
registry against typer, man pages, completions, README and .ci/run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mailtools.commands import COMMANDS

REPO = Path(__file__).resolve().parent.parent


def typer_tree():
    from mailtools.completions import tree

    return tree()


def test_help_lists_every_command(run):
    r = run("--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    for name in COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\s", out, re.M), name


def test_version(run):
    from mailtools import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.decode().strip() == f"mailtools {__version__}"


def test_unknown_command_and_option_are_usage_errors(run):
    r = run("frobnicate")
    assert r.returncode == 64 and b"unknown command" in r.stderr
    r = run("--frob")
    assert r.returncode == 64 and b"unknown option" in r.stderr
    r = run()
    assert r.returncode == 64 and b"Usage:" in r.stderr


def test_registry_matches_typer_app():
    root = typer_tree()
    assert set(root.children) == set(COMMANDS)


def test_help_of_each_command_exits_zero(run):
    for name in COMMANDS:
        r = run(name, "--help")
        assert r.returncode == 0, (name, r.stderr)
        assert f"mailtools {name}".encode() in r.stdout
        # arguments are described by their metavar, not typer's Python type (`<list[str]>`)
        assert not re.search(rb"<(list\[|str>|text>)", r.stdout), (name, r.stdout.decode())


def _long_options(node):
    opts = set()
    for o in node.options:
        opts.update(n for n in o.names if n.startswith("--"))
    for child in node.children.values():
        opts |= _long_options(child)
    return opts


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_man_page_documents_every_option(name):
    page = REPO / "man" / f"mailtools-{name}.1"
    assert page.exists(), f"missing man page {page.name}"
    text = page.read_text().replace("\\-", "-")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"):
        assert re.search(rf'^\.SH "?{section}', text, re.M), (page.name, section)
    node = typer_tree().children[name]
    missing = sorted(o for o in _long_options(node) - {"--help"} if o not in text)
    assert not missing, f"{page.name} lacks {missing}"


def test_main_man_page_lists_commands_and_config_page_lists_keys():
    main = (REPO / "man" / "mailtools.1").read_text().replace("\\-", "-")
    for name in COMMANDS:
        assert f"mailtools-{name}" in main
    conf = re.sub(r"\\f[BIRP]", "", (REPO / "man" / "mailtools.toml.5").read_text()).replace("\\-", "-")
    from mailtools.core.config import SCHEMA

    def keys(schema, prefix=""):
        for k, v in schema.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield prefix, k

    missing = []
    for prefix, key in keys(SCHEMA):
        table = prefix.rstrip(".")
        if table and f"[{table}]" not in conf:
            missing.append(f"[{table}]")
        if not re.search(rf"\b{re.escape(key)}\b", conf):
            missing.append(prefix + key)
    assert not missing, f"mailtools.toml.5 lacks {sorted(set(missing))}"


def test_completions_are_current():
    from mailtools.completions import FILES, generate

    for name, text in generate().items():
        path = REPO / "completions" / name
        assert path.exists() and path.read_text() == text, (
            f"completions/{name} is stale: run python3 -m mailtools.completions"
        )
    assert set(generate()) == set(FILES.values())


def test_bash_completion_completes_commands_and_options():
    script = REPO / "completions" / "mailtools.bash"

    def complete(*words):
        line = " ".join(["mailtools", *words])
        code = (
            f"source {script}; COMP_WORDS=(mailtools {' '.join(words)}); "
            f"COMP_CWORD={len(words)}; COMP_LINE='{line}'; _mailtools; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        return subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True).stdout.split()

    assert "deliver" in complete("del")
    assert complete("deliver", "--mail") == ["--maildir"]


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    m = re.search(r"```sh\n(pip install -e '\.\[test\]') && (python3 -m pytest[^\n]*)\n```", readme)
    assert m, "README must give the test command"
    assert m.group(2) in ci.splitlines()


def test_readme_has_an_example_per_tool():
    readme = (REPO / "README.md").read_text()
    for name in COMMANDS:
        m = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^##)", readme, re.M | re.S)
        assert m, f"README lacks a '### {name}' section"
        assert f"mailtools {name}" in m.group(1) or (name == "submit" and "sendmail" in m.group(1)), name
