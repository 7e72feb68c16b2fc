"""An optional working store: pseudonymised positions kept between runs, encrypted at rest.

Re-releasing a day (a different resolution, a flows table) should not mean keeping the raw
input around. When the operator enables ``[store]``, a successful run also keeps the
validated, in-scope, pseudonymised positions of its period — ids already replaced by their
keyed pseudonyms, only time, position and group — so later runs can start from them with
``privmob run JOB --from-store`` and get the same exact aggregates as from the raw input.

This is still personal data, so it is protected like it: AES-256-GCM with a key of its
own (a 0600 file, apart from the pseudonymisation and signing keys), files of mode 0600
in a folder of mode 0700, the dataset and period bound into each file as authenticated
data, and ``privmob purge`` deletes whatever is older than the retention period (default
14 days), each purge going to the audit log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privmob.errors import InputError

__all__ = ["StoreEntry", "WorkingStore"]

_MAGIC = b"PMWS1"
_NAME = re.compile(r"^(?P<dataset>[A-Za-z0-9_.-]+)__(?P<period>\d{4}-\d{2}-\d{2}(?:\+\d+d)?)\.pmws$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class StoreEntry:
    """One stored period of one dataset."""

    dataset: str
    period: str
    path: Path
    size: int

    @property
    def first_day(self) -> dt.date:
        return dt.date.fromisoformat(self.period[:10])


class WorkingStore:
    """Encrypted files of pseudonymised positions, one per (dataset, period)."""

    def __init__(self, path: str | Path, key: bytes, retention_days: int = 14) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self._aead = AESGCM(hmac.digest(key, b"privmob/working-store/v1", "sha256"))

    def _file(self, dataset: str, period: str) -> Path:
        return self.path / f"{_SAFE.sub('_', dataset)}__{period}.pmws"

    def put(self, dataset: str, period: str, frame: pl.DataFrame) -> Path:
        """Encrypt and store ``frame`` for (dataset, period), replacing an older copy."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        buf = io.BytesIO()
        frame.write_parquet(buf, compression="zstd")
        nonce = os.urandom(12)
        blob = _MAGIC + nonce + self._aead.encrypt(nonce, buf.getvalue(), _aad(dataset, period))
        target = self._file(dataset, period)
        fd, tmp = tempfile.mkstemp(prefix=".pmws-", dir=self.path)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def get(self, dataset: str, period: str) -> pl.DataFrame:
        """Decrypt the stored positions; refuses a file that was altered or moved."""
        target = self._file(dataset, period)
        try:
            blob = target.read_bytes()
        except FileNotFoundError as exc:
            raise InputError(
                f"the working store has no data for {dataset!r} period {period} "
                "(never stored, or purged after its retention period)"
            ) from exc
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 12 + 16:
            raise InputError(f"{target} is not a privmob working-store file")
        nonce = blob[len(_MAGIC):len(_MAGIC) + 12]
        try:
            plain = self._aead.decrypt(nonce, blob[len(_MAGIC) + 12:], _aad(dataset, period))
        except InvalidTag as exc:
            raise InputError(
                f"{target} cannot be decrypted: wrong store key, or the file was altered or "
                "renamed"
            ) from exc
        return pl.read_parquet(io.BytesIO(plain))

    def entries(self) -> list[StoreEntry]:
        if not self.path.is_dir():
            return []
        out = []
        for p in sorted(self.path.iterdir()):
            m = _NAME.match(p.name)
            if m:
                out.append(StoreEntry(m["dataset"], m["period"], p, p.stat().st_size))
        return out

    def expired(self, today: dt.date) -> list[StoreEntry]:
        """Entries whose period began more than ``retention_days`` before ``today``."""
        cutoff = today - dt.timedelta(days=self.retention_days)
        return [e for e in self.entries() if e.first_day < cutoff]

    def purge(self, today: dt.date) -> list[StoreEntry]:
        """Delete expired entries; returns what was deleted."""
        gone = self.expired(today)
        for entry in gone:
            entry.path.unlink(missing_ok=True)
        return gone


def _aad(dataset: str, period: str) -> bytes:
    return hashlib.sha256(f"privmob/store/{dataset}/{period}".encode()).digest()
