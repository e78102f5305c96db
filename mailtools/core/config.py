"""Configuration: one TOML file, checked against one schema, with built-in defaults.

Lookup order (DESIGN.md): `--config FILE`, then `$MAILTOOLS_CONFIG`, then
`$MAILTOOLS_HOME/mailtools.toml` when that variable is set, then `/etc/mailtools/mailtools.toml`,
then `mailtools.toml` in the default data root (written there by `mailtools serve`); with none, the defaults below apply and the data root is `$MAILTOOLS_HOME`
or `~/.local/share/mailtools`.

A key that is unknown or of the wrong type stops the program (exit 78) with a message naming
the file, the key and what was expected. To add a key: add it to SCHEMA with its default, and
document it in man/mailtools.toml.5 (a test checks that every key is there).
"""

from __future__ import annotations

import os

from mailtools.core.exitcodes import ConfigError

SYSTEM_CONFIG = "/etc/mailtools/mailtools.toml"

# Type tags: "str", "int", "number", "bool", "list[str]", "duration" ("5m", "4h", "5d", or
# seconds as a number), "list[duration]", "table" (free-form, checked by its user).
# Each entry: key -> (type tag, default). Nested dicts are TOML tables.
SCHEMA: dict = {
    "hostname": ("str", None),  # None: /etc/mailname, else the host name (no DNS query)
    "root": ("str", None),  # None: $MAILTOOLS_HOME or ~/.local/share/mailtools
    "local_domains": ("list[str]", None),  # None: ["localhost", hostname]
    "log": ("str", "stderr"),  # "stderr" | "syslog" | "off" | an absolute file path
    "dns": {
        "nameservers": ("list[str]", []),
        "timeout": ("number", 5),
    },
    "relay": {
        "listen": ("list[str]", ["0.0.0.0:25"]),
        "remote_port": ("int", 25),
        "smarthost": ("str", ""),
        "retry": ("list[duration]", ["5m", "15m", "30m", "1h", "2h", "4h"]),
        "max_queue_time": ("duration", "5d"),
        "delay_warning": ("duration", "4h"),
        "concurrency": ("int", 20),
        "require_tls": ("list[str]", []),  # recipient domains that must get TLS
        "verify_tls": ("bool", False),  # verify certificates on opportunistic STARTTLS
        "ca_file": ("str", ""),  # CA bundle for verifying next hops (empty: the system's)
        "connect_timeout": ("duration", "30s"),
        "command_timeout": ("duration", "5m"),
        "data_timeout": ("duration", "10m"),
        "claim_timeout": ("duration", "1h"),  # another host's claim older than this is recovered
        "max_message_size": ("int", 50 * 1024 * 1024),
        "max_recipients": ("int", 1000),
        "max_connections": ("int", 100),
        "auth": {
            "username": ("str", ""),
            "password": ("str", ""),
            "password_file": ("str", ""),
            "tls": ("str", "required"),  # "required" | "verify-none" | "none" (smarthost only)
        },
    },
    "submit": {
        "listen": ("list[str]", ["127.0.0.1:587"]),
        "tls_listen": ("list[str]", []),
        "max_message_size": ("int", 50 * 1024 * 1024),
        "max_recipients": ("int", 1000),
        "max_connections": ("int", 100),
        "allow_plaintext_auth": ("bool", False),  # AUTH without TLS off loopback
        "restrict_senders": ("bool", True),  # users may only send as themselves
        "workers": ("int", 0),  # submit --listen worker processes; 0: one per CPU
    },
    "serve": {
        # submission worker processes beside serve's own; -1: 1 when 2+ CPUs are usable, else
        # 0 (submission in serve's own process)
        "submission_workers": ("int", -1),
    },
    "imap": {
        "listen": ("list[str]", ["127.0.0.1:143"]),
        "tls_listen": ("list[str]", []),
        "allow_plaintext_auth": ("bool", False),
        "max_connections": ("int", 200),
    },
    "pop3": {
        "listen": ("list[str]", ["127.0.0.1:110"]),
        "tls_listen": ("list[str]", []),
        "allow_plaintext_auth": ("bool", False),
        "max_connections": ("int", 200),
        "idle_timeout": ("duration", "10m"),  # RFC 1939 3: autologout, at least 10 minutes
    },
    "tls": {
        "cert": ("str", ""),
        "key": ("str", ""),
    },
    "auth": {
        "users": ("str", "users"),
        "fail_delay": ("number", 2),
    },
}

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """'5m' -> 300.0, '1.5h', '30 s', '90'; numbers are seconds. Raises ValueError.
    (No regex: `re` is not imported on the sendmail path, and every load checks the defaults.)"""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    unit = text[-1:] if text[-1:] in ("s", "m", "h", "d", "w") else ""
    number = text[: len(text) - len(unit)].rstrip()
    whole, dot, frac = number.partition(".")
    if not whole.isdecimal() or (dot and not frac.isdecimal()):  # as the regex \d+(\.\d+)?
        raise ValueError(value)
    return float(number) * _UNITS[unit]


