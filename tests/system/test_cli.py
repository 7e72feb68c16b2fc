"""End to end through the command line, the way an operator runs privmob."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from privmob.cli import main
from privmob.release.table import RELEASE_FILES, read_operator_record
from tests.conftest import SAMPLES, TEST_KEY

MANIFEST_KEYS = {
    "privmob_version", "created_at", "purpose", "operator", "privacy_unit", "resolution",
    "window", "timezone",
    "max_cells_per_window", "max_windows", "mechanism", "epsilon", "delta", "rho",
    "noise_scale", "keys", "min_count", "cells_released", "cells_suppressed", "stages",
}


def operator_record(tmp_path: Path, manifest: dict[str, object]) -> dict[str, object]:
    """The run's exact figures, kept beside the job's ledger (never in the release)."""
    return read_operator_record(tmp_path / "state" / "records" / f"{manifest['release_id']}.json")


def write_job(tmp_path: Path, *, input_name: str = "beijing_pings.parquet",
              extra_job: str = "", privacy: str = "") -> Path:
    key = tmp_path / "pseudonym.key"
    if not key.exists():
        key.write_text(TEST_KEY)
        key.chmod(0o600)
    shutil.copy(SAMPLES / "beijing_boundary.geojson", tmp_path / "city.geojson")
    job = tmp_path / "job.toml"
    job.write_text(
        f"""
