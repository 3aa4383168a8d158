"""PGP decryption of configured imports against the real gpg, with keys generated here.

A "keygen" GnuPG home makes the keys (ours with a passphrase, the client's signing key with a
signing subkey, an "other" key, and a signing key that has expired); a separate "client" home
holds only what a client would (its secret keys and our public key) and encrypts the samples.
Keys are created with a faked clock in 2019 so that a signature can be made in 2020 by a key
that expired since.
"""

from __future__ import annotations

import gzip
import logging
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest_pipeline.imports import pgp
from ingest_pipeline.imports.pgp import (
    ENCRYPTED_EXTENSIONS,
    Decryptor,
    PgpError,
    PgpKeys,
    decrypted_name,
)

PASSPHRASE = "correct horse \u2603 p\u00e4ssphrase 7f3a"  # non-ASCII: gpg takes it as UTF-8
SIGNATURE_MISMATCH = "signature does not verify against the configured signing key"
CORRUPT = "the file is not valid PGP data (corrupt, truncated or not encrypted)"
WRONG_PASSPHRASE = "the private key's passphrase is wrong (check passphrase_env)"

CSV = 'id,name,city\r\n1,Zoë,Köln\r\n2,"Smith, J",Paris\r\n'.encode() * 50
CSV_GZ = gzip.compress(CSV, mtime=0)


def run_gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """The real gpg on `home`, never prompting and never on the network."""
    command = [
        pgp.GPG_BINARY,
        "--homedir",
        str(home),
        "--batch",
        "--yes",
        "--no-tty",
        "--disable-dirmngr",
        "--no-auto-key-locate",
        "--pinentry-mode",
        "loopback",
        "--trust-model",
        "always",
        *args,
    ]
    done = subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def new_home(path: Path) -> Path:
    path.mkdir(mode=0o700)
    # the cheapest passphrase-to-key derivation: no calibration, fast exports (test keys only)
    (path / "gpg-agent.conf").write_text("s2k-count 65536\n")
    return path


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def colons(home: Path, user: str) -> list[list[str]]:
    out = run_gpg(home, "--with-colons", "--fixed-list-mode", "--list-keys", user)
    return [line.split(":") for line in out.decode().splitlines()]


@dataclass(frozen=True)
class Pki:
    keygen: Path  # every key's secret (only to sign as "ours")
    client: Path  # the client's home: its secret keys, our public key
    private_key: str  # ours, armoured, protected by PASSPHRASE
    client_secret_key: str  # unprotected
    client_public: str
    other_public: str
    expired_public: str
    our_encryption_key_id: str
    other_encryption_key_id: str
    client_fingerprint: str
    client_signing_subkey: str  # fingerprint


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    base = tmp_path_factory.mktemp("pgp")
    keygen = new_home(base / "kg")
    client = new_home(base / "cl")
    at_2019 = "--faked-system-time=20190101T000000!"

    def gen(uid: str, passphrase: str, *spec: str, faked: str = at_2019) -> None:
        run_gpg(keygen, faked, "--passphrase", passphrase, "--quick-gen-key", uid, *spec)

    gen("Ours <ours@example.com>", PASSPHRASE, "future-default", "default", "never")
    gen("Client <client@example.com>", "", "future-default", "default", "never")
    gen("Other <other@example.com>", "", "future-default", "default", "never")
    gen(
        "Old <old@example.com>",
        "",
        "ed25519",
        "sign",
        "1d",
        faked="--faked-system-time=20191231T120000!",
    )
    client_fpr = next(r[9] for r in colons(keygen, "client@example.com") if r[0] == "fpr")
    run_gpg(keygen, at_2019, "--passphrase", "", "--quick-add-key", client_fpr, "ed25519", "sign")

    rows = colons(keygen, "client@example.com")
    subkey = next(i for i, r in enumerate(rows) if r[0] == "sub" and "s" in r[11])
    client_signing_subkey = rows[subkey + 1][9]

    def encryption_key_id(user: str) -> str:
        return next(r[4] for r in colons(keygen, user) if r[0] == "sub" and "e" in r[11])

    def export(*args: str) -> str:
        return run_gpg(keygen, "--armor", *args).decode()

    private_key = export("--passphrase", PASSPHRASE, "--export-secret-keys", "ours@example.com")
    client_secret = export("--passphrase", "", "--export-secret-keys", "client@example.com")
    others_secret = export(
        "--passphrase", "", "--export-secret-keys", "other@example.com", "old@example.com"
    )
    run_gpg(client, "--import", stdin=(client_secret + others_secret).encode())
    run_gpg(client, "--import", stdin=export("--export", "ours@example.com").encode())
    yield Pki(
        keygen=keygen,
        client=client,
        private_key=private_key,
        client_secret_key=client_secret,
        client_public=export("--export", "client@example.com"),
        other_public=export("--export", "other@example.com"),
        expired_public=export("--export", "old@example.com"),
        our_encryption_key_id=encryption_key_id("ours@example.com"),
        other_encryption_key_id=encryption_key_id("other@example.com"),
        client_fingerprint=client_fpr,
        client_signing_subkey=client_signing_subkey,
    )
    kill_agent(keygen)
    kill_agent(client)


