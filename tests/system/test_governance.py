"""Budget, audit and signatures through the scheduled job, with real processes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest

from privmob.cli import main
from privmob.governance.audit import AuditLog
from privmob.governance.ledger import Ledger
from privmob.release.table import read_operator_record
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


def outcomes(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """The entries that say how each run ended (not the ledger's own bookkeeping)."""
    return [e for e in events if e["event"] in ("released", "refused", "failed", "purged")]


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
    # Every change of the ledger is mirrored in the log: its creation, the dataset's caps,
    # the reservation, the commit; then the refused second run.
    assert [e["event"] for e in audit.entries()] == [
        "ledger-created", "dataset-declared", "reserved", "released", "refused"]
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
    assert sorted(e["event"] for e in outcomes(audit.entries())) == [
        "refused", "refused", "released", "released"]
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
from privmob.pipeline.plan import Plan
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
    store_key.write_text("k0123456789abcdef" * 4)
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
    # The exact figures are in the operator records beside the ledger, not in the release.
    first, second = (read_operator_record(tmp_path / "state" / "records" / f"{m['release_id']}.json")
                     for m in (first, second))
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
    events = outcomes(audit.entries())
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
    store_key.write_text("S0123456789ABCDEF" * 4)
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
    secrets = [TEST_KEY, "S0123456789ABCDEF" * 4,
               *[line for line in signing_pem.splitlines() if "-----" not in line]]
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
    assert [(e["event"], e["forced"]) for e in outcomes(events)] == [
        ("released", False), ("refused", False), ("released", True), ("released", True)]


def test_json_log_lines_for_schedulers(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    job = make_job(tmp_path, epsilon=1.0, signed=False)
    assert main(["run", str(job), "--log-format", "json"]) == 0
    lines = [json.loads(x) for x in capfd.readouterr().err.strip().splitlines()]
    events = [x["event"] for x in lines]
    assert events[0] == "start" and events[-1] == "released"
    assert "stage" in events and all("time" in x for x in lines)
    assert main(["run", str(job), "--quiet", "--force"]) == 0
    assert capfd.readouterr().err == ""


# -- the budget binds (issue 11) ------------------------------------------------------------


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    return line


def test_editing_the_job_cap_does_not_raise_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, epsilon=1.5, signed=False)
    assert main(["run", str(job)]) == 0
    shutil.move(tmp_path / "out", tmp_path / "published")
    job.write_text(job.read_text().replace("epsilon_per_day = 2.0", "epsilon_per_day = 5.0"))
    capsys.readouterr()
    assert main(["run", str(job), "--force"]) == 2  # the old code raised the cap to 5 here
    line = error_line(capsys)
    assert "epsilon_per_day = 5" in line and "epsilon_per_day = 2" in line
    assert "privmob budget set" in line
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    assert float(ledger.rows()[0].limit or 0) == 2.0 and len(ledger.charges()) == 1
    # Raising it is an explicit command, with who and why on record.
    assert main(["budget", "set", "--job", str(job), "--epsilon-per-day", "5",
                 "--operator", "dpo-07", "--reason", "outbreak response"]) == 0
    assert main(["run", str(job), "--force"]) == 0
    entry = next(e for e in ledger.audit.entries() if e["event"] == "budget-set")
    assert (entry["old_caps"]["epsilon_per_day"], entry["caps"]["epsilon_per_day"]) == ("2", "5")
    assert entry["operator"] == "dpo-07" and entry["reason"] == "outbreak response"
    assert main(["audit", "verify", "--job", str(job)]) == 0


def test_copying_the_input_file_gives_no_fresh_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, epsilon=1.5, signed=False)
    job.write_text(job.read_text().replace('dataset = "beijing"\n', ""))  # the id is derived
    assert main(["run", str(job)]) == 0
    copy = tmp_path / "pings-copy.parquet"
    shutil.copy(SAMPLES / "beijing_pings.parquet", copy)
    job2 = make_job(tmp_path, epsilon=1.5, signed=False, input_path=copy, output="copy/{period}")
    job2.write_text(job2.read_text().replace('dataset = "beijing"\n', ""))
    capsys.readouterr()
    assert main(["run", str(job2)]) == 3  # the old code keyed a fresh budget to the file name
    assert "beijing_pings" in error_line(capsys)
    (row,) = Ledger(tmp_path / "state" / "ledger.sqlite").rows()
    assert row.dataset == "beijing_pings" and row.releases == 1
    # Naming a new population explicitly needs its declaration first.
    job2.write_text(job2.read_text().replace(
        'key_file = "pseudonym.key"', 'key_file = "pseudonym.key"\ndataset = "other"'))
    assert main(["run", str(job2)]) == 2
    assert "privmob budget declare" in error_line(capsys)


