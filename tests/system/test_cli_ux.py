"""What a newcomer meets first (issue 13): the demo job runs with `privmob run`, the README
snippet runs as written, help texts show "[job]", `budget show` fits 80 columns,
`--version`, CSV times in the job's zone, and a release that carries its own boundary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest

import privmob.cli as cli
from privmob import __version__
from privmob.cli import main
from privmob.privacy.keys import BOUNDARY_FILE, boundary_document, load_boundary, release_boundary
from privmob.release.table import ReleasedTable
from tests.conftest import REPO, SAMPLES

CLI = Path(sys.executable).with_name("privmob")


def _samples_copy(root: Path) -> Path:
    """The demo job and its inputs under ``root/data-samples`` (the big input linked)."""
    samples = root / "data-samples"
    samples.mkdir(parents=True)
    for name in ("demo.toml", "beijing_boundary.geojson"):
        shutil.copy(SAMPLES / name, samples / name)
    (samples / "beijing_pings.parquet").symlink_to(SAMPLES / "beijing_pings.parquet")
    return samples


# ── 1. the demo job with `privmob run` ─────────────────────────────────────────────────


def _readme_run_command() -> str:
    """The `privmob run data-samples/demo.toml ...` command README "Use it" gives."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = " ".join(text.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0].split())
    found = re.search(r"`(privmob run data-samples/demo\.toml[^`]*)`", section)
    assert found, "README 'Use it' no longer says how to run the demo job"
    return found.group(1)


def test_the_demo_job_runs_with_the_commands_its_error_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from privmob.governance.ledger import Ledger

    default_ledger = Path(os.environ["PRIVMOB_LEDGER"])  # conftest: a per-test one
    monkeypatch.delenv("PRIVMOB_PSEUDONYM_KEY", raising=False)
    _samples_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "data-samples/demo.toml", "--quiet"]) == 2
    err = capsys.readouterr().err
    # The exact commands, as typed from here: make the key, then run with it.
    make_key = "privmob keys pseudonym secrets/pseudonym.key"
    run_job = _readme_run_command()
    assert run_job == "privmob run data-samples/demo.toml --key-file secrets/pseudonym.key"
    assert f"`{make_key}`" in err and f"`{run_job}`" in err, err
    assert not (tmp_path / "out").exists() and not default_ledger.exists()  # refused first
    assert main(shlex.split(make_key)[1:]) == 0
    capsys.readouterr()
    assert main(shlex.split(run_job)[1:]) == 0
    assert f"charged to the default ledger {default_ledger}" in capsys.readouterr().err
    assert (tmp_path / "out" / "demo-job" / "2026-11-26" / "release.parquet").is_file()
    # No [budget]: charged to the default ledger, as a Python release of the job is.
    (row,) = Ledger(default_ledger).rows()
    assert (row.dataset, row.day, float(row.spent)) == ("beijing-synthetic-sample", "2026-11-26", 1.0)


def test_a_missing_key_file_is_named_with_the_command_that_makes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    samples = _samples_copy(tmp_path)
    job = samples / "demo.toml"
    job.write_text(job.read_text().replace("[scope]", 'key_file = "../keys/p.key"\n\n[scope]'))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "data-samples/demo.toml"]) == 2
    assert "`privmob keys pseudonym keys/p.key`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_privmob_demo_charges_neither_the_default_ledger_nor_the_samples_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default_ledger = Path(os.environ["PRIVMOB_LEDGER"])
    samples = _samples_copy(tmp_path / "repo")
    monkeypatch.setattr(cli, "samples_dir", lambda: samples)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert not (tmp_path / "repo" / "out").exists()
    assert not default_ledger.exists()


# ── 2. the README "Use it" snippet ──────────────────────────────────────────────────────