def encrypt(
    pki: Pki,
    folder: Path,
    data: bytes,
    name: str,
    *,
    to: str = "ours@example.com",
    signer: str | None = None,
    armor: bool = False,
    home: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Path:
    """`data` encrypted (and signed by `signer`) as a client would, as folder/name."""
    plain = folder / f"{name}.plain"
    plain.write_bytes(data)
    out = folder / name
    args = ["--output", str(out)]
    if armor:
        args.append("--armor")
    if signer is not None:
        args += ["--local-user", signer, "--sign"]
    if home == pki.keygen:
        args += ["--passphrase", PASSPHRASE]
    run_gpg(home or pki.client, *extra, *args, "--recipient", to, "--encrypt", str(plain))
    plain.unlink()
    return out


def keys(pki: Pki, *, signer: str | None = None, passphrase: str | None = PASSPHRASE) -> PgpKeys:
    return PgpKeys(private_key=pki.private_key, passphrase=passphrase, signer_public_key=signer)


@pytest.fixture(scope="module")
def decryptor(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decryptor]:
    """No signer configured."""
    with Decryptor(keys(pki), workdir=tmp_path_factory.mktemp("dec")) as shared:
        yield shared


@pytest.fixture(scope="module")
def verifying(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decryptor]:
    """The client's public key configured as the signer."""
    with Decryptor(
        keys(pki, signer=pki.client_public), workdir=tmp_path_factory.mktemp("ver")
    ) as shared:
        yield shared


def failure(decryptor: Decryptor, src: Path, dest: Path) -> str:
    """The reason decrypting `src` fails; `dest` (made to exist beforehand) must be gone."""
    dest.write_bytes(b"left over from before")
    with pytest.raises(PgpError) as caught:
        decryptor.decrypt(src, dest)
    assert not dest.exists()
    return str(caught.value)


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("X_20260101.csv.gz.pgp", "X_20260101.csv.gz"),
        ("X_20260101.csv.gpg", "X_20260101.csv"),
        ("X_20260101.csv.PGP", "X_20260101.csv"),
        ("X_20260101.csv.Gpg", "X_20260101.csv"),
        ("dir/X.csv.pgp", "dir/X.csv"),
        ("X.csv.pgp.gpg", "X.csv.pgp"),
        ("X_20260101.csv", None),
        ("X_20260101.csv.gz", None),
        ("X.csv.asc", None),
        ("Xpgp", None),
        ("X.pgp.csv", None),
        (".pgp", None),
        ("dir/.gpg", None),
        ("", None),
    ],
)
def test_decrypted_name(name: str, expected: str | None) -> None:
    assert decrypted_name(name) == expected


def test_encrypted_extensions() -> None:
    assert ENCRYPTED_EXTENSIONS == (".pgp", ".gpg")


# --- decrypting -------------------------------------------------------------------------------


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armoured"])
@pytest.mark.parametrize("payload", [CSV, CSV_GZ], ids=["csv", "csv.gz"])
def test_decrypts_to_the_original_bytes(
    decryptor: Decryptor, pki: Pki, tmp_path: Path, armor: bool, payload: bytes
) -> None:
    src = encrypt(pki, tmp_path, payload, "X_20260101.csv.pgp", armor=armor)
    assert src.read_bytes().startswith(b"-----BEGIN PGP MESSAGE-----") == armor
    assert payload not in src.read_bytes()
    dest = tmp_path / "X_20260101.csv"
    decryptor.decrypt(src, dest)
    assert dest.read_bytes() == payload
    if payload is CSV_GZ:
        assert gzip.decompress(dest.read_bytes()) == CSV


