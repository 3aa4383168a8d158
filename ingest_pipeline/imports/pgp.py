"""PGP decryption of a configured import's files (SPEC section 3.4), with GnuPG via python-gnupg.

Clients may send `.pgp`/`.gpg` files, binary or ASCII-armoured, encrypted to our key and
optionally signed with theirs. One `Decryptor` per run: a throwaway GnuPG home (mode 0700) that
imports the keys once, decrypts many files by streaming them through `gpg`, and is deleted (its
gpg-agent killed) on close. Nothing here knows about Dagster.

What gpg reports is read from its machine-readable status lines, never from its exit status
alone, because gpg is inconsistent about it (gpg 2.2, checked in the tests):

* a truncated file can exit 0 with only ``NODATA`` and no output;
* a wrong passphrase gives no ``BAD_PASSPHRASE`` line, only ``ERROR pkdecrypt_failed`` with the
  error code 11 (GPG_ERR_BAD_PASSPHRASE);
* a file that fails its integrity check (``BADMDC``) has already been written to the output;
* an output that cannot be written still says ``DECRYPTION_OKAY`` (only the exit status is 2);
* a signed-only or "stored" OpenPGP message "decrypts" with exit status 0, and a file encrypted
  with a password (symmetric) decrypts if the password happens to be our key's passphrase: both
  are refused, since only files encrypted to the configured private key are accepted.

Secrets: the key text and the passphrase reach gpg on its standard input only. python-gnupg logs
the first 256 characters of imported key data at DEBUG; a filter on its ``gnupg`` logger
(installed when this module is imported) redacts those records.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gnupg

ENCRYPTED_EXTENSIONS = (".pgp", ".gpg")

GPG_BINARY = shutil.which("gpg") or "/usr/bin/gpg"

# Every gpg call: passphrases through the loopback pinentry (read from gpg's stdin, so a wrong
# one fails at once and nothing ever prompts), never the network (no dirmngr, so no keyserver,
# WKD or DANE lookups), no trust database (the signer is checked by fingerprint, below), and no
# caching of symmetric passphrases. python-gnupg adds --batch, --no-tty and --status-fd 2.
_GPG_OPTIONS = [
    "--pinentry-mode",
    "loopback",
    "--disable-dirmngr",
    "--no-auto-key-retrieve",
    "--no-auto-key-locate",
    "--trust-model",
    "always",
    "--no-symkey-cache",
]

# The private home's gpg-agent. The imported private key is re-protected inside that home, which
# is deleted at close: its passphrase-to-key derivation can be the cheapest gpg allows, instead of
# gpg-agent's calibrated ~100 ms of CPU (measured here: 0.5 s per file on a loaded machine).
_AGENT_CONF = """\
# Written by ingest_pipeline.imports.pgp for one run's throwaway GnuPG home.
allow-loopback-pinentry
disable-scdaemon
s2k-count 65536
"""

# Unix socket paths are limited to 107 bytes; gpg-agent puts S.gpg-agent.browser in the home
# (unless /run/user/<uid> exists), so a longer home cannot start an agent.
_AGENT_SOCKET = "S.gpg-agent.browser"
_SOCKET_PATH_MAX = 107
_AGENT_FAILURE = re.compile(
    r"^gpg: .*(no agent running|can't connect to the agent|failed to start agent)",
    re.IGNORECASE | re.MULTILINE,
)

# libgpg-error codes (the low 16 bits of gpg's status-line error values).
_GPG_ERR_BAD_PASSPHRASE = 11
_GPG_ERR_CHECKSUM = 10
_GPG_ERR_NO_PUBKEY = 9

SIGNATURE_MISMATCH = "signature does not verify against the configured signing key"
CORRUPT = "the file is not valid PGP data (corrupt, truncated or not encrypted)"
WRONG_PASSPHRASE = "the private key's passphrase is wrong (check passphrase_env)"
NO_PASSPHRASE = (
    "the private key is protected by a passphrase but none is configured (set passphrase_env)"
)
SYMMETRIC = (
    "the file is encrypted with a password (symmetric encryption), not to the configured private "
    "key: ask the sender to encrypt it to our public key"
)
NOT_ENCRYPTED = (
    "the file is OpenPGP data but not encrypted (only signed or stored): ask the sender to "
    "encrypt it to our public key"
)
UNUSABLE_PRIVATE_KEY = "private_key_env does not hold a usable PGP private key"
UNUSABLE_SIGNER_KEY = "signer_public_key_env does not hold a usable PGP public key"


class PgpError(Exception):
    """A file cannot be decrypted (or its signature does not verify); str(exc) is a reason a
    person can act on."""


@dataclass(frozen=True, repr=False)
class PgpKeys:
    """An import's keys, as text. `private_key` and `passphrase` are secrets: never in repr()."""

    private_key: str  # armoured private key (ours)
    passphrase: str | None  # the private key's passphrase, None when it has none
    signer_public_key: str | None  # armoured public key of the client's signing key

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "<redacted>"

        signer = "None" if self.signer_public_key is None else "<set>"
        return (
            f"PgpKeys(private_key={shown(self.private_key)}, "
            f"passphrase={shown(self.passphrase)}, signer_public_key={signer})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(
        cls,
        private_key_env: str,
        passphrase_env: str | None,
        signer_public_key_env: str | None,
    ) -> PgpKeys:
        """Read the keys from the named environment variables; a missing/empty variable raises
        PgpError naming the VARIABLE (never any value).

        A key stored on one line with literal ``\\n`` escapes (as some secret stores and .env
        files do) is unescaped; the passphrase is taken exactly as it is.
        """
        private_key = _key_text(_env_value(private_key_env, "private_key_env"))
        passphrase = (
            None if passphrase_env is None else _env_value(passphrase_env, "passphrase_env")
        )
        signer = None
        if signer_public_key_env is not None:
            signer = _key_text(_env_value(signer_public_key_env, "signer_public_key_env"))
        return cls(private_key=private_key, passphrase=passphrase, signer_public_key=signer)