def test_a_python_release_without_budget_is_charged(
    tmp_path: Path, key_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import privmob as pm
    from privmob.errors import BudgetExceededError
    from tests.conftest import config

    ledger_path = tmp_path / "default" / "ledger.sqlite"
    monkeypatch.setenv("PRIVMOB_LEDGER", str(ledger_path))
    cfg = config(grid={"resolution": 7}, privacy={"epsilon": 1.5})
    assert cfg.budget is None
    plan = pm.plan(cfg)
    assert str(ledger_path) in plan.explain()
    released = plan.release(SAMPLES / "beijing_pings.parquet")
    ledger = Ledger(ledger_path)
    (row,) = ledger.rows()
    assert row.spent == Fraction(3, 2) and row.limit == 2  # the default caps, now declared
    assert released.manifest["ledger"]["ledger_id"] == ledger.ledger_id
    with pytest.raises(BudgetExceededError):
        plan.release(SAMPLES / "beijing_pings.parquet", force=True)
    record = ledger_path.parent / "records" / f"{released.manifest['release_id']}.json"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert json.loads(record.read_text())["release_id"] == released.manifest["release_id"]


def test_a_refund_by_editing_the_ledger_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, epsilon=1.5, signed=False)
    assert main(["run", str(job)]) == 0
    shutil.move(tmp_path / "out", tmp_path / "published")
    con = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    con.execute("UPDATE charges SET state = 'cancelled'")
    con.commit()
    con.close()
    capsys.readouterr()
    assert main(["run", str(job), "--force"]) == 2  # the old code released again: 3 > 2
    line = error_line(capsys)
    assert "marked cancelled" in line and "Nothing was read or charged" in line
    assert not (tmp_path / "out").exists()
    assert main(["audit", "verify", "--job", str(job)]) == 1
    assert "no cancellation" in capsys.readouterr().out


def test_a_deleted_ledger_is_refused_not_recreated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, epsilon=1.5, signed=False)
    assert main(["run", str(job)]) == 0
    ledger = tmp_path / "state" / "ledger.sqlite"
    ledger.unlink()
    capsys.readouterr()
    assert main(["run", str(job), "--period", "2026-11-27"]) == 2
    assert "deleted" in error_line(capsys)
    assert not ledger.exists()
    # Ledger *and* log gone: the releases it charged name it, so a fresh one is refused too.
    (tmp_path / "state" / "ledger.sqlite.audit.jsonl").unlink()
    assert main(["run", str(job), "--period", "2026-11-27"]) == 2
    assert "another budget ledger" in error_line(capsys)
    assert not ledger.exists()


def test_a_recomputed_audit_chain_is_caught_by_the_signed_release_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from privmob.governance.audit import _digest

    job = make_job(tmp_path, epsilon=1.0, per_day=5.0)
    assert main(["run", str(job)]) == 0
    release = tmp_path / "out" / "2026-11-26"
    anchor = json.loads((release / "manifest.json").read_text())["ledger"]
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    assert anchor["ledger_id"] == ledger.ledger_id
    reserved = ledger.audit.entry_at(anchor["audit_seq"])
    assert reserved is not None and reserved["event"] == "reserved"
    assert reserved["sha256"] == anchor["audit_sha256"]
    assert main(["audit", "verify", "--job", str(job), "--release", str(release)]) == 0
    # A forger rewrites the declaration (caps 5 → 100), recomputes the whole chain and
    # moves the ledger's anchor and caps to match: chain and cross-checks agree again ...
    path = ledger.audit.path
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    prev = "0" * 64
    for e in entries:
        if e["event"] == "dataset-declared":
            e["caps"]["epsilon_per_day"] = "100"
        e["prev_sha256"] = prev
        e["sha256"] = prev = _digest(e)
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    con = sqlite3.connect(ledger.path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{entries[-1]['seq']}:{prev}",))
    con.execute("UPDATE datasets SET epsilon = '100'")
    con.commit()
    con.close()
    assert ledger.audit.verify() == []
    # ... but the signed release's anchor is not in the rewritten log.
    capsys.readouterr()
    assert main(["run", str(job), "--period", "2026-11-27"]) == 2
    assert "rewritten" in error_line(capsys)
    assert main(["audit", "verify", "--job", str(job), "--release", str(release)]) == 1


@pytest.mark.parametrize("damage", ["corrupt", "read-only"])
def test_an_unusable_ledger_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    job = make_job(tmp_path, epsilon=1.0, per_day=5.0, signed=False)
    assert main(["run", str(job)]) == 0
    ledger = tmp_path / "state" / "ledger.sqlite"
    if damage == "corrupt":
        data = ledger.read_bytes()
        ledger.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    else:  # as root, chmod does not stop writes: open the file the way a read-only mount does
        real = sqlite3.connect
        monkeypatch.setattr("privmob.governance.ledger.sqlite3.connect",
                            lambda db, **kw: real(f"file:{db}?mode=ro", uri=True, **kw))
    capsys.readouterr()
    assert main(["run", str(job), "--period", "2026-11-27"]) == 2  # the old code: exit 4
    line = error_line(capsys)
    assert "budget ledger" in line and ("restore it" in line or "writable" in line)