def test_overwrites_an_existing_destination(decryptor: Decryptor, pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "a.csv.gpg")
    dest = tmp_path / "a.csv"
    dest.write_bytes(b"stale" * 10_000)
    decryptor.decrypt(src, dest)
    assert dest.read_bytes() == CSV


@pytest.mark.parametrize("signing_key", ["primary", "subkey"])
@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armoured"])
def test_signed_by_the_configured_signer(
    verifying: Decryptor, pki: Pki, tmp_path: Path, signing_key: str, armor: bool
) -> None:
    signer = pki.client_fingerprint if signing_key == "primary" else f"{pki.client_signing_subkey}!"
    src = encrypt(pki, tmp_path, CSV, "s.csv.pgp", signer=signer, armor=armor)
    dest = tmp_path / "s.csv"
    verifying.decrypt(src, dest)
    assert dest.read_bytes() == CSV


def test_signed_by_another_key(verifying: Decryptor, pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "s.csv.pgp", signer="other@example.com")
    reason = failure(verifying, src, tmp_path / "s.csv")
    assert reason.startswith(SIGNATURE_MISMATCH)
    other_fpr = next(r[9] for r in colons(pki.keygen, "other@example.com") if r[0] == "fpr")
    assert other_fpr in reason  # names who signed it


def test_signed_by_a_known_key_that_is_not_the_signer(
    verifying: Decryptor, pki: Pki, tmp_path: Path
) -> None:
    """Our own key's public half is in the Decryptor's keyring, so gpg calls this signature good:
    only the fingerprint comparison refuses it."""
    src = encrypt(pki, tmp_path, CSV, "s.csv.pgp", signer="ours@example.com", home=pki.keygen)
    assert failure(verifying, src, tmp_path / "s.csv").startswith(SIGNATURE_MISMATCH)


def test_unsigned_with_a_signer_configured(verifying: Decryptor, pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "u.csv.pgp")
    reason = failure(verifying, src, tmp_path / "u.csv")
    assert reason == f"{SIGNATURE_MISMATCH}: the file is not signed"


def test_signed_by_a_signing_key_that_has_expired(pki: Pki, tmp_path: Path) -> None:
    src = encrypt(
        pki,
        tmp_path,
        CSV,
        "e.csv.pgp",
        signer="old@example.com",
        extra=("--faked-system-time=20200101T010000!",),
    )
    with Decryptor(keys(pki, signer=pki.expired_public), workdir=tmp_path / "w") as decryptor:
        reason = failure(decryptor, src, tmp_path / "e.csv")
    assert reason.startswith(SIGNATURE_MISMATCH)
    assert "expired" in reason


@pytest.mark.parametrize("signer", ["client@example.com", "other@example.com"])
def test_signed_without_a_signer_configured(
    decryptor: Decryptor, pki: Pki, tmp_path: Path, signer: str
) -> None:
    src = encrypt(pki, tmp_path, CSV, "s.csv.pgp", signer=signer)
    dest = tmp_path / "s.csv"
    decryptor.decrypt(src, dest)
    assert dest.read_bytes() == CSV


def test_encrypted_to_another_key(decryptor: Decryptor, pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "o.csv.pgp", to="other@example.com")
    reason = failure(decryptor, src, tmp_path / "o.csv")
    assert reason.startswith("the file is not encrypted to the configured private key")
    assert pki.other_encryption_key_id in reason
    assert pki.our_encryption_key_id in reason
    assert "check private_key_env" in reason


def test_wrong_passphrase_fails_fast(pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "a.csv.pgp")
    with Decryptor(keys(pki, passphrase="not the passphrase"), workdir=tmp_path / "w") as decryptor:
        started = time.monotonic()
        assert failure(decryptor, src, tmp_path / "a.csv") == WRONG_PASSPHRASE
        assert time.monotonic() - started < 10  # no prompt, no retries
        # and again, now that the agent has seen the key
        assert failure(decryptor, src, tmp_path / "a.csv") == WRONG_PASSPHRASE