def _env_value(name: str, role: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise PgpError(f"the environment variable {name} ({role}) is not set")
    if not value.strip():
        raise PgpError(f"the environment variable {name} ({role}) is empty")
    return value


def _key_text(value: str) -> str:
    if "\n" not in value and "\\n" in value:
        return value.replace("\\r\\n", "\n").replace("\\n", "\n")
    return value


def decrypted_name(name: str) -> str | None:
    """'X_20260101.csv.gz.pgp' -> 'X_20260101.csv.gz'; case-insensitive on the extension; None
    when the name is not encrypted."""
    lowered = name.lower()
    for extension in ENCRYPTED_EXTENSIONS:
        if lowered.endswith(extension):
            stem = name[: -len(extension)]
            # '.pgp' alone (or 'dir/.pgp') names no file
            return stem if stem and not stem.endswith("/") else None
    return None


class _RedactKeyData(logging.Filter):
    """python-gnupg logs `key_data[:256]` at DEBUG when importing (and scanning) keys: our private
    key's text. Replace those arguments before any handler sees them."""

    _MESSAGES = frozenset({"import_keys: %r", "scan_keys: %r"})

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg in self._MESSAGES:
            record.args = ("<key data redacted>",)
        return True


def _install_log_redaction() -> None:
    gnupg_logger = logging.getLogger(gnupg.__name__)
    if not any(isinstance(f, _RedactKeyData) for f in gnupg_logger.filters):
        gnupg_logger.addFilter(_RedactKeyData())


_install_log_redaction()


def _gpg_env() -> dict[str, str]:
    """gpg's environment: English messages (they end up in reasons), UTF-8."""
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "GNUPGHOME")}
    env["LC_ALL"] = "C.UTF-8"
    return env


def _gpgconf_binary() -> str:
    sibling = Path(GPG_BINARY).with_name("gpgconf")
    return str(sibling) if sibling.exists() else (shutil.which("gpgconf") or "gpgconf")


