"""core/auth: passwd-file parsing, hashes made by Dovecot's doveadm, SHA-crypt, SASL PLAIN."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtools.core import auth
from mailtools.core.auth import Users, check_password, decode_sasl_plain, sha_crypt

DOVEADM = shutil.which("doveadm")
needs_doveadm = pytest.mark.skipif(DOVEADM is None, reason="doveadm (dovecot-core) not installed")


def doveadm_pw(scheme: str, password: str, *extra: str) -> str:
    out = subprocess.run([DOVEADM, "pw", "-s", scheme, "-p", password, *extra],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@needs_doveadm
@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2ID", "ARGON2I"])
@pytest.mark.parametrize("password", ["x", "correct horse pässwörd€"])
def test_doveadm_hashes_verify(scheme, password):
    stored = doveadm_pw(scheme, password)
    assert stored.startswith("{" + scheme + "}")
    assert check_password(stored, password)
    assert not check_password(stored, password[:-1] + "y")


@needs_doveadm
def test_plain_doveadm_pw_default_crypt_scheme_verifies(tmp_path):
    # `doveadm pw -p X` without -s writes {CRYPT}$2y$... (the default scheme): the README
    # promises that lines from doveadm pw work.
    out = subprocess.run([DOVEADM, "pw", "-p", "dv pass"], capture_output=True, text=True, check=True)
    stored = out.stdout.strip()
    assert stored.startswith("{CRYPT}$2")
    assert check_password(stored, "dv pass") and not check_password(stored, "dv pasS")
    users = tmp_path / "users"
    users.write_text(f"carol@example.test:{stored}::::::\n")
    u = auth.Users(users)
    assert not u.problems and u.verify("carol@example.test", "dv pass")
    assert not check_password("{CRYPT}abJnggxhB/yWI", "x")  # DES crypt: not supported, never raises


@needs_doveadm
def test_doveadm_sha512_crypt_with_rounds():
    stored = doveadm_pw("SHA512-CRYPT", "hunter2", "-r", "7000")
    assert "$rounds=7000$" in stored
    assert check_password(stored, "hunter2") and not check_password(stored, "hunter3")


@needs_doveadm
@pytest.mark.parametrize("scheme", ["ARGON2ID", "BLF-CRYPT"])
def test_our_hashes_verify_in_doveadm(scheme):
    stored = auth.hash_password("sekrit 42", scheme)
    assert stored.startswith("{" + scheme + "}")
    ok = subprocess.run([DOVEADM, "pw", "-t", stored, "-p", "sekrit 42"], capture_output=True, text=True)
    assert ok.returncode == 0 and "verified" in ok.stdout
    bad = subprocess.run([DOVEADM, "pw", "-t", stored, "-p", "sekrit 43"], capture_output=True, text=True)
    assert bad.returncode != 0


def test_sha512_crypt_known_vectors():
    # From Ulrich Drepper's specification (SHA-crypt.txt), test vectors for SHA-512.
    assert sha_crypt(b"Hello world!", "$6$saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu"
        "esI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
    assert sha_crypt(b"Hello world!", "$6$rounds=10000$saltstringsaltstring") == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZ"
        "eHBy/YTBmSK6H9qs/y3RnOaw5v.")
    assert sha_crypt(b"we have a short salt string but not a short password", "$6$rounds=77777$short") == (
        "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZ"
        "elFl5CxtgfiAc0")
    assert sha_crypt(b"the minimum number is still observed", "$6$rounds=10$roundstoolow") == (
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQ"
        "pyUNGc0dqbpBYYBaHHrsX.")


def test_sha256_crypt_known_vector():
    # glibc crypt(3) output for the specification's first SHA-256 input.
    assert sha_crypt(b"Hello world!", "$5$saltstring") == (
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5")


def _system_crypt():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    return crypt.crypt


@pytest.mark.skipif(_system_crypt() is None, reason="no stdlib crypt module to compare with")
@settings(max_examples=60, deadline=None)
@given(password=st.text(min_size=1, max_size=100).filter(lambda s: "\0" not in s),
       salt=st.text(alphabet="./0123456789abcdefXYZ", max_size=20),
       prefix=st.sampled_from(["$5$", "$6$", "$6$rounds=1000$", "$5$rounds=1234$"]))
def test_sha_crypt_matches_glibc(password, salt, prefix):
    assert sha_crypt(password.encode("utf-8"), prefix + salt) == _system_crypt()(password, prefix + salt)


def test_sasl_plain():
    enc = base64.b64encode(b"\0alice@example.test\0s3cret").decode()
    assert decode_sasl_plain(enc) == ("", "alice@example.test", "s3cret")
    enc = base64.b64encode("admin\0bob@example.test\0pässword".encode()).decode()
    assert decode_sasl_plain(enc) == ("admin", "bob@example.test", "pässword")
    for bad in ("!!!", "", "=", base64.b64encode(b"a\0b").decode(),
                base64.b64encode(b"\0\0pw").decode(), base64.b64encode(b"\0u\0").decode(),
                base64.b64encode(b"\0u\0\xff\xfe").decode(), base64.b64encode(b"\0u\0p\0q").decode()):
        with pytest.raises(ValueError):
            decode_sasl_plain(bad)


def test_users_file_malformed_line_does_not_lock_everyone_out(tmp_path):
    good = auth.hash_password("pw-alice", "BLF-CRYPT")
    p = tmp_path / "users"
    p.write_text(
        "# comment\n\n"
        "this line is junk\n"
        f"alice@example.test:{good}::::::\n"
        "bob@example.test:::::::\n"
        "carol@example.test:{NOPE}xyz::::::\n"
        f"Alice@Example.test:{good}::::::\n"
    )
    users = Users(p)
    assert users.list() == ["alice@example.test", "carol@example.test"]
    assert [x.split(": ", 1)[0] for x in users.problems] == [f"{p}:3", f"{p}:5", f"{p}:6", f"{p}:7"]
    assert users.verify("alice@example.test", "pw-alice")
    assert users.verify("ALICE@example.TEST", "pw-alice")
    assert not users.verify("alice@example.test", "wrong")
    assert not users.verify("bob@example.test", "")
    assert not users.verify("carol@example.test", "xyz")


def test_unknown_user_costs_a_dummy_verification(tmp_path):
    p = tmp_path / "users"
    Users(p).add("alice@example.test", "pw")
    users = Users(p)
    auth.dummy_verify("warm-up")
    t = time.perf_counter()
    assert users.verify("alice@example.test", "nope") is False
    known = time.perf_counter() - t
    t = time.perf_counter()
    assert users.verify("nobody@example.test", "nope") is False
    unknown = time.perf_counter() - t
    assert unknown > known / 4  # same order of magnitude (argon2 both ways), not ~0


@pytest.mark.parametrize("scheme", ["BLF-CRYPT", "SHA512-CRYPT"])
def test_unknown_user_costs_what_the_files_users_cost(tmp_path, scheme):
    if scheme == "BLF-CRYPT":
        import bcrypt

        good = "{BLF-CRYPT}" + bcrypt.hashpw(b"pw", bcrypt.gensalt(11)).decode()
    else:
        good = "{SHA512-CRYPT}" + sha_crypt(b"pw", "$6$rounds=80000$saltsalt")
    p = tmp_path / "users"
    p.write_text(f"alice@example.test:{good}::::::\n")
    users = Users(p)
    assert auth._cost_key(users.typical) == auth._cost_key(good)
    users.verify("nobody@example.test", "warm-up")  # the dummy hash is made once
    t = time.perf_counter()
    assert users.verify("alice@example.test", "wrong") is False
    known = time.perf_counter() - t
    t = time.perf_counter()
    assert users.verify("nobody@example.test", "wrong") is False
    unknown = time.perf_counter() - t
    assert known / 5 < unknown < known * 5  # same work, give or take a busy machine


def test_add_set_password_delete_rewrite_atomically(tmp_path):
    p = tmp_path / "users"
    p.write_text("# keep me\njunk line\n")
    users = Users(p)
    assert users.add("Alice@Example.test", "one", "BLF-CRYPT") == "alice@example.test"
    assert p.read_text().startswith("# keep me\njunk line\nalice@example.test:{BLF-CRYPT}$2y$")
    assert p.read_text().endswith("::::::\n")
    with pytest.raises(auth.CantCreate):
        users.add("alice@example.test", "again", "BLF-CRYPT")
    users.set_password("alice@example.test", "two", "BLF-CRYPT")
    assert Users(p).verify("alice@example.test", "two")
    assert not Users(p).verify("alice@example.test", "one")
    with pytest.raises(auth.NoUser):
        users.set_password("nobody@example.test", "x")
    users.delete("alice@example.test")
    assert p.read_text() == "# keep me\njunk line\n"
    with pytest.raises(auth.NoUser):
        users.delete("alice@example.test")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["users", "users.lock"]


@pytest.mark.parametrize("bad", ["alice", "@example.test", "alice@", "a:b@example.test",
                                 "a b@example.test", "../x@example.test", "a@ex/ample.test",
                                 "a@..", "-a@example.test"])
def test_bad_user_names_refused(tmp_path, bad):
    with pytest.raises(auth.DataError):
        Users(tmp_path / "users").add(bad, "pw", "BLF-CRYPT")


def test_load_users_rereads_when_changed(tmp_path):
    from mailtools.core.config import from_dict

    cfg = from_dict({"root": str(tmp_path)})
    first = auth.load_users(cfg)
    assert first.list() == []
    assert auth.load_users(cfg) is first
    Users(cfg.users_file).add("alice@example.test", "pw", "BLF-CRYPT")
    again = auth.load_users(cfg)
    assert again.list() == ["alice@example.test"]
    assert again.verify("alice@example.test", "pw")


# -- property tests: the passwd-file parser and SASL PLAIN -----------------------------------

_line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=60)


@settings(max_examples=80, deadline=None)
@given(st.lists(_line_text, max_size=12))
def test_users_parser_never_raises_and_reports_by_line(tmp_path_factory, lines):
    p = tmp_path_factory.mktemp("u") / "users"
    p.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    users = Users(p)
    assert len(users.lines) == max(len(lines), 1)  # [] and [""] both write one empty line
    for problem in users.problems:
        n = int(problem.split(":")[1])
        assert 1 <= n <= len(lines)
    for name in users.list():
        rec = users.get(name)
        assert lines[rec.lineno - 1].startswith(name + ":")


@settings(max_examples=40, deadline=None)
@given(names=st.lists(st.from_regex(r"[a-z0-9._+-]{1,12}@[a-z0-9-]{1,10}\.test", fullmatch=True),
                      min_size=1, max_size=6, unique=True))
def test_users_file_keeps_every_user_and_other_fields(tmp_path_factory, names):
    p = tmp_path_factory.mktemp("u") / "users"
    p.write_text("".join(f"{n}:{{SHA512-CRYPT}}$6$salt$x:1000:1000::/home/{i}::userdb_quota_rule=*:storage=1G\n"
                         for i, n in enumerate(names)))
    users = Users(p)
    assert users.list() == names and not users.problems
    users.delete(names[0])
    text = p.read_text()
    assert names[0] + ":" not in text.split("\n")[0] or len(names) == 1
    assert text.count("userdb_quota_rule=*:storage=1G") == len(names) - 1


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())))
def test_sasl_plain_raises_only_valueerror(s):
    try:
        authzid, authcid, password = decode_sasl_plain(s)
    except ValueError:
        return
    assert authcid and password and "\0" not in authcid + password + authzid


def test_concurrent_changes_never_lose_each_other(tmp_path):
    """Eight processes add a user each at the same moment: the lock and re-read keep all."""
    import subprocess
    import sys

    p = tmp_path / "users"
    code = ("import sys\nfrom mailtools.core.auth import Users\n"
            "Users(sys.argv[1]).add(sys.argv[2], 'pw', 'BLF-CRYPT')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p), f"u{i}@example.test"]) for i in range(8)]
    assert [pr.wait(timeout=60) for pr in procs] == [0] * 8
    assert sorted(Users(p).list()) == sorted(f"u{i}@example.test" for i in range(8))
    assert not [x for x in tmp_path.iterdir() if ".tmp." in x.name]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_rewrite_keeps_mode_and_owner(tmp_path):
    p = tmp_path / "users"
    p.write_text("")
    os.chown(p, 65534, 65534)
    os.chmod(p, 0o640)
    Users(p).add("alice@example.test", "pw", "BLF-CRYPT")
    st = os.stat(p)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o640)


@pytest.mark.parametrize("kind", ["id", "i"])
@pytest.mark.parametrize("t,m", [(1, 8), (3, 64), (4, 1024)])
def test_argon2_one_lane_goes_through_libsodium_with_argon2_cffi_answers(kind, t, m):
    # one-lane hashes are checked by libsodium (PyNaCl); the answer is argon2-cffi's own
    from argon2 import PasswordHasher, Type

    scheme = "ARGON2ID" if kind == "id" else "ARGON2I"
    ph = PasswordHasher(time_cost=t, memory_cost=m, parallelism=1, type=Type.ID if kind == "id" else Type.I)
    value = ph.hash("pässwörd")
    stored = "{%s}%s" % (scheme, value)
    sodium = auth._sodium_verify(scheme, value, "pässwörd".encode())
    if kind == "i" and t < 3:
        assert sodium is None  # libsodium's Argon2i needs 3 passes: argon2-cffi checks it
    else:
        assert sodium is True
        assert auth._sodium_verify(scheme, value, b"wrong") is False
    assert check_password(stored, "pässwörd") is True
    assert check_password(stored, "pässwörd ") is False


def test_argon2_more_lanes_and_other_versions_stay_with_argon2_cffi():
    from argon2 import PasswordHasher

    value = PasswordHasher(time_cost=1, memory_cost=64, parallelism=4).hash("pw")
    assert auth._sodium_verify("ARGON2ID", value, b"pw") is None
    assert check_password("{ARGON2ID}" + value, "pw") and not check_password("{ARGON2ID}" + value, "px")
    v16 = value.replace("$v=19$", "$v=16$")
    assert auth._sodium_verify("ARGON2ID", v16, b"pw") is None
    broken = value.replace("p=4", "p=1")[:-6]  # libsodium's range, a hash that is cut short
    assert auth._sodium_verify("ARGON2ID", broken, b"pw") is False
    assert check_password("{ARGON2ID}" + broken, "pw") is False


@needs_doveadm
def test_doveadm_argon2id_hash_goes_through_libsodium():
    stored = doveadm_pw("ARGON2ID", "benchpw")
    scheme, value = auth.split_scheme(stored)
    assert auth._sodium_verify(scheme, value, b"benchpw") is True
    assert auth._sodium_verify(scheme, value, b"benchpx") is False


@pytest.mark.parametrize("hash_len,salt_len", [(64, 16), (12, 16), (32, 48), (4, 8)])
def test_argon2_hash_and_salt_lengths_libsodium_refuses_stay_with_argon2_cffi(hash_len, salt_len):
    # Argon2 strings libsodium does not take (longer than 127 characters, a hash under 16
    # bytes) were answered False for the right password through the libsodium path
    from argon2 import PasswordHasher, Type

    ph = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, type=Type.ID,
                        hash_len=hash_len, salt_len=salt_len)
    stored = "{ARGON2ID}" + ph.hash("pässwörd")
    assert auth.check_password(stored, "pässwörd") is True
    assert auth.check_password(stored, "pässwörx") is False


def test_unknown_users_dummy_takes_the_library_path_of_the_files_hashes(tmp_path):
    # a file whose Argon2 hashes libsodium does not take (64-byte hashes: argon2-cffi, ~1.5
    # times the CPU) must get a dummy that does not either, or an unknown user answers faster
    from argon2 import PasswordHasher, Type

    for hash_len, salt_len in ((64, 16), (32, 16), (12, 8)):
        ph = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, type=Type.ID,
                            hash_len=hash_len, salt_len=salt_len)
        good = "{ARGON2ID}" + ph.hash("pw")
        p = tmp_path / f"users{hash_len}"
        p.write_text(f"alice@example.test:{good}::::::\n")
        users = Users(p)
        dummy = auth._make_dummy(auth._cost_key(users.typical))
        value, dvalue = auth.split_scheme(good)[1], auth.split_scheme(dummy)[1]
        assert (auth._sodium_verify("ARGON2ID", dvalue, b"x") is None) == \
            (auth._sodium_verify("ARGON2ID", value, b"x") is None), (good, dummy)
        assert dvalue.split("$")[3] == value.split("$")[3]