def _use_it_blocks() -> tuple[list[str], str]:
    """The shell commands and the Python snippet of README.md "## Use it"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and python, "README 'Use it' lost its sh or python block"
    commands = [line.split("#", 1)[0].strip() for line in shell.group(1).splitlines()]
    return [c for c in commands if c], python.group(1)


def test_readme_use_it_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PRIVMOB_PSEUDONYM_KEY", raising=False)  # the key file it makes
    _samples_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands, snippet = _use_it_blocks()
    assert commands and all(c.startswith("privmob keys ") for c in commands), commands
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    namespace: dict[str, object] = {}
    exec(compile(snippet, "README.md (Use it)", "exec"), namespace)  # the README's own code
    release = namespace["release"]
    assert isinstance(release, ReleasedTable) and release.table.height > 0
    written = tmp_path / "out" / "2026-11-26"
    assert json.loads((written / "manifest.json").read_text())["release_id"] == release.manifest["release_id"]
    assert "release plan" in capsys.readouterr().out


# ── 3. help texts keep their brackets ───────────────────────────────────────────────────


def _help(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The help text of ``privmob ARGS``, its line breaks and indents as single spaces."""
    assert main([*args, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_job_file_sections_in_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    run_help = _help(["run"], capsys)
    assert "overrides [job] period" in run_help and "instead of [job] input" in run_help
    assert "Jobs naming caps in [budget]" in _help(["budget", "set"], capsys)


def test_every_bracketed_word_of_every_help_text_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    def walk(command: object, path: list[str]) -> list[tuple[list[str], str]]:
        texts = [getattr(command, "help", None) or ""]
        texts += [getattr(p, "help", None) or "" for p in getattr(command, "params", [])]
        found = [(path, t) for t in texts]
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            found += walk(sub, [*path, name])
        return found

    checked = 0
    for path, text in walk(typer.main.get_command(cli.app), []):
        for word in set(re.findall(r"\[[a-z_]+\]", text)):
            assert word in _help(path, capsys), (path, word)
            checked += 1
    assert checked >= 3


# ── 4. budget show at 80 columns ────────────────────────────────────────────────────────


def test_budget_show_at_80_columns_cuts_nothing(tmp_path: Path) -> None:
    from privmob.governance.ledger import Ledger, budget_from
    from privmob.privacy.accountant import PrivacyCost

    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    names = ["beijing-key-groups-municipal-health-commission-2026", "shanghai-close-contacts"]
    for name in names:
        ledger.declare(name, budget_from(2.0, 1e-6, None), operator="op", reason="test")
        for day in ("2026-11-26", "2026-11-27"):
            charge = ledger.reserve(release_id=f"{name}-{day}", dataset=name, days=[day],
                                    cost=PrivacyCost(Fraction(1237, 1000), Fraction(1, 10**7)),
                                    purpose="epidemic-prevention", operator="op", mechanism="gaussian")
            if day.endswith("26"):
                ledger.commit(charge)
    shown = subprocess.run([str(CLI), "budget", "show", "--ledger", str(ledger.path)],
                           capture_output=True, text=True, check=False,
                           env={**os.environ, "COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "…" not in out
    for name in names:
        assert f"dataset {name}" in out
    for text in ("2026-11-26", "2026-11-27", "ε 2", "1.237", "0.763", "1e-07", "remaining", "releases"):
        assert text in out, text
    table_lines = [line for line in out.splitlines() if line.startswith("2026-")]
    assert len(table_lines) == 4 and all(len(line) <= 80 for line in table_lines)


# ── 5. --version ────────────────────────────────────────────────────────────────────────


def test_version_option_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


# ── 6. CSV times in the job's zone ──────────────────────────────────────────────────────


def test_a_beijing_release_csv_reads_the_local_day_with_its_offset(signed_demo: tuple[Path, str]) -> None:
    folder = signed_demo[0]
    csv = pl.read_csv(folder / "release.csv", comment_prefix="#", schema_overrides={"cell": pl.String})
    first = csv.get_column("window_start").sort()[0]
    assert first == "2026-11-26T00:00:00+08:00"  # was 2026-11-25T16:00:00Z: the day before
    assert csv.get_column("window_start").str.ends_with("+08:00").all()
    # The same instants as the Parquet file, which keeps tz-aware UTC timestamps.
    parquet = pl.read_parquet(folder / "release.parquet")
    assert parquet.schema["window_start"] == pl.Datetime("us", "UTC")
    parsed = csv.get_column("window_start").str.to_datetime("%Y-%m-%dT%H:%M:%S%:z", time_unit="us")
    assert parsed.dt.convert_time_zone("UTC").to_list() == parquet.get_column("window_start").to_list()


def test_flows_and_level_csvs_use_the_local_zone_too(tmp_path: Path) -> None:
    utc = dt.datetime(2026, 11, 25, 16, tzinfo=dt.UTC)
    cells = pl.DataFrame({"cell": ["8731aa09affffff"], "window_start": [utc], "count": [40],
                          "ci_low": [20], "ci_high": [60], "near_threshold": [False]},
                         schema_overrides={"window_start": pl.Datetime("us", "UTC")})
    flows = pl.DataFrame({"origin": ["110101"], "destination": ["110102"], "window_start": [utc],
                          "count": [30], "ci_low": [10], "ci_high": [50], "near_threshold": [False],
                          "origin_lat": [39.9], "origin_lng": [116.4], "dest_lat": [39.9],
                          "dest_lng": [116.3]},
                         schema_overrides={"window_start": pl.Datetime("us", "UTC")})
    release = ReleasedTable(table=cells, flows=flows, levels={6: cells},
                            manifest={"release_id": "r", "marking": "m", "timezone": "Asia/Shanghai"})
    folder = release.write(tmp_path / "r")
    for name in ("release.csv", "flows.csv", "release-res6.csv"):
        rows = pl.read_csv(folder / name, comment_prefix="#")
        assert rows.get_column("window_start").to_list() == ["2026-11-26T00:00:00+08:00"], name


# ── 7. the release carries its boundary ─────────────────────────────────────────────────


def test_report_without_boundary_draws_the_releases_own(signed_demo: tuple[Path, str],
                                                        tmp_path: Path) -> None:
    folder, fingerprint = signed_demo
    carried = folder / BOUNDARY_FILE
    # The public boundary, in the signed file list; the release still verifies.
    assert carried.read_bytes() == (SAMPLES / "beijing_boundary.geojson").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert BOUNDARY_FILE in manifest["files"]
    assert main(["verify", str(folder), "--fingerprint", fingerprint]) == 0
    # `privmob report DIR` with no --boundary outlines the area and draws withheld cells.
    target = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(target)]) == 0
    page = (target / "report.html").read_text(encoding="utf-8")
    assert "No boundary file given" not in page and "no boundary file was given" not in page
    assert f"boundary ({BOUNDARY_FILE})" in page
    data = json.loads(re.search(r'id="privmob-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert data["boundary"] and data["isKey"] is not None


def test_heatmap_of_a_folder_draws_its_boundary(signed_demo: tuple[Path, str]) -> None:
    from privmob import report

    hm = report.heatmap(signed_demo[0])
    axes = hm.panels[0].axes
    assert [a for a in (*axes.collections, *axes.patches) if a.get_gid() == "boundary"]


def test_a_changed_boundary_file_breaks_verification(signed_demo: tuple[Path, str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "release"
    shutil.copytree(signed_demo[0], folder)
    (folder / BOUNDARY_FILE).write_text('{"type": "FeatureCollection", "features": []}')
    assert main(["verify", str(folder), "--fingerprint", signed_demo[1]]) == 1
    assert f"{BOUNDARY_FILE}: content changed" in capsys.readouterr().out  # signed, not unlisted


def test_a_selected_boundary_is_carried_as_its_selection(tmp_path: Path) -> None:
    districts = SAMPLES / "beijing_districts.geojson"
    chosen = load_boundary(districts, {"adcode": "110101"})
    data = boundary_document(districts, chosen.key_label)
    assert data is not None and len(data) < districts.stat().st_size / 4  # one district, not 16
    carried = tmp_path / BOUNDARY_FILE
    carried.write_bytes(data)
    boundary, note = release_boundary(carried, chosen.key_label)
    assert note is None
    assert (boundary.cells(8) == chosen.cells(8)).all()
    # Not the file the keys came from, and not standing for them: flagged.
    _, other = release_boundary(carried, "public:" + "0" * 64)
    assert other is not None and "not the one" in other


def test_a_converted_datum_boundary_is_read_back_in_its_datum() -> None:
    path = SAMPLES / "beijing_boundary.geojson"
    gcj = load_boundary(path, crs="gcj02")
    boundary, note = release_boundary(path, gcj.key_label)  # was: "no property 'crs'"
    assert note is None and (boundary.cells(7) == gcj.cells(7)).all()


# ── 8. the dry run refuses exactly what the run refuses ────────────────────────────────


def _schema_job(tmp_path: Path, frame: pl.DataFrame, *, assume_group: bool = False) -> Path:
    from tests.system.test_cli import write_job

    source = tmp_path / "pings.parquet"
    frame.write_parquet(source)
    job = write_job(tmp_path, input_name=str(source))  # an absolute name replaces SAMPLES
    if assume_group:
        job.write_text(job.read_text().replace("[scope]\n", '[scope]\nassume_group = "confirmed"\n'))
    return job


def _refusal(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(args)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", ["no lat column", "group column and assume_group",
                                  "no group column, no assume_group"])
def test_the_dry_run_refuses_a_schema_as_the_run_does(case: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """One schema check (``privmob.stages.scope.check_schema``) for both: same exit code,
    same message. The dry run's own partial check let a ``group`` column through although
    ``[scope] assume_group`` was set, which the run refuses (the rows' groups must decide)."""
    frame = pl.read_parquet(SAMPLES / "beijing_pings.parquet").head(50)
    if case == "no lat column":
        job = _schema_job(tmp_path, frame.drop("lat"))
    elif case == "group column and assume_group":
        job = _schema_job(tmp_path, frame, assume_group=True)
    else:
        job = _schema_job(tmp_path, frame.drop("group"))
    monkeypatch.chdir(tmp_path)
    dry = _refusal(["run", str(job), "--dry-run"], capsys)
    real = _refusal(["run", str(job)], capsys)
    assert dry == real and real[0] == 2 and len(real[1]) == 1, (dry, real)
    assert not (tmp_path / "out").exists()