def _remove_home(home: str, gpgconf: str, env: dict[str, str]) -> None:
    """Kill the home's gpg-agent and delete the home (idempotent; never raises)."""
    for args in (["--kill", "all"], ["--remove-socketdir"]):
        try:
            subprocess.run(
                [gpgconf, "--homedir", home, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
    for _ in range(20):  # the agent may still be removing its sockets as it exits
        shutil.rmtree(home, ignore_errors=True)
        if not os.path.lexists(home):
            return
        time.sleep(0.05)


def _statuses(stderr: str) -> list[tuple[str, str]]:
    """gpg's `[GNUPG:] KEYWORD value` lines, in order."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, value = line[9:].strip().partition(" ")
            found.append((keyword, value.strip()))
    return found


def _gpg_errors(stderr: str) -> str:
    """gpg's own error lines (no secrets: gpg never prints key material or passphrases)."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.startswith("gpg: ") and ("error" in line.lower() or "failed" in line.lower())
    ]
    return "; ".join(dict.fromkeys(lines))


def _error_code(value: str) -> int | None:
    """The libgpg-error code (low 16 bits) of an `ERROR <location> <code>` status value."""
    parts = value.split()
    if parts and parts[-1].isdigit():
        return int(parts[-1]) & 0xFFFF
    return None


def _remove(path: Path) -> None:
    try:
        if path.is_file() or path.is_symlink():
            path.unlink()
    except OSError:
        pass


# What mkdtemp adds to the parent: "/gnupg-" and 8 random characters.
_HOME_SUFFIX = len("/gnupg-") + 8


def _home_parent(workdir: Path | None) -> str:
    """Where the private home goes: `workdir`, else the temp dir, else /tmp, the first whose
    home path leaves room for gpg-agent's socket (a deep TMPDIR would stop the agent)."""
    room = _SOCKET_PATH_MAX - len(_AGENT_SOCKET) - 1 - _HOME_SUFFIX
    candidates = [str(workdir)] if workdir is not None else []
    candidates += [tempfile.gettempdir(), "/tmp"]
    for parent in candidates:
        if len(os.path.abspath(parent)) <= room:
            Path(parent).mkdir(parents=True, exist_ok=True)
            return parent
    return candidates[-1]


class Decryptor:
    """One run's private GnuPG home: a fresh temporary directory (mode 0700, under `workdir` if
    given, else the system temp dir), keys imported once, used for many files, removed on close
    (its gpg-agent killed too). Context manager. `decrypt` may be called from several threads."""

    def __init__(self, keys: PgpKeys, workdir: Path | None = None) -> None:
        self._env = _gpg_env()
        self._passphrase = self._gpg_passphrase(keys.passphrase)
        self._has_passphrase = self._passphrase is not None
        self._check_signer = keys.signer_public_key is not None
        self._home = tempfile.mkdtemp(prefix="gnupg-", dir=_home_parent(workdir))
        os.chmod(self._home, 0o700)
        self._finalizer = weakref.finalize(
            self, _remove_home, self._home, _gpgconf_binary(), self._env
        )
        self._first = threading.Lock()  # the first use converts the imported key: one at a time
        self._used = False
        try:
            Path(self._home, "gpg-agent.conf").write_text(_AGENT_CONF)
            self._gpg = self._open_gpg()
            self._encryption_key_ids = self._import_private_key(keys.private_key)
            self._signer_fingerprints: frozenset[str] = frozenset()
            if keys.signer_public_key is not None:
                self._signer_fingerprints = self._import_signer_key(keys.signer_public_key)
        except BaseException:
            self.close()
            raise

    @property
    def home(self) -> Path:
        """The private GnuPG home (gone after close)."""
        return Path(self._home)

    def __enter__(self) -> Decryptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the home's gpg-agent and delete the home with the imported keys. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # --- set-up -----------------------------------------------------------------------------

    @staticmethod
    def _gpg_passphrase(passphrase: str | None) -> str | None:
        if passphrase is None or passphrase == "":
            return None
        if any(c in passphrase for c in "\r\n\x00"):
            raise PgpError(
                "the passphrase in passphrase_env contains a line break or NUL character, "
                "which gpg cannot take"
            )
        # python-gnupg writes the passphrase to gpg's stdin encoded as latin-1 (its encoding, kept
        # so that reading gpg's output never fails); gpg takes the passphrase's bytes as UTF-8.
        return passphrase.encode("utf-8").decode("latin-1")

    def _open_gpg(self) -> gnupg.GPG:
        try:
            gpg = gnupg.GPG(
                gpgbinary=GPG_BINARY,
                gnupghome=self._home,
                options=list(_GPG_OPTIONS),
                env=self._env,
                encoding="latin-1",
            )
        except (OSError, ValueError) as exc:
            raise PgpError(f"GnuPG (gpg) cannot be run: {exc}") from None
        if gpg.version is None or gpg.version < (2, 1):
            raise PgpError(f"GnuPG 2.1 or later is needed (found {gpg.version})")
        return gpg

    def _agent_problem(self, stderr: str) -> str | None:
        """A reason when gpg says it could not reach (or start) the home's gpg-agent."""
        if not _AGENT_FAILURE.search(stderr):
            return None
        hint = ""
        if len(os.fsencode(os.path.join(self._home, _AGENT_SOCKET))) > _SOCKET_PATH_MAX:
            hint = (
                f" (the private GnuPG home's path is {len(self._home)} characters: too long for"
                " gpg-agent's socket; use a shorter workdir)"
            )
        return f"gpg-agent could not be used{hint}: {_gpg_errors(stderr) or 'no details'}"

    def _import_private_key(self, text: str) -> tuple[str, ...]:
        """Import our key; the key IDs it can decrypt with (named in the wrong-key reason)."""
        result = self._gpg.import_keys(text.encode("utf-8"))
        if not result.sec_imported:
            problem = self._agent_problem(result.stderr)
            if problem:
                raise PgpError(problem)
            if result.fingerprints:
                raise PgpError(f"{UNUSABLE_PRIVATE_KEY}: it holds only a public key")
            raise PgpError(f"{UNUSABLE_PRIVATE_KEY}: gpg finds no OpenPGP key in it")
        key_ids: list[str] = []
        for key in self._gpg.list_keys(secret=True):
            if "e" in key.get("cap", ""):
                key_ids.append(key["keyid"])
            for subkey_id, info in (key.get("subkey_info") or {}).items():
                if "e" in (info.get("cap") or ""):
                    key_ids.append(subkey_id)
        if not key_ids:
            raise PgpError(f"{UNUSABLE_PRIVATE_KEY}: it has no encryption (sub)key")
        return tuple(key_ids)

    def _import_signer_key(self, text: str) -> frozenset[str]:
        """Import the client's signing key; the fingerprints of its primary key and subkeys."""
        result = self._gpg.import_keys(text.encode("utf-8"))
        primaries = sorted(set(result.fingerprints))
        if not primaries:
            raise PgpError(f"{UNUSABLE_SIGNER_KEY}: gpg finds no OpenPGP key in it")
        fingerprints = set(primaries)
        for key in self._gpg.list_keys(keys=primaries):
            fingerprints.add(key["fingerprint"])
            fingerprints.update(sub[2] for sub in key.get("subkeys", []) if sub[2])
        return frozenset(f.upper() for f in fingerprints)

    # --- decryption -------------------------------------------------------------------------

    def decrypt(self, src: Path, dest: Path) -> None:
        """Decrypt `src` into `dest`, streaming. On any failure `dest` is removed and PgpError is
        raised with the reason."""
        if self.closed:
            raise ValueError("the Decryptor is closed")
        src, dest = Path(src), Path(dest)
        try:
            if self._used:
                result = self._run_gpg(src, dest)
            else:
                with self._first:
                    result = self._run_gpg(src, dest)
                    self._used = True
            reason = self._failure(result)
        except BaseException:
            _remove(dest)
            raise
        if reason is not None:
            _remove(dest)
            raise PgpError(reason)

    def _run_gpg(self, src: Path, dest: Path) -> Any:
        # Without a configured signer, signatures are not checked at all (an unverifiable one
        # would make gpg exit 2, which must keep meaning "something failed").
        extra_args = [] if self._check_signer else ["--skip-verify"]
        try:
            fileobj = open(src, "rb")  # closed by the with below
        except OSError as exc:
            raise PgpError(f"cannot read {src}: {exc.strerror or exc}") from None
        with fileobj:
            try:
                # python-gnupg copies the file to gpg's stdin in 16 KB chunks; gpg writes `dest`.
                return self._gpg.decrypt_file(
                    fileobj,
                    output=str(dest),
                    passphrase=self._passphrase,
                    extra_args=extra_args,
                )
            except BrokenPipeError:  # gpg stopped reading its input
                raise PgpError(CORRUPT) from None

    def _failure(self, result: Any) -> str | None:
        """Why this decryption failed, or None when it succeeded (and the signer verified)."""
        stderr = result.stderr or ""
        statuses = _statuses(stderr)
        keywords = {keyword for keyword, _ in statuses}
        encrypted_to = [
            value.split()[0] for keyword, value in statuses if keyword == "ENC_TO" and value
        ]

        if "NEED_PASSPHRASE_SYM" in keywords and not encrypted_to:
            return SYMMETRIC
        decrypted = "DECRYPTION_OKAY" in keywords and not keywords & {
            "DECRYPTION_FAILED",
            "BADMDC",
            "NODATA",
        }
        if not decrypted:
            return self._decryption_failure(statuses, keywords, encrypted_to, stderr)
        if self._check_signer:
            mismatch = self._signature_problem(statuses)
            if mismatch is not None:
                return f"{SIGNATURE_MISMATCH}: {mismatch}"
        if result.returncode != 0:  # e.g. the output could not be written
            details = _gpg_errors(stderr) or f"exit status {result.returncode}"
            return f"gpg failed while decrypting the file: {details}"
        return None

    def _decryption_failure(
        self,
        statuses: list[tuple[str, str]],
        keywords: set[str],
        encrypted_to: list[str],
        stderr: str,
    ) -> str:
        if "PLAINTEXT" in keywords and not encrypted_to and "BEGIN_DECRYPTION" not in keywords:
            return NOT_ENCRYPTED
        codes = {_error_code(value) for keyword, value in statuses if keyword == "ERROR"}
        if "BAD_PASSPHRASE" in keywords or _GPG_ERR_BAD_PASSPHRASE in codes:
            return WRONG_PASSPHRASE
        if not self._has_passphrase and keywords & {"NEED_PASSPHRASE", "MISSING_PASSPHRASE"}:
            return NO_PASSPHRASE
        if "NO_SECKEY" in keywords and "DECRYPTION_KEY" not in keywords:
            ids = ", ".join(dict.fromkeys(encrypted_to)) or "unknown"
            ours = ", ".join(self._encryption_key_ids)
            plural = "s" if len(set(encrypted_to)) > 1 else ""
            return (
                f"the file is not encrypted to the configured private key (it is encrypted to key "
                f"ID{plural} {ids}; the configured key decrypts with {ours}): check "
                "private_key_env"
            )
        problem = self._agent_problem(stderr)
        if problem and _GPG_ERR_CHECKSUM not in codes:
            return problem
        return CORRUPT

    def _signature_problem(self, statuses: list[tuple[str, str]]) -> str | None:
        """None when a good signature by the configured key (primary or subkey) is present and no
        signature is bad; otherwise what is wrong."""
        signatures: list[list[tuple[str, str]]] = []
        current: list[tuple[str, str]] | None = None
        for keyword, value in statuses:
            if keyword == "NEWSIG":
                current = []
                signatures.append(current)
            elif keyword in (
                "GOODSIG",
                "BADSIG",
                "ERRSIG",
                "EXPSIG",
                "EXPKEYSIG",
                "REVKEYSIG",
                "VALIDSIG",
            ):
                if current is None:  # a gpg that does not say NEWSIG
                    current = []
                    signatures.append(current)
                current.append((keyword, value))
        signatures = [s for s in signatures if s]
        if not signatures:
            return "the file is not signed"

        problems: list[str] = []
        accepted = False
        for signature in signatures:
            found = dict(signature)
            valid = found.get("VALIDSIG", "").split()
            by_signer = bool(valid) and (
                valid[0].upper() in self._signer_fingerprints
                or (len(valid) >= 10 and valid[9].upper() in self._signer_fingerprints)
            )
            if "BADSIG" in found:
                key_id = (found["BADSIG"].split() or ["unknown"])[0]
                return (
                    f"the signature by key ID {key_id} is bad (the file was changed after signing)"
                )
            if "GOODSIG" in found and by_signer:
                accepted = True
            elif by_signer and "EXPKEYSIG" in found:
                problems.append(
                    "the configured signing key has expired (ask the client for its renewed public key)"
                )
            elif by_signer and "REVKEYSIG" in found:
                problems.append(
                    "the configured signing key has been revoked (ask the client for its new key)"
                )
            elif by_signer and "EXPSIG" in found:
                problems.append("the signature has expired")
            elif valid:
                problems.append(f"the file is signed by key {valid[0]}, not by the configured key")
            elif "ERRSIG" in found:
                parts = found["ERRSIG"].split() or ["unknown"]
                key = parts[6] if len(parts) >= 7 else parts[0]
                if len(parts) >= 6 and parts[5].isdigit() and int(parts[5]) != _GPG_ERR_NO_PUBKEY:
                    problems.append(f"gpg cannot check the signature by key {key}")
                else:
                    problems.append(f"the file is signed by key {key}, not by the configured key")
        if accepted:
            return None
        return "; ".join(dict.fromkeys(problems)) or "no good signature"
