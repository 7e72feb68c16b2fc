"""Budget, audit and signatures through the scheduled job, with real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from privmob.audit import AuditLog
from privmob.cli import main
from privmob.ledger import Ledger
from tests.conftest import SAMPLES, TEST_KEY

PRIVMOB = str(Path(sys.executable).with_name("privmob"))


def make_job(tmp: Path, *, epsilon: float = 1.5, per_day: float = 2.0, output: str = "out/{period}",
             input_path: Path | None = None, signed: bool = True, min_count: int = 10) -> Path:
    key = tmp / "pseudonym.key"
    if not key.exists():
        key.write_text(TEST_KEY)
        key.chmod(0o600)
    if signed and not (tmp / "signing.pem").exists():
        assert main(["keys", "init", str(tmp / "signing.pem")]) == 0
    shutil.copy(SAMPLES / "beijing_boundary.geojson", tmp / "city.geojson")
    job = tmp / f"job-{output.replace('/', '_').replace('{', '').replace('}', '')}.toml"
    job.write_text(f"""
[job]
operator = "cdc-analyst-01"
input = "{(input_path or SAMPLES / 'beijing_pings.parquet').as_posix()}"
output = "{output}"
period = "2026-11-26"
dataset = "beijing"
key_file = "pseudonym.key"
reports = false
{'signing_key = "signing.pem"' if signed else ''}
[grid]
resolution = 6
window = "3h"
boundary = "city.geojson"
[privacy]
epsilon = {epsilon}
max_windows = 8
min_count = {min_count}
[budget]
ledger = "state/ledger.sqlite"
epsilon_per_day = {per_day}
""", encoding="utf-8")
    return job


def test_second_run_in_a_day_is_refused_and_both_are_on_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path)
    assert main(["run", str(job)]) == 0
    released = tmp_path / "out" / "2026-11-26"
    shutil.move(released, tmp_path / "published")  # the operator moves the release away ...
    capsys.readouterr()
    assert main(["run", str(job)]) == 3  # ... and runs again the same day: refused
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error:")]
    assert len(err) == 1
    assert "0.5 of 2 ε" in err[0] and "Nothing was read or charged" in err[0]
    assert not released.exists()

    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    (row,) = ledger.rows()
    assert (float(row.spent), float(row.remaining or 0), row.releases) == (1.5, 0.5, 1)
    audit = AuditLog(tmp_path / "state" / "ledger.sqlite.audit.jsonl", anchor=ledger)
    assert [e["event"] for e in audit.entries()] == ["released", "refused"]
    assert audit.verify() == []
    assert main(["budget", "show", "--ledger", str(ledger.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["spent"] == 1.5 and shown[0]["remaining"] == 0.5
    assert main(["audit", "verify", "--job", str(job)]) == 0

    # The release verifies against the publisher's key, and fails after any single byte change.
    pub = tmp_path / "signing.pub"
    assert main(["verify", str(tmp_path / "published"), "--public-key", str(pub)]) == 0
    target = tmp_path / "published" / "release.csv"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "published"), "--public-key", str(pub)]) == 1
    assert "release.csv" in capsys.readouterr().out


def test_over_budget_request_reads_no_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = make_job(tmp_path, epsilon=2.5, input_path=tmp_path / "never-created.parquet", signed=False)
    assert main(["run", str(job)]) == 3
    assert "would be exceeded" in capsys.readouterr().err
    assert Ledger(tmp_path / "state" / "ledger.sqlite").charges() == []


def test_failed_run_returns_its_reservation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = make_job(tmp_path, input_path=tmp_path / "missing.parquet", signed=False)
    assert main(["run", str(job)]) == 2
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    assert [c["state"] for c in ledger.charges()] == ["cancelled"]
    events = AuditLog(tmp_path / "state" / "ledger.sqlite.audit.jsonl").entries()
    assert events[-1]["event"] == "failed" and "does not exist" in events[-1]["reason"]


@pytest.mark.slow
def test_concurrent_runs_never_exceed_the_budget(tmp_path: Path) -> None:
    """Four different jobs fire at once with ε = 1 each against a daily budget of 2."""
    jobs = [make_job(tmp_path, epsilon=1.0, output=f"out{i}/{{period}}", signed=False, min_count=10 + i)
            for i in range(4)]
    env = {**os.environ, "COLUMNS": "200"}

    def run(job: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PRIVMOB, "run", str(job)], capture_output=True, text=True, env=env,
                              check=False)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, jobs))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 0, 3, 3], [r.stderr for r in results]
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    (row,) = ledger.rows()
    assert row.spent == 2 and row.pending == 0 and row.releases == 2
    assert sum((tmp_path / f"out{i}" / "2026-11-26").exists() for i in range(4)) == 2
    audit = AuditLog(tmp_path / "state" / "ledger.sqlite.audit.jsonl", anchor=ledger)
    assert sorted(e["event"] for e in audit.entries()) == ["refused", "refused", "released", "released"]
    assert audit.verify() == []


@pytest.mark.slow
def test_two_schedulers_firing_the_same_job_release_once(tmp_path: Path) -> None:
    jobs = [make_job(tmp_path, epsilon=1.0, per_day=5.0, output=f"out{i}/{{period}}", signed=False)
            for i in range(2)]  # the same job, written to two places
    env = {**os.environ, "COLUMNS": "200"}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda j: subprocess.run(
            [PRIVMOB, "run", str(j)], capture_output=True, text=True, env=env, check=False), jobs))
    assert sorted(r.returncode for r in results) == [0, 2]
    refused = next(r for r in results if r.returncode == 2)
    assert "this exact job configuration" in refused.stderr
    (row,) = Ledger(tmp_path / "state" / "ledger.sqlite").rows()
    assert row.spent == 1 and row.releases == 1


def test_run_killed_after_reserve_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    """kill -9 in the middle of a release: nothing visible, budget counted, next run proceeds."""
    job = make_job(tmp_path, epsilon=1.0, signed=False)
    script = f"""
