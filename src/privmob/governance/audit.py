"""The audit log: an append-only, hash-chained record of every run.

Whoever collects or uses the data answers for it, so each run — released, refused or
failed — appends one JSON line: who, when, for what purpose, over which input and config
(by digest), with what outcome and why. Each entry carries the SHA-256 of the previous
one and its own, so an edited or deleted entry breaks the chain; the newest entry's hash
is also anchored in the budget ledger, so cutting entries off the end is detected too.
Entries never hold raw identifiers, data values or secrets.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privmob.errors import ConfigError

__all__ = ["GENESIS", "AuditLog", "ChainProblem"]

GENESIS = "0" * 64
_ANCHOR = "audit_head"


def _digest(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    """Where the chain is broken and how."""

    line: int
    kind: str  # edited | broken_link | bad_json | sequence | truncated | rewritten
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.detail}"


class AuditLog:
    """A JSON-lines audit log with a hash chain; appends are serialised by a file lock.

    ``anchor`` (optional) is a pair of callables to read/write the newest ``seq:hash`` in
    a second place (the budget ledger), so truncation of the log is detectable.
    """

    def __init__(self, path: str | Path, anchor: Any | None = None) -> None:
        self.path = Path(path)
        self._anchor = anchor

    @contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[Any]:
        """The log opened under its file lock (shared for readers, exclusive for appends),
        so a reader never sees half an entry or an anchor one entry behind the log."""
        try:
            if shared:
                fd = os.open(self.path, os.O_RDONLY)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"audit log {self.path} cannot be {'read' if shared else 'written'} "
                f"({exc.strerror or exc}); make it and its folder readable and writable by "
                "this user"
            ) from exc
        with os.fdopen(fd, "rb" if shared else "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def has_entries(self) -> bool:
        """True when the log exists and holds at least one line."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry; returns it with its ``seq``, ``prev_sha256`` and ``sha256``."""
        with self._locked() as fh:
            fh.seek(0)
            prev_seq, prev_hash = 0, GENESIS
            for raw in fh:
                if not raw.strip():
                    continue
                try:  # a line that is not an entry still occupies a place in the chain
                    previous = json.loads(raw)
                    prev_seq, prev_hash = int(previous["seq"]), str(previous["sha256"])
                except (ValueError, KeyError, TypeError):
                    prev_seq, prev_hash = prev_seq + 1, hashlib.sha256(raw.rstrip(b"\n")).hexdigest()
            entry: dict[str, Any] = {
                "seq": prev_seq + 1,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "event": event,
                **fields,
                "prev_sha256": prev_hash,
            }
            entry["sha256"] = _digest(entry)
            line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
            fh.seek(0, os.SEEK_END)
            try:
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise ConfigError(f"audit log {self.path} cannot be written ({exc.strerror or exc}); "
                                  "free space or make it writable by this user") from exc
            if self._anchor is not None:
                self._anchor.set_meta(_ANCHOR, f"{entry['seq']}:{entry['sha256']}")
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if raw.strip():
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    continue  # reported by verify()
        return out

    def entry_at(self, seq: int) -> dict[str, Any] | None:
        """The entry with sequence number ``seq`` (None when there is none)."""
        return next((e for e in self.entries() if e.get("seq") == seq), None)

    def verify(self) -> list[ChainProblem]:
        """Every break in the chain; an empty list means the log is intact.

        The log is read under its lock together with the ledger anchor. A log that ends
        *after* the anchored entry is fine when that entry's hash matches (a run died between
        writing its entry and moving the anchor); one that ends before it was cut off, and
        one whose entry at the anchor has another hash was rewritten.
        """
        lines: list[bytes] = []
        head = None
        if self.path.exists():
            with self._locked(shared=True) as fh:
                lines = fh.read().splitlines()
                head = None if self._anchor is None else self._anchor.get_meta(_ANCHOR)
        elif self._anchor is not None:
            head = self._anchor.get_meta(_ANCHOR)
        problems: list[ChainProblem] = []
        prev_hash, prev_seq, n = GENESIS, 0, 0
        hashes: dict[int, str] = {}
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                seq, stated, link = int(entry["seq"]), entry["sha256"], entry["prev_sha256"]
            except (ValueError, KeyError, TypeError):
                problems.append(ChainProblem(n, "bad_json", "not a privmob audit entry"))
                prev_hash = hashlib.sha256(raw).hexdigest()
                prev_seq += 1
                hashes[prev_seq] = prev_hash
                continue
            if _digest(entry) != stated:
                problems.append(ChainProblem(n, "edited", f"entry {seq} does not match its hash"))
            if link != prev_hash:
                problems.append(ChainProblem(
                    n, "broken_link", f"entry {seq} does not follow the entry before it "
                    "(an entry was removed, inserted or edited)"))
            if seq != prev_seq + 1:
                problems.append(ChainProblem(n, "sequence", f"entry {seq} follows entry {prev_seq}"))
            prev_hash, prev_seq = stated, seq
            hashes[seq] = str(stated)
        if head is not None:
            problems += self._check_anchor_head(head, hashes, prev_seq, n)
        return problems

    @staticmethod
    def _check_anchor_head(head: str, hashes: Mapping[int, str], last: int, n: int
                           ) -> list[ChainProblem]:
        seq_text, _, anchored = head.partition(":")
        seq = int(seq_text) if seq_text.isdigit() else -1
        if seq > last or seq < 0:
            return [ChainProblem(n, "truncated", f"the ledger records entry {seq_text} as the "
                                 f"newest, the log ends at entry {last}")]
        if hashes.get(seq) != anchored:
            return [ChainProblem(n, "rewritten", f"entry {seq} is not the entry the ledger "
                                 "anchored (the log was rewritten and its chain recomputed)")]
        return []
