"""The audit log's hash chain detects edits, removals, insertions and truncation."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from privmob.governance.audit import AuditLog
from privmob.governance.ledger import Ledger


def filled(tmp_path: Path, n: int = 5) -> tuple[AuditLog, Path]:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, anchor=Ledger(tmp_path / "l.sqlite"))
    for i in range(n):
        log.append("released", release_id=f"r{i}", operator="op", cells_released=i)
    return log, path


def kinds(log: AuditLog) -> set[str]:
    return {p.kind for p in log.verify()}


def test_intact_chain_verifies(tmp_path: Path) -> None:
    log, path = filled(tmp_path)
    assert log.verify() == []
    entries = log.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_sha256"] == "0" * 64
    assert all(b["prev_sha256"] == a["sha256"] for a, b in itertools.pairwise(entries))
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_edited_entry_is_detected(tmp_path: Path) -> None:
    log, path = filled(tmp_path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["operator"] = "someone-else"
    lines[2] = json.dumps(entry, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    problems = log.verify()
    assert {p.kind for p in problems} == {"edited"}
    assert problems[0].line == 3


def test_edited_and_rehashed_entry_breaks_the_next_link(tmp_path: Path) -> None:
    from privmob.governance.audit import _digest

    log, path = filled(tmp_path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["cells_released"] = 999
    entry["sha256"] = _digest(entry)  # a forger recomputes this entry's own hash
    lines[1] = json.dumps(entry, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    assert kinds(log) == {"broken_link"}


def test_deleted_entry_is_detected(tmp_path: Path) -> None:
    log, path = filled(tmp_path)
    lines = path.read_text().splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    assert {"broken_link", "sequence"} <= kinds(log)


def test_truncation_is_detected_through_the_ledger_anchor(tmp_path: Path) -> None:
    log, path = filled(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    assert kinds(log) == {"truncated"}
    # Without the anchor, a cut-off tail is not visible: that is why the anchor exists.
    assert AuditLog(path).verify() == []


def test_garbage_line_is_reported_and_appends_continue(tmp_path: Path) -> None:
    log, path = filled(tmp_path, 2)
    with path.open("a") as fh:
        fh.write("this is not json\n")
    assert "bad_json" in kinds(log)
    entry = log.append("failed", reason="x")
    assert entry["seq"] == 4
    import hashlib

    assert entry["prev_sha256"] == hashlib.sha256(b"this is not json").hexdigest()
    assert {p.kind for p in log.verify()} == {"bad_json"}


def test_a_log_one_entry_past_its_anchor_is_intact_but_a_rewritten_one_is_not(tmp_path: Path) -> None:
    """A run that died between writing its entry and moving the anchor leaves the log one
    entry ahead: that is not tampering. A recomputed chain is, even when it is longer."""
    from privmob.governance.audit import _digest

    log, path = filled(tmp_path)
    ledger = Ledger(tmp_path / "l.sqlite")
    head = ledger.get_meta("audit_head")
    AuditLog(path).append("released", release_id="r5")  # no anchor: the anchor stays behind
    assert log.verify() == []
    # Rewrite entry 2 and recompute every hash after it: the chain is consistent again,
    # but the anchored entry's hash is not the one the ledger holds.
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    entries[1]["cells_released"] = 999
    prev = entries[0]["sha256"]
    for e in entries[1:]:
        e["prev_sha256"] = prev
        e["sha256"] = prev = _digest(e)
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    assert ledger.get_meta("audit_head") == head
    assert kinds(log) == {"rewritten"}


def test_verify_reads_the_log_and_its_anchor_under_the_append_lock(tmp_path: Path) -> None:
    """Concurrent appends never make a reader see half an entry or a stale anchor."""
    from concurrent.futures import ThreadPoolExecutor

    log, _ = filled(tmp_path, 1)

    def append(i: int) -> None:
        log.append("released", release_id=f"c{i}")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(append, i) for i in range(40)]
        seen = [log.verify() for _ in range(40)]
        for f in futures:
            f.result()
    assert all(p == [] for p in seen)
    assert log.verify() == [] and len(log.entries()) == 41