import os, signal
os.environ["PRIVMOB_PSEUDONYM_KEY"] = "unused"
import privmob as pm
from privmob.plan import Plan
def die(self, *a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
Plan._compute = die
cfg = pm.JobConfig.from_toml({str(job)!r})
pm.plan(cfg).release(cfg.job.input, write_to={str(tmp_path / 'out' / '2026-11-26')!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
    assert proc.returncode == -9
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    assert [c["state"] for c in ledger.charges()] == ["reserved"]
    assert main(["budget", "recover", "--job", str(job)]) == 0
    assert [c["state"] for c in ledger.charges()] == ["recovered"]
    assert main(["run", str(job)]) == 0  # 1 (crashed, counted) + 1 fits the budget of 2
    assert main(["run", str(make_job(tmp_path, epsilon=0.1, output="again/{period}",
                                     signed=False))]) == 3
    assert AuditLog(tmp_path / "state" / "ledger.sqlite.audit.jsonl", anchor=ledger).verify() == []


def test_working_store_rerun_and_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_key = tmp_path / "store.key"
    store_key.write_text("k" * 64)
    store_key.chmod(0o600)
    job = make_job(tmp_path, epsilon=1.0, per_day=5.0, signed=False)
    job.write_text(job.read_text() + '\n[store]\npath = "state/store"\nkey_file = "store.key"\n')
    assert main(["run", str(job)]) == 0
    stored = tmp_path / "state" / "store" / "beijing__2026-11-26.pmws"
    assert stored.exists()
    assert b"P000" not in stored.read_bytes()  # neither raw ids nor plaintext Parquet
    first = json.loads((tmp_path / "out" / "2026-11-26" / "manifest.json").read_text())
    shutil.move(tmp_path / "out", tmp_path / "first")
    assert main(["run", str(job), "--from-store", "--force"]) == 0  # same job again: explicit
    second = json.loads((tmp_path / "out" / "2026-11-26" / "manifest.json").read_text())
    assert second["persons"] == first["persons"]
    assert second["bounding"]["dwell_minutes"] == first["bounding"]["dwell_minutes"]
    assert second["rows_out_of_scope"] == 0  # the store only holds in-scope rows
    capsys.readouterr()
    assert main(["purge", str(job), "--today", "2026-12-09"]) == 0  # 13 days later: kept
    assert stored.exists()
    assert main(["purge", str(job), "--today", "2026-12-11"]) == 0  # 15 days later: gone
    assert not stored.exists()
    audit = AuditLog(tmp_path / "state" / "ledger.sqlite.audit.jsonl",
                     anchor=Ledger(tmp_path / "state" / "ledger.sqlite"))
    events = audit.entries()
    assert [e["event"] for e in events] == ["released", "released", "purged", "purged"]
    assert events[0]["stored"] is True and events[1]["stored"] is False
    assert events[-1]["removed"] == ["beijing/2026-11-26"]
    assert audit.verify() == []
    assert main(["run", str(job), "--from-store", "--period", "2026-11-26"]) == 2
    assert "purged" in capsys.readouterr().err


def test_no_secret_reaches_any_output_log_or_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pseudonymisation, signing and store keys never appear in files, logs, or messages."""
    store_key = tmp_path / "store.key"
    store_key.write_text("S" * 64)
    store_key.chmod(0o600)
    job = make_job(tmp_path, epsilon=1.0, per_day=3.0,
                   input_path=SAMPLES / "beijing_pings_dirty.csv.gz")
    job.write_text(job.read_text().replace(
        'dataset = "beijing"', 'dataset = "beijing"\nquarantine = "state/bad.parquet"')
        + '\n[store]\npath = "state/store"\nkey_file = "store.key"\n')
    assert main(["run", str(job)]) == 0
    assert main(["run", str(job)]) == 2  # refused: the release exists
    assert main(["budget", "show", "--job", str(job)]) == 0
    assert main(["audit", "verify", "--job", str(job)]) == 0
    (tmp_path / "pseudonym.key").chmod(0o644)
    assert main(["run", str(job), "--period", "2026-11-27"]) == 2  # key refused
    captured = capsys.readouterr()
    signing_pem = (tmp_path / "signing.pem").read_text()
    secrets = [TEST_KEY, "S" * 64, *[line for line in signing_pem.splitlines() if "-----" not in line]]
    blobs = {"stdout": captured.out, "stderr": captured.err}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name not in ("pseudonym.key", "store.key", "signing.pem"):
            blobs[str(path)] = path.read_bytes().decode("latin-1")
    leaks = [(where, s[:6]) for where, blob in blobs.items() for s in secrets if s in blob]
    assert leaks == []
    assert len(blobs) > 10  # release files, ledger, audit log, quarantine, store, keys.pub


def test_dry_run_reads_only_the_schema_and_spends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, epsilon=1.5)
    assert main(["run", str(job), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "release plan" in out and "input schema: ok" in out and "would be released" in out
    assert "signing key: ok (SHA256:" in out
    ledger = tmp_path / "state" / "ledger.sqlite"
    assert Ledger(ledger).charges() == []
    assert not (tmp_path / "out").exists()
    assert main(["run", str(job)]) == 0
    assert main(["run", str(job), "--dry-run"]) == 3  # the second release would not fit
    assert "WOULD BE REFUSED" in capsys.readouterr().out


def test_same_job_same_period_is_not_released_twice_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, epsilon=1.0, per_day=5.0, signed=False)
    assert main(["run", str(job)]) == 0
    shutil.move(tmp_path / "out", tmp_path / "published")  # even with the folder gone ...
    capsys.readouterr()
    assert main(["run", str(job)]) == 2  # ... the ledger knows this job already released the day
    assert "--force" in capsys.readouterr().err
    assert main(["run", str(job), "--force"]) == 0  # explicit: second charge, recorded
    assert main(["run", str(job), "--force"]) == 0  # output exists: goes to a new folder
    assert (tmp_path / "out" / "2026-11-26.2" / "manifest.json").exists()
    (row,) = Ledger(tmp_path / "state" / "ledger.sqlite").rows()
    assert row.spent == 3 and row.releases == 3
    events = AuditLog(tmp_path / "state" / "ledger.sqlite.audit.jsonl").entries()
    assert [(e["event"], e["forced"]) for e in events] == [
        ("released", False), ("refused", False), ("released", True), ("released", True)]


def test_json_log_lines_for_schedulers(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    job = make_job(tmp_path, epsilon=1.0, signed=False)
    assert main(["run", str(job), "--log-format", "json"]) == 0
    lines = [json.loads(x) for x in capfd.readouterr().err.strip().splitlines()]
    events = [x["event"] for x in lines]
    assert events[0] == "start" and events[-1] == "released"
    assert "stage" in events and all("time" in x for x in lines)
    assert main(["run", str(job), "--quiet", "--period", "2026-11-27"]) == 0
    assert capfd.readouterr().err == ""
