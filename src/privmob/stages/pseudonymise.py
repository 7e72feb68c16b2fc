"""Stage 3 — pseudonymise: person ids become keyed HMAC-SHA256 pseudonyms.

Only the distinct ids are hashed (one C call each via :func:`hmac.digest`) and joined
back, which is ~10x faster than hashing per ping. The key is derived per key period
(``HMAC(master, "privmob/period/<start>")``), so pseudonyms of one period cannot be linked
to another's without the master key. The key is never printed, logged or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from privmob.errors import KeyFileError

if TYPE_CHECKING:
    from privmob.config import JobConfig

__all__ = ["MIN_DISTINCT_BYTES", "MIN_KEY_BYTES", "Pseudonymiser", "check_job_keys", "check_keys_apart",
           "key_weakness", "load_key", "new_key"]

MIN_KEY_BYTES = 32
#: A key must use at least this many distinct byte values. Length alone lets through the
#: keys that mistakes make — 32 zero bytes from /dev/zero, one character repeated, a
#: "xxxx…" placeholder — and those are guessed first. 8 is far below what a random key has
#: (64 hex characters of :func:`new_key` show ≥ 8 of the 16 digits except with probability
#: ~1e-19, and new_key draws again then, so it never makes a refused key), and a key over
#: 8 symbols still has ≥ 32·3 = 96 bits if random. It is a floor against mistakes, not an
#: entropy measurement: no test of one key can prove it random.
MIN_DISTINCT_BYTES = 8

_HINT = "make a new one with `privmob keys pseudonym FILE`"


def key_weakness(key: bytes) -> str | None:
    """Why ``key`` is too easy to guess (None when it is not): too few distinct bytes."""
    distinct = len(set(key))
    if distinct < MIN_DISTINCT_BYTES:
        what = "all zero bytes" if not key.strip(b"\x00") else (
            "one byte repeated" if distinct == 1 else f"only {distinct} distinct byte values")
        return f"is {what} (at least {MIN_DISTINCT_BYTES} are required): it can be guessed"
    return None


def load_key(key_file: Path | None, key_env: str) -> bytes:
    """Read the master pseudonymisation key from a file (mode 0600) or an env variable.

    A key file readable by group or others is refused: re-identifying information must be
    kept under strict access control.
    """
    if key_file is not None:
        try:
            st = key_file.stat()
        except FileNotFoundError as exc:
            raise KeyFileError(
                f"pseudonymisation key file {key_file} does not exist; create one with "
                f"`privmob keys pseudonym {key_file}`"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"pseudonymisation key file {key_file} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"pseudonymisation key file {key_file} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with `chmod 600 {key_file}`"
            )
        with key_file.open("rb") as fh:
            key = fh.read(4096).strip()
        source = f"key file {key_file}"
    else:
        value = os.environ.get(key_env)
        if not value:
            raise KeyFileError(
                f"no pseudonymisation key: set [job] key_file, or the environment variable "
                f"{key_env}; create a key with `privmob keys pseudonym FILE`"
            )
        key = value.encode()
        source = f"environment variable {key_env}"
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f"the pseudonymisation key in {source} is shorter than {MIN_KEY_BYTES} bytes; "
            "make a new one with `privmob keys pseudonym FILE`"
        )
    weakness = key_weakness(key)
    if weakness is not None:
        raise KeyFileError(f"the key in {source} {weakness}; {_HINT}")
    return key


def new_key() -> bytes:
    """A fresh random key as 64 hex characters (256 bits), never one :func:`load_key` refuses
    (a draw with fewer than :data:`MIN_DISTINCT_BYTES` digits, p ~ 1e-19, is drawn again)."""
    while True:
        key = os.urandom(32).hex().encode()
        if key_weakness(key) is None:
            return key


def _forms(secret: bytes) -> set[bytes]:
    """The byte strings a secret may be written as: as given and, when it is hex text, the
    bytes it spells — so a key file holding the hex of another key's bytes still matches."""
    text = secret.strip()
    forms = {secret, text}  # load_key strips a key file; raw bytes may end in a space byte
    with contextlib.suppress(UnicodeDecodeError, ValueError):
        forms.add(bytes.fromhex(text.decode("ascii")))
    return {f for f in forms if f}