[job]
purpose = "epidemic-prevention"
operator = "cdc-analyst-01"
input = "{(SAMPLES / input_name).as_posix()}"
output = "out/{{period}}"
timezone = "Asia/Shanghai"
period = "2026-11-26"
key_file = "pseudonym.key"
reports = false
{extra_job}
[scope]
groups = ["confirmed", "suspected", "close_contact"]
[grid]
resolution = 6
window = "3h"
boundary = "city.geojson"
[privacy]
epsilon = 1.0
mechanism = "gaussian"
max_cells_per_window = 1
max_windows = 8
min_count = 10
{privacy}
[budget]
ledger = "state/ledger.sqlite"
epsilon_per_day = 10.0
""",
        encoding="utf-8",
    )
    return job


def test_demo_writes_a_release_with_full_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*RELEASE_FILES, "boundary.geojson", "manifest.sig", "signing_key.pub", "heatmap.png",
         "heatmap.pdf", "heatmap-windows.png", "report.html"])
    # The pictures are part of the signed release: a swapped heatmap is detected.
    manifest_files = json.loads((out / "manifest.json").read_text())["files"]
    assert {"heatmap.png", "heatmap.pdf", "report.html"} <= manifest_files.keys()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest.keys() >= MANIFEST_KEYS
    assert manifest["cells_released"] == pl.read_parquet(out / "release.parquet").height > 0
    assert manifest["keys"].startswith("public:")
    printed = capsys.readouterr().out
    assert "release plan" in printed and str(out) in printed
    # Running the demo again replaces its own output instead of failing.
    assert main(["demo", "--out", str(out)]) == 0


def test_run_releases_once_and_refuses_a_second_release(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path)
    assert main(["run", str(job)]) == 0
    out = tmp_path / "out" / "2026-11-26"
    table = pl.read_parquet(out / "release.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert table.height == manifest["cells_released"]
    assert (table["count"] >= manifest["release_threshold"]).all()
    assert manifest["release_threshold"] >= manifest["min_count"] == 10
    assert manifest["operator"] == "cdc-analyst-01"
    rows = pl.scan_parquet(SAMPLES / "beijing_pings.parquet").select(pl.len()).collect().item()
    assert "rows_in" not in manifest and "persons" not in manifest
    assert operator_record(tmp_path, manifest)["rows_in"] == rows
    before = (out / "release.csv").read_bytes()
    capsys.readouterr()
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [x for x in err if x.startswith("error:")]
    assert len(errors) == 1 and "already holds a release" in errors[0]
    assert not any("Traceback" in x for x in err)
    assert (out / "release.csv").read_bytes() == before


def test_period_option_overrides_the_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The sample covers 2026-11-26 only: on 2026-11-27 no row is usable, and a release of
    # pure noise is refused (exit 2, nothing written) unless the job allows it.
    assert main(["run", str(write_job(tmp_path)), "--period", "2026-11-27"]) == 2
    assert "no usable rows" in capsys.readouterr().err
    assert not (tmp_path / "out" / "2026-11-27").exists()
    job = write_job(tmp_path, extra_job="allow_empty = true")
    assert main(["run", str(job), "--period", "2026-11-27"]) == 0
    manifest = json.loads((tmp_path / "out" / "2026-11-27" / "manifest.json").read_text())
    # The sample covers 2026-11-26 only: every in-scope row is outside the period, and the
    # release is a valid, complete one holding at most noise-only (spurious) cells: expected
    # n_keys × spurious_rate ≈ 0.6 of them, so more than 6 happens with p < 1e-5.
    record = operator_record(tmp_path, manifest)
    assert record["rows_out_of_period"] == record["rows_in"] - record["rows_out_of_scope"]
    assert record["persons"] == 0
    assert manifest["n_keys"] * manifest["spurious_rate"] < 1
    assert manifest["cells_released"] <= 6


def test_user_errors_are_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, privacy="epsilom = 2.0")
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'epsilon'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_explain_reads_no_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path, input_name="does-not-exist.parquet")
    assert main(["explain", str(job)]) == 0
    text = capsys.readouterr().out
    assert "discrete Gaussian" in text and "±" in text and "spurious" in text


def test_bad_rows_fail_mode_names_rows_and_releases_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path, input_name="beijing_pings_dirty.csv.gz", extra_job='on_bad_rows = "fail"')
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "bad row(s)" in err and "row " in err and "on_bad_rows" in err
    assert not (tmp_path / "out").exists()
    dirty = pl.read_csv(SAMPLES / "beijing_pings_dirty.csv.gz", infer_schema=False)
    for pid in dirty["person_id"].drop_nulls().unique().to_list():
        if pid:
            assert pid not in err


def test_bad_rows_quarantine_mode_counts_and_sets_aside(tmp_path: Path) -> None:
    job = write_job(tmp_path, input_name="beijing_pings_dirty.csv.gz",
                    extra_job='quarantine = "private/quarantine.parquet"')
    assert main(["run", str(job)]) == 0
    manifest = json.loads((tmp_path / "out" / "2026-11-26" / "manifest.json").read_text())
    assert "rows_bad" not in manifest
    bad = operator_record(tmp_path, manifest)["rows_bad"]
    assert isinstance(bad, dict)
    assert sum(bad.values()) > 0
    assert "lat_out_of_range" in bad
    quarantine = tmp_path / "private" / "quarantine.parquet"
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o600
    rows = pl.read_parquet(quarantine)
    assert rows.height == sum(bad.values())
    assert "person_id" not in rows.columns and "person_pseudonym" in rows.columns
    assert set(rows["reason"].unique()) == set(bad)


def test_no_secret_in_any_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path, input_name="beijing_pings_dirty.csv.gz",
                    extra_job='quarantine = "private/q.parquet"')
    assert main(["run", str(job)]) == 0
    captured = capsys.readouterr()
    blobs = [captured.out, captured.err]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "pseudonym.key":
            blobs.append(path.read_bytes().decode("latin-1"))
    assert not any(TEST_KEY in b for b in blobs)


def test_group_readable_key_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path)
    (tmp_path / "pseudonym.key").chmod(0o640)
    assert main(["run", str(job)]) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_synth_and_keys_commands(tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    assert main(["synth", "--persons", "20", "--seed", "3", "--out", str(out)]) == 0
    frame = pl.read_parquet(out)
    assert frame["person_id"].n_unique() == 20
    key = tmp_path / "k" / "new.key"
    assert main(["keys", "pseudonym", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes().strip()) == 64
    assert main(["keys", "pseudonym", str(key)]) == 2  # never overwritten


def test_console_script_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("privmob")
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run([str(exe), "version"], capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0 and ok.stdout.strip()
    bad = subprocess.run([str(exe), "run", str(tmp_path / "missing.toml")], capture_output=True,
                         text=True, env=env, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: job file {tmp_path / 'missing.toml'} does not exist"