def test_no_passphrase_for_a_protected_key(pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "a.csv.pgp")
    with Decryptor(keys(pki, passphrase=None), workdir=tmp_path / "w") as decryptor:
        reason = failure(decryptor, src, tmp_path / "a.csv")
    assert "passphrase" in reason and "none is configured" in reason


def test_unprotected_key_with_a_passphrase_configured(pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "a.csv.pgp", to="client@example.com")
    unprotected = PgpKeys(pki.client_secret_key, "ignored", None)
    with Decryptor(unprotected, workdir=tmp_path / "w") as decryptor:
        decryptor.decrypt(src, tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_bytes() == CSV


def _flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x5A
    return bytes(changed)


@pytest.mark.parametrize(
    "damage",
    [
        "flip-middle",
        "flip-near-end",  # the integrity check fails after gpg has written the plaintext
        "truncate-end",
        "truncate-half",  # gpg exits 0 for this one
        "truncate-to-header",
        "random-bytes",
        "plain-csv",
        "empty",
        "armour-truncated",
        "binary-with-trailing-junk",
    ],
)
def test_corrupt_file(decryptor: Decryptor, pki: Pki, tmp_path: Path, damage: str) -> None:
    armor = damage.startswith("armour")
    good = encrypt(pki, tmp_path, CSV, "good.gpg", armor=armor).read_bytes()
    size = len(good)
    damaged = {
        "flip-middle": lambda: _flip(good, size // 2),
        "flip-near-end": lambda: _flip(good, size - 10),
        "truncate-end": lambda: good[:-25],
        "truncate-half": lambda: good[: size // 2],
        "truncate-to-header": lambda: good[:40],
        "random-bytes": lambda: random.Random(7).randbytes(5000),
        "plain-csv": lambda: CSV,
        "empty": lambda: b"",
        "armour-truncated": lambda: b"\n".join(good.splitlines()[:5]) + b"\n",
        "binary-with-trailing-junk": lambda: good + b"junk",
    }[damage]()
    src = tmp_path / "bad.csv.pgp"
    src.write_bytes(damaged)
    assert failure(decryptor, src, tmp_path / "bad.csv") == CORRUPT


def test_flipped_bytes_never_decrypt(decryptor: Decryptor, pki: Pki, tmp_path: Path) -> None:
    """Whatever byte is damaged, the file fails (for a damaged recipient key ID gpg can only
    say it is encrypted to another key) and nothing is left behind."""
    good = encrypt(pki, tmp_path, CSV_GZ, "good.gpg").read_bytes()
    src = tmp_path / "bad.csv.gz.pgp"
    for at in random.Random(3).sample(range(len(good)), 12):
        src.write_bytes(_flip(good, at))
        reason = failure(decryptor, src, tmp_path / "bad.csv.gz")
        assert reason == CORRUPT or reason.startswith("the file is not encrypted to"), (at, reason)


def test_signed_only_or_stored_is_not_encrypted(
    decryptor: Decryptor, pki: Pki, tmp_path: Path
) -> None:
    plain = tmp_path / "p.csv"
    plain.write_bytes(CSV)
    for mode in ("--sign", "--store"):
        src = tmp_path / f"p{mode}.csv.pgp"
        run_gpg(pki.client, "--local-user", "client@example.com", "-o", str(src), mode, str(plain))
        assert failure(decryptor, src, tmp_path / "p.out").startswith(
            "the file is OpenPGP data but not encrypted"
        )


def test_password_encrypted_file_is_refused_even_with_our_passphrase(
    decryptor: Decryptor, pki: Pki, tmp_path: Path
) -> None:
    """gpg would decrypt it with the passphrase it is given for our key."""
    plain = tmp_path / "p.csv"
    plain.write_bytes(CSV)
    src = tmp_path / "p.csv.pgp"
    run_gpg(
        pki.client,
        *("--s2k-count", "65536", "--passphrase", PASSPHRASE),
        *("-o", str(src), "--symmetric", str(plain)),
    )
    reason = failure(decryptor, src, tmp_path / "p.out")
    assert reason.startswith("the file is encrypted with a password")


def test_unwritable_destination(decryptor: Decryptor, pki: Pki, tmp_path: Path) -> None:
    src = encrypt(pki, tmp_path, CSV, "a.csv.pgp")
    dest = tmp_path / "missing" / "a.csv"
    with pytest.raises(PgpError, match="No such file or directory"):
        decryptor.decrypt(src, dest)
    assert not dest.exists()


def test_missing_source(decryptor: Decryptor, tmp_path: Path) -> None:
    with pytest.raises(PgpError, match="cannot read"):
        decryptor.decrypt(tmp_path / "nope.pgp", tmp_path / "nope")


# --- one Decryptor, many files; nothing left behind ------------------------------------------


def _agent_pids(home: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"gpg-agent" in cmdline and str(home).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def _secret_fragments(pki: Pki) -> list[bytes]:
    body = [
        line
        for line in pki.private_key.splitlines()
        if len(line) >= 40 and not line.startswith("-----")
    ]
    assert body
    return [
        PASSPHRASE.encode(),
        PASSPHRASE.encode().decode("latin-1").encode("utf-8"),
        b"PRIVATE KEY BLOCK",
        *(line.encode() for line in body),
    ]


def test_many_files_through_one_decryptor_then_close(pki: Pki, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    files = []
    for i in range(12):
        payload = CSV_GZ if i % 2 else CSV + str(i).encode()
        signer = "client@example.com" if i % 3 else f"{pki.client_signing_subkey}!"
        src = encrypt(pki, tmp_path, payload, f"F_{i}.csv.pgp", signer=signer, armor=i % 4 == 0)
        files.append((src, payload))
    decryptor = Decryptor(keys(pki, signer=pki.client_public), workdir=workdir)
    home = decryptor.home
    assert home.parent == workdir and home.is_dir()
    assert home.stat().st_mode & 0o777 == 0o700
    outputs = tmp_path / "out"
    outputs.mkdir()
    for src, payload in files[:4]:  # one after the other
        decryptor.decrypt(src, outputs / src.stem)
        assert (outputs / src.stem).read_bytes() == payload
    errors: list[BaseException] = []

    def work(src: Path, payload: bytes) -> None:
        try:
            dest = outputs / f"t-{src.stem}"
            decryptor.decrypt(src, dest)
            assert dest.read_bytes() == payload
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=f) for f in files[4:]]  # at the same time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert _agent_pids(home)  # the agent runs while the Decryptor is open

    decryptor.close()
    assert not home.exists()
    assert decryptor.closed
    decryptor.close()  # again: harmless
    deadline = time.monotonic() + 5
    while _agent_pids(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _agent_pids(home)
    assert sorted(p.name for p in workdir.iterdir()) == []
    secrets = _secret_fragments(pki)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(secret in content for secret in secrets), path
    with pytest.raises(ValueError, match="closed"):
        decryptor.decrypt(files[0][0], outputs / "again")


def test_home_defaults_to_the_system_temp_dir(pki: Pki) -> None:
    import tempfile

    with Decryptor(keys(pki)) as decryptor:
        home = decryptor.home
        assert home.parent == Path(tempfile.gettempdir())
        assert (home / "pubring.kbx").exists()
    assert not home.exists()


def test_closed_when_the_with_block_raises(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with Decryptor(keys(pki), workdir=tmp_path) as decryptor:
            home = decryptor.home
            raise RuntimeError("boom")
    assert not home.exists()


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["garbage", "public-only", "empty-armour"])
def test_unusable_private_key(pki: Pki, tmp_path: Path, which: str) -> None:
    text = {
        "garbage": "this is not a key",
        "public-only": pki.client_public,
        "empty-armour": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n-----END PGP PRIVATE KEY BLOCK-----\n",
    }[which]
    with pytest.raises(PgpError) as caught:
        Decryptor(PgpKeys(text, PASSPHRASE, None), workdir=tmp_path / "w")
    message = str(caught.value)
    assert message.startswith("private_key_env does not hold a usable PGP private key")
    assert PASSPHRASE not in message and "BEGIN PGP" not in message
    assert list((tmp_path / "w").iterdir()) == []  # the home of a failed construction is gone


def test_unusable_signer_key(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(
        PgpError, match="signer_public_key_env does not hold a usable PGP public key"
    ):
        Decryptor(keys(pki, signer="not a key"), workdir=tmp_path / "w")
    assert list((tmp_path / "w").iterdir()) == []


def test_passphrase_with_a_line_break(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(PgpError, match="line break") as caught:
        Decryptor(keys(pki, passphrase=PASSPHRASE + "\n"), workdir=tmp_path / "w")
    assert PASSPHRASE not in str(caught.value)


def test_workdir_too_deep_for_the_agent_socket(pki: Pki, tmp_path: Path) -> None:
    """gpg-agent's socket lives in the home unless /run/user/<uid> exists, and a Unix socket's
    path is at most 107 bytes: a workdir too deep for it is not used, the home goes to a
    shorter temp dir, and decryption works."""
    deep = tmp_path / ("d" * (110 - len(str(tmp_path))))
    with Decryptor(keys(pki), workdir=deep) as decryptor:
        assert not decryptor.home.is_relative_to(deep)
        assert len(str(decryptor.home / "S.gpg-agent.browser")) <= 107
        src = encrypt(pki, tmp_path, CSV, "deep.csv.pgp")
        decryptor.decrypt(src, tmp_path / "deep.csv")
        assert (tmp_path / "deep.csv").read_bytes() == CSV
        home = decryptor.home
    assert not home.exists()


def test_from_env(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_PGP_KEY", pki.private_key)
    monkeypatch.setenv("T_PGP_PASS", PASSPHRASE)
    monkeypatch.setenv("T_PGP_SIGNER", pki.client_public.replace("\n", "\\n"))  # one line
    loaded = PgpKeys.from_env("T_PGP_KEY", "T_PGP_PASS", "T_PGP_SIGNER")
    assert loaded == PgpKeys(pki.private_key, PASSPHRASE, pki.client_public)
    assert PgpKeys.from_env("T_PGP_KEY", None, None) == PgpKeys(pki.private_key, None, None)


@pytest.mark.parametrize("missing", ["T_PGP_KEY", "T_PGP_PASS", "T_PGP_SIGNER"])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_from_env_missing_variable(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, missing: str, how: str
) -> None:
    monkeypatch.setenv("T_PGP_KEY", pki.private_key)
    monkeypatch.setenv("T_PGP_PASS", PASSPHRASE)
    monkeypatch.setenv("T_PGP_SIGNER", pki.client_public)
    if how == "unset":
        monkeypatch.delenv(missing)
    else:
        monkeypatch.setenv(missing, "  ")
    with pytest.raises(PgpError) as caught:
        PgpKeys.from_env("T_PGP_KEY", "T_PGP_PASS", "T_PGP_SIGNER")
    message = str(caught.value)
    assert missing in message
    assert ("not set" if how == "unset" else "empty") in message
    assert PASSPHRASE not in message
    assert not any(line in message for line in pki.private_key.splitlines() if len(line) > 20)


def test_repr_shows_no_secret(pki: Pki) -> None:
    loaded = keys(pki, signer=pki.client_public)
    for text in (repr(loaded), str(loaded), f"{loaded}", repr([loaded])):
        assert PASSPHRASE not in text
        assert "PGP" not in text
        assert not any(line in text for line in pki.private_key.splitlines() if len(line) > 20)
        assert "PgpKeys(private_key=<redacted>, passphrase=<redacted>" in text


def test_no_secret_in_log_records(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = encrypt(pki, tmp_path, CSV, "a.csv.pgp", signer="client@example.com")
    caplog.set_level(logging.DEBUG)
    with Decryptor(keys(pki, signer=pki.client_public), workdir=tmp_path / "w") as decryptor:
        decryptor.decrypt(src, tmp_path / "a.csv")
    with Decryptor(keys(pki, passphrase="wrong " + PASSPHRASE), workdir=tmp_path / "w") as bad:
        with pytest.raises(PgpError):
            bad.decrypt(src, tmp_path / "b.csv")
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("import_keys:") for m in messages)  # python-gnupg did log the import
    assert any("Wrote passphrase" in m for m in messages)
    text = "\n".join(messages)
    secrets = [s.decode("utf-8", "replace") for s in _secret_fragments(pki)]
    for secret in [*secrets, PASSPHRASE.encode().decode("latin-1")]:
        assert secret not in text
