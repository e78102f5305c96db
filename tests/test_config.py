"""core/config: lookup order, defaults, and exit 78 naming file, key and expectation."""

from __future__ import annotations

import marshal
import os

import pytest

from mailtools.core import config
from mailtools.core.exitcodes import CONFIG, ConfigError


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILTOOLS_CONFIG", raising=False)
    monkeypatch.setenv("MAILTOOLS_HOME", str(tmp_path))
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "nope.toml"))
    config.set_path(None)
    cfg = config.load(reload=True)
    assert cfg.root == tmp_path
    assert cfg.relay.remote_port == 25
    assert cfg.relay.retry == [300, 900, 1800, 3600, 7200, 14400]
    assert cfg.relay.max_queue_time == 5 * 86400
    assert "localhost" in cfg.local_domains and cfg.hostname in cfg.local_domains
    assert cfg.queue_dir == tmp_path / "queue"
    assert cfg.users_file == tmp_path / "users"


def test_file_values_and_relative_root(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('root = "data"\nlocal_domains = ["Example.TEST."]\n[dns]\nnameservers = ["127.0.0.1:5353"]\n[relay]\nretry = ["1s", 2]\n')
    cfg = config.load(str(p))
    assert cfg.root == tmp_path / "data"
    assert cfg.local_domains == ["example.test"]
    assert cfg.dns.nameservers == ["127.0.0.1:5353"]
    assert cfg.relay.retry == [1.0, 2.0]
    assert cfg.maildir_for("Alice@Example.Test") == tmp_path / "data" / "mail" / "example.test" / "alice"
    with pytest.raises(ValueError):
        cfg.maildir_for("../x@example.test")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("hostnam = 'x'\n", "unknown key 'hostnam'"),
        ("[relay]\nremote_prot = 25\n", "unknown key 'relay.remote_prot'"),
        ("[relay]\nremote_port = '25'\n", "'relay.remote_port' must be an integer"),
        ("local_domains = 'example.test'\n", "'local_domains' must be a list of strings"),
        ("[relay]\nmax_queue_time = 'soon'\n", "'relay.max_queue_time' must be a duration"),
        ("relay = 3\n", "'relay' must be a table"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_bad_config_is_exit_78_naming_file_and_key(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(p))
    assert e.value.code == CONFIG == 78
    assert str(p) in str(e.value) and needle in str(e.value)


def test_bad_config_from_the_command_line(tmp_path, run):
    p = tmp_path / "bad.toml"
    p.write_text("[relay]\nremote_port = 'x'\n")
    r = run("--config", p, "relay", "--list")
    assert r.returncode == 78, r.stderr
    assert f"{p}: 'relay.remote_port' must be an integer".encode() in r.stderr
    assert b"Traceback" not in r.stderr


def test_missing_config_file(tmp_path, run):
    r = run("--config", tmp_path / "none.toml", "relay", "--list")
    assert r.returncode == 78 and b"cannot read configuration" in r.stderr


def test_mailtools_home_config_comes_before_the_system_one(tmp_path, monkeypatch):
    # `serve --root DIR` reads DIR/mailtools.toml; `MAILTOOLS_HOME=DIR mailtools user add` must
    # mean the same system even when /etc/mailtools/mailtools.toml exists.
    system = tmp_path / "etc.toml"
    system.write_text('hostname = "system.example.test"\n')
    root = tmp_path / "root"
    root.mkdir()
    (root / "mailtools.toml").write_text('hostname = "root.example.test"\n')
    monkeypatch.delenv("MAILTOOLS_CONFIG", raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(system))
    config.set_path(None)
    monkeypatch.setenv("MAILTOOLS_HOME", str(root))
    assert config.load(reload=True).hostname == "root.example.test"
    monkeypatch.setenv("MAILTOOLS_HOME", str(tmp_path / "elsewhere"))  # no file there
    assert config.load(reload=True).hostname == "system.example.test"
    monkeypatch.setenv("MAILTOOLS_CONFIG", str(root / "mailtools.toml"))  # still first
    assert config.load(reload=True).hostname == "root.example.test"


def test_bad_log_target_is_exit_78(tmp_path, run):
    p = tmp_path / "m.toml"
    p.write_text('log = "loud"\n')
    r = run("--config", p, "mx-lookup", "example.test")
    assert r.returncode == CONFIG
    assert b"log" in r.stderr and b"syslog" in r.stderr


def test_log_lines_go_to_the_configured_file_not_stderr(home, run, tmp_path):
    # What cron needs: `relay --once` prints nothing when the config sends the log elsewhere.
    from mailtools.core.auth import Users

    cfgfile = tmp_path / "mailtools.toml"
    logfile = tmp_path / "mail.log"
    cfgfile.write_text(cfgfile.read_text() + f'log = "{logfile}"\n')
    Users(home / "users").add("alice@example.test", "pw")
    r = run("submit", "-i", "alice@example.test", input=b"Subject: s\n\nhi\n")
    assert r.returncode == 0, r.stderr
    r = run("relay", "--once")
    assert r.returncode == 0, r.stderr
    assert b"status=sent" not in r.stderr and r.stderr == b"", r.stderr
    log = logfile.read_text()
    assert "to=<alice@example.test>" in log and "status=sent" in log, log
    assert any(line.split(" ", 1)[1].startswith("relay[") for line in log.splitlines()), log  # stamp, program[pid]
    r = run("relay", "--once")  # appended to, never truncated
    assert logfile.read_text().startswith(log)


def test_a_command_started_with_stdout_closed_still_exits_by_its_outcome(tmp_path, home):
    # cron and daemons sometimes start a job with fd 1 closed: Python then has sys.stdout None
    # and the exit code must still be the command's own (here deliver's 0), not 70.
    import os
    import subprocess

    from conftest import mailtools_cmd
    from mailtools.core.auth import Users

    Users(home / "users").add("alice@example.test", "pw")
    r = subprocess.run([*mailtools_cmd(), "deliver", "alice@example.test"], input=b"Subject: s\n\nhi\n",
                       stdout=None, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), timeout=60)
    assert r.returncode == 0, r.stderr
    assert list((home / "mail" / "example.test" / "alice" / "new").iterdir())


def test_sendmail_logs_to_the_configured_file(home, run, tmp_path):
    cfgfile = tmp_path / "mailtools.toml"
    logfile = tmp_path / "mail.log"
    cfgfile.write_text(cfgfile.read_text() + f'log = "{logfile}"\n')
    r = run("submit", "-i", "-f", "s@example.test", "r@example.test", input=b"Subject: s\n\nhi\n")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert "submit[" in logfile.read_text() and "from=<s@example.test>" in logfile.read_text()


def _homeless(monkeypatch, tmp_path):
    """A user like PHP's www-data: no writable home, no XDG cache directory."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "nonexistent"))
    monkeypatch.setattr(config, "_SHARED_TMP", str(tmp_path / "vartmp"))
    (tmp_path / "vartmp").mkdir()
    return tmp_path / "vartmp" / f"mailtools-{os.getuid()}"


def test_a_user_without_a_home_caches_in_a_private_directory(tmp_path, monkeypatch):
    private = _homeless(monkeypatch, tmp_path)
    raw = b'hostname = "mx.example.test"\n'
    assert config._parse_toml("/etc/x.toml", raw) == {"hostname": "mx.example.test"}
    assert (private / "config.marshal").is_file()
    assert private.stat().st_mode & 0o777 == 0o700
    # the second read comes from the cache: plant a different answer for the same bytes
    (private / "config.marshal").write_bytes(marshal.dumps(("/etc/x.toml", raw, {"hostname": "cached"})))
    assert config._parse_toml("/etc/x.toml", raw) == {"hostname": "cached"}


@pytest.mark.parametrize("spoil", ["mode", "owner", "symlink"])
def test_a_private_cache_directory_anyone_else_could_write_is_never_used(tmp_path, monkeypatch, spoil):
    private = _homeless(monkeypatch, tmp_path)
    raw = b'hostname = "mx.example.test"\n'
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "config.marshal").write_bytes(marshal.dumps(("/etc/x.toml", raw, {"hostname": "evil"})))
    if spoil == "symlink":
        private.symlink_to(planted)
    else:
        planted.rename(private)
        if spoil == "mode":
            private.chmod(0o777)
        else:
            if os.getuid() != 0:
                pytest.skip("giving a directory to another user needs root")
            os.chown(private, 65534, 65534)
    assert config._parse_toml("/etc/x.toml", raw) == {"hostname": "mx.example.test"}
    assert config._cache_file() is None


def test_a_pinned_value_survives_a_reload(tmp_path):
    from mailtools.core import config as cfgmod

    path = tmp_path / "m.toml"
    path.write_text('hostname = "file.example.test"\nlocal_domains = ["a.example.test"]\n')
    cfg = cfgmod.load(str(path), reload=True)
    cfgmod.pin(cfg, "hostname", "cli.example.test")
    path.write_text('hostname = "file2.example.test"\nlocal_domains = ["b.example.test"]\n')
    cfgmod.reload_into(cfg)
    assert cfg.hostname == "cli.example.test"  # what the command line said
    assert cfg.local_domains == ["b.example.test"]  # the rest from the file
    assert "_pinned" not in cfg.as_dict()