def _signing_forms(path: Path) -> set[bytes]:
    """The signing key file's bytes, and the raw Ed25519 secret in it (and that as hex)."""
    try:
        data = path.read_bytes()
    except OSError:
        return set()  # the signing key loader reports an unreadable file
    forms = _forms(data)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    # not a key we can read (the signing key loader says why): its bytes still count
    with contextlib.suppress(ValueError, TypeError, UnsupportedAlgorithm):
        key = serialization.load_pem_private_key(data, password=None)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        forms |= {raw, raw.hex().encode()}
    return forms


def _file_forms(path: Path) -> set[bytes]:
    try:
        with path.open("rb") as fh:
            return _forms(fh.read(4096))
    except OSError:
        return set()  # the store's own loader reports a missing or unreadable file


def check_keys_apart(pseudonym_key: bytes, signing_key_path: Path | None,
                     store_key_path: Path | None) -> None:
    """Refuse a pseudonymisation key that is also the signing key or the store key.

    One secret doing two jobs means one leak does both harms: whoever holds the signing
    key could then also re-identify every pseudonym, and the store key decrypts what the
    pseudonyms protect. Compared are the key files' bytes, the signing key's raw secret
    (and its hex), and each key's hex decoded. Raises :class:`KeyFileError`; the message
    names the two keys, never their contents.
    """
    mine = _forms(pseudonym_key)
    others = (("signing key ([job] signing_key)", signing_key_path, _signing_forms),
              ("working-store key ([store] key_file)", store_key_path, _file_forms))
    for what, path, forms in others:
        if path is not None and mine & forms(Path(path)):
            raise KeyFileError(
                f"the pseudonymisation key is the same secret as the {what} {path}: one leak "
                "would then expose both. Keep them apart: make a new pseudonymisation key with "
                "`privmob keys pseudonym FILE` and point [job] key_file at it (pseudonyms "
                "made with the old key will no longer link to new ones)"
            )


def check_job_keys(config: JobConfig) -> None:
    """:func:`check_keys_apart` for a job's pseudonymisation, signing and store keys."""
    store = config.store
    check_keys_apart(load_key(config.job.key_file, config.job.key_env), config.job.signing_key,
                     None if store is None else store.key_file)


class Pseudonymiser:
    """Keyed, per-period pseudonyms.

    ``pseudonyms`` returns an ``Int64`` per id: the first 8 bytes of the HMAC, read as a
    signed big-endian integer (signed so every engine, Spark included, orders it alike).
    Two distinct people colliding (p ≈ n²/2⁶⁵) are merged, which only shrinks
    contributions, so the privacy bound still holds.
    """

    __slots__ = ("_key", "key_id", "period_label")

    def __init__(self, master_key: bytes, period_label: str) -> None:
        self._key = hmac.digest(master_key, f"privmob/period/{period_label}".encode(), "sha256")
        self.period_label = period_label
        #: A public fingerprint of the derived key, so two releases can be seen to share
        #: (or not share) a pseudonym space without revealing the key.
        self.key_id = hashlib.sha256(b"privmob/key-id/" + self._key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Pseudonymiser(period={self.period_label!r}, key_id={self.key_id!r})"

    def pseudonyms(self, ids: pl.Series) -> pl.Series:
        """Int64 pseudonyms for a Series of distinct string ids, aligned with it."""
        key = self._key
        digest = hmac.digest
        raw = b"".join(digest(key, s.encode(), "sha256")[:8] for s in ids.to_list())
        values = np.frombuffer(raw, dtype=">i8").astype(np.int64)
        return pl.Series("pid", values, dtype=pl.Int64)

    def hex(self, ids: pl.Series) -> pl.Series:
        """Full-length hex pseudonyms (for quarantine files that a person may read)."""
        key = self._key
        return pl.Series(
            "person_pseudonym",
            [hmac.new(key, s.encode(), "sha256").hexdigest() if s is not None else None
             for s in ids.to_list()],
            dtype=pl.String,
        )