_EXPECT = {
    "str": "a string",
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "list[str]": "a list of strings",
    "duration": 'a duration such as "30s", "5m", "4h", "5d" or a number of seconds',
    "list[duration]": 'a list of durations such as ["5m", "1h"]',
    "table": "a table",
}


def _check(tag: str, value: object) -> object:
    """Return the value converted for its tag, or raise ValueError."""
    if tag == "str" and isinstance(value, str):
        return value
    if tag == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tag == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if tag == "bool" and isinstance(value, bool):
        return value
    if tag == "list[str]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if tag == "duration":
        return parse_duration(value)
    if tag == "list[duration]" and isinstance(value, list):
        return [parse_duration(v) for v in value]
    if tag == "table" and isinstance(value, dict):
        return value
    raise ValueError(value)


class Section:
    """Attribute access over one table of checked values: cfg.relay.remote_port."""

    def __init__(self, values: dict[str, object]):
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Section({self.__dict__!r})"

    def as_dict(self) -> dict[str, object]:
        return {k: (v.as_dict() if isinstance(v, Section) else v) for k, v in self.__dict__.items()}


def _build(schema: dict, data: dict, path: str, source: str) -> Section:
    for key in data:
        if key not in schema:
            where = f"{path}{key}"
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{source}: unknown key '{where}' (known here: {known})")
    values: dict[str, object] = {}
    for key, spec in schema.items():
        where = f"{path}{key}"
        if isinstance(spec, dict):
            sub = data.get(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{source}: '{where}' must be a table ([{where}])")
            values[key] = _build(spec, sub, where + ".", source)
            continue
        tag, default = spec
        if key in data:
            try:
                values[key] = _check(tag, data[key])
            except ValueError:
                raise ConfigError(
                    f"{source}: '{where}' must be {_EXPECT[tag]}, not {data[key]!r}"
                ) from None
        else:
            values[key] = _check(tag, default) if default is not None else None
    return Section(values)


def _path(*parts):
    # pathlib is imported on first use: `deliver --maildir` and `sendmail` start without it.
    from pathlib import Path

    return Path(*parts)


def default_root() -> os.PathLike:
    return _path(_default_root_str())


def _default_root_str() -> str:
    home = os.environ.get("MAILTOOLS_HOME")
    if home:
        return home
    return os.path.join(os.path.expanduser("~"), ".local", "share", "mailtools")


def default_hostname() -> str:
    """/etc/mailname if present, else the kernel's host name; never a DNS query."""
    try:
        with open("/etc/mailname", encoding="ascii", errors="replace") as f:
            name = f.readline().strip()
            if name:
                return name.lower()
    except OSError:
        pass
    # gethostname(2) is the kernel's node name; os.uname() gives it without importing socket
    # (15 ms of sendmail's start-up where neither the config nor /etc/mailname names the host)
    return (os.uname().nodename or "localhost").lower()


class _LazyRoot:
    """`cfg.root` as a pathlib.Path built on first use (then an ordinary attribute): the sendmail
    path only needs `cfg.data_path("queue")` and starts without importing pathlib."""

    def __get__(self, cfg, owner=None):
        if cfg is None:
            return self
        root = cfg.__dict__["root"] = _path(cfg.__dict__["_root_str"])
        return root


class Config(Section):
    """The whole configuration, plus the paths everything derives from the data root."""

    source: str | None
    root = _LazyRoot()  # an assignment (cfg.root = ...) replaces it for this instance

    def data_path(self, *parts: str) -> str:
        """A path under the data root as a str, without building a pathlib.Path."""
        root = self.__dict__.get("root")
        return os.path.join(self._root_str if root is None else os.fspath(root), *parts)

    def as_dict(self) -> dict[str, object]:
        self.root  # noqa: B018 - materialise the lazy root so it is listed
        return {k: v for k, v in super().as_dict().items() if k not in ("_root_str", "_pinned")}

    @property
    def queue_dir(self) -> os.PathLike:
        return self.root / "queue"

    @property
    def mail_dir(self) -> os.PathLike:
        return self.root / "mail"

    @property
    def users_file(self) -> os.PathLike:
        p = _path(self.auth.users)
        return p if p.is_absolute() else self.root / p

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.local_domains

    def maildir_for(self, address: str) -> os.PathLike:
        """root/mail/domain/localpart for a full address, both lower-cased (as Dovecot's %Lu:
        Alice@ and alice@ are one mailbox everywhere: deliver, relay, IMAP, POP3, user add);
        refuses names that could escape the mail tree."""
        from mailtools.core.address import split_address

        local, domain = split_address(address)
        local = local.lower()
        for part in (local, domain):
            if not part or part in (".", "..") or "/" in part or "\0" in part:
                raise ValueError(f"unsafe mailbox name: {address!r}")
        return self.mail_dir / domain / local


def from_dict(data: dict, source: str = "<config>", base: os.PathLike | None = None) -> Config:
    section = _build(SCHEMA, data, "", source)
    cfg = Config(section.__dict__)
    cfg.source = source
    if cfg.hostname is None:
        cfg.hostname = default_hostname()
    root = cfg.__dict__.pop("root")  # the str; Config.root builds the Path when first used
    if root is None:
        root = _default_root_str()
    else:
        root = os.path.expanduser(root)
        if not os.path.isabs(root) and base is not None:
            root = os.path.join(os.fspath(base), root)
    cfg._root_str = root
    if base is not None:  # relative certificate paths are relative to the config file
        for attr in ("cert", "key"):
            value = getattr(cfg.tls, attr)
            if value and not os.path.isabs(os.path.expanduser(value)):
                setattr(cfg.tls, attr, str(_path(base, value)))
    if cfg.log != "stderr":  # the default needs no check, nor core.log loaded (sendmail's start-up)
        from mailtools.core import log

        if not log.valid(cfg.log):
            raise ConfigError(f"{source}: log: expected \"stderr\", \"syslog\", \"off\" or an absolute "
                              f"file path, got {cfg.log!r}")
    if cfg.local_domains is None:
        cfg.local_domains = sorted({"localhost", cfg.hostname})
    cfg.local_domains = [d.lower().rstrip(".") for d in cfg.local_domains]
    return cfg


_explicit_path: str | None = None
_cached: Config | None = None


def set_path(path: str | None) -> None:
    """Record the global `--config FILE` (called by the CLI front before any command runs)."""
    global _explicit_path, _cached
    _explicit_path = path
    _cached = None


def find_path() -> str | None:
    if _explicit_path:
        return _explicit_path
    env = os.environ.get("MAILTOOLS_CONFIG")
    if env:
        return env
    home = os.environ.get("MAILTOOLS_HOME")
    if home:  # an explicit data root: its own file (the one `serve --root` reads) comes first
        local = os.path.join(os.path.expanduser(home), "mailtools.toml")
        if os.path.exists(local):
            return local
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    # The data root's own file, as `mailtools serve` writes it on a fresh root: so
    # `MAILTOOLS_HOME=DIR mailtools ...` talks about the same system that `serve --root DIR` runs.
    local = os.path.join(_default_root_str(), "mailtools.toml")
    if os.path.exists(local):
        return local
    return None


_SHARED_TMP = "/var/tmp"  # where a user without a usable home keeps its private cache directory


def _cache_file() -> str | None:
    """The per-user cache of the parsed configuration: under the XDG cache directory, or, for a
    user whose home cannot hold one (PHP's www-data, a daemon account with HOME=/nonexistent),
    in a directory of its own under /var/tmp, used only while it is that user's alone (owned by
    them, a real directory, mode 0700): anyone else who could write it could plant a config."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if os.path.isabs(base):
        mine = os.path.join(base, "mailtools")
        if os.path.isdir(mine) or os.access(base if os.path.isdir(base) else os.path.dirname(base), os.W_OK):
            return os.path.join(mine, "config.marshal")
    uid = os.getuid()
    private = os.path.join(_SHARED_TMP, f"mailtools-{uid}")
    try:
        os.mkdir(private, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(private)
    except OSError:
        return None
    if not (st.st_mode & 0o170000 == 0o040000 and st.st_uid == uid and st.st_mode & 0o077 == 0):
        return None
    return os.path.join(private, "config.marshal")


def _parse_toml(path: str, raw: bytes) -> dict:
    """TOML -> dict, through a per-user marshal cache of (path, raw bytes, parsed dict): importing
    tomllib and compiling its regexes costs more start-up than the rest of `sendmail` or
    `deliver` together. The cache is used only when it holds exactly these bytes, so it can
    never be stale; any problem with it just means parsing."""
    import marshal

    cache = _cache_file()  # one per user: holds the last configuration read
    try:
        if cache:
            with open(cache, "rb") as f:
                cached_path, cached_raw, data = marshal.loads(f.read())
            if cached_raw == raw and cached_path == path and isinstance(data, dict):
                return data
    except (OSError, ValueError, EOFError, TypeError):
        pass
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Never copy a secret (a smarthost password) into a cache file.
    if cache and b"password" not in raw:
        try:
            blob = marshal.dumps((path, raw, data))  # ValueError for types marshal lacks (dates)
            os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold secrets
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, cache)
        except (OSError, ValueError):
            pass
    return data


def reload_into(cfg: Config) -> None:
    """A server's SIGHUP: read cfg's file again and update cfg in place, so every part holding
    it sees the new values (those read per connection, message or login take effect at once;
    the data root, listener addresses and worker counts need a restart). Raises ConfigError
    (the caller keeps serving with what it has)."""
    source = cfg.source if cfg.source and os.path.isfile(cfg.source) else None
    new = load(source, reload=True)
    pinned = cfg.__dict__.get("_pinned", {})
    cfg.__dict__.update({k: v for k, v in new.__dict__.items() if k != "root" and k not in pinned})


def pin(cfg: Config, key: str, value) -> None:
    """Set a top-level value that the command line gave (serve --hostname): a reload keeps it
    rather than taking the file's."""
    setattr(cfg, key, value)
    cfg.__dict__.setdefault("_pinned", {})[key] = value


def load(path: str | None = None, *, reload: bool = False) -> Config:
    """Load (once per process) and check the configuration."""
    global _cached
    if _cached is not None and path is None and not reload:
        return _cached
    path = path or find_path()
    if path is None:
        cfg = from_dict({}, "<built-in defaults>")
    else:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
        data = _parse_toml(path, raw)
        cfg = from_dict(data, path, os.path.dirname(os.path.realpath(path)))  # as Path.resolve()
    if cfg.log != "stderr":
        from mailtools.core import log

        log.use(cfg.log)
    _cached = cfg
    return cfg
