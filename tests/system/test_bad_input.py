"""Bad input, nothing lost: every file in tests/corpus through `privmob run`.

Each malformed input ends in one of two ways, and nothing else:

* refused: exit 2, exactly one ``error:`` line on stderr (no traceback, no internal
  error), no release folder (not even a hidden partial one), no charge left standing in
  the ledger (none, or cancelled), a ``failed`` entry in the audit log;
* quarantined: exit 0, and the operator record's ``rows_bad`` (or ``rows_out_of_period`` /
  ``rows_outside_boundary``) counts every bad row under the reason it failed.

In both cases no raw identifier from the input (every person id in the corpus starts
with ``rawid-``, every other private value with ``secretval-``) is echoed on stdout,
stderr, in the audit log, the ledger, the release or the quarantine file.
See tests/corpus/README.md for what each file holds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import privmob as pm
from privmob.backends import get_backend
from privmob.cli import main
from privmob.governance.audit import AuditLog
from privmob.governance.ledger import Ledger
from privmob.release.table import read_operator_record
from privmob.stages.ingest import BAD_REASONS
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import SAMPLES, TEST_KEY

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
BEIJING = SAMPLES / "beijing_boundary.geojson"
SQUARE = CORPUS / "boundary_square_35N_51E.geojson"
#: Substrings that mark raw values in the corpus; none may ever be echoed.
RAW_MARKERS = ("rawid", "secretval")
PERIOD = "2026-11-26"


@dataclass
class Run:
    """What one `privmob run` left behind."""

    code: int
    out: str
    err: str
    tmp: Path

    @property
    def ledger_path(self) -> Path:
        return self.tmp / "state" / "ledger.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.tmp / "state" / "ledger.sqlite.audit.jsonl"

    @property
    def release_dir(self) -> Path:
        return self.tmp / "out" / PERIOD

    @property
    def quarantine_path(self) -> Path:
        return self.tmp / "state" / "bad-rows.parquet"

    def charges(self) -> list[dict[str, Any]]:
        return Ledger(self.ledger_path).charges() if self.ledger_path.exists() else []

    def events(self) -> list[dict[str, Any]]:
        return AuditLog(self.audit_path).entries()

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.release_dir / "manifest.json").read_text())
        return data

    def operator_record(self) -> dict[str, Any]:
        """The run's exact figures, kept beside the ledger (never in the release folder)."""
        return read_operator_record(self.tmp / "state" / "records" / f"{self.manifest()['release_id']}.json")

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    def message(self) -> str:
        """The error line without the test's own folder (so words in it do not count)."""
        (line,) = self.error_lines()
        return line.replace(str(self.tmp), "<tmp>")


@dataclass
class Job:
    """A job file built from tests/corpus/job_valid.toml with one thing changed."""

    tmp: Path
    input_name: str = "pings.csv"
    on_bad_rows: str = "quarantine"
    boundary: Path | None = None
    extra_job: list[str] = field(default_factory=list)

    def write(self) -> Path:
        key = self.tmp / "pseudonym.key"
        if not key.exists():
            key.write_text(TEST_KEY)
            key.chmod(0o600)
        text = (CORPUS / "job_valid.toml").read_text(encoding="utf-8")
        text = text.replace('input = "pings.csv"', f'input = "{self.input_name}"')
        text = text.replace('on_bad_rows = "quarantine"', f'on_bad_rows = "{self.on_bad_rows}"')
        extra = ['quarantine = "state/bad-rows.parquet"', *self.extra_job]
        text = text.replace('dataset = "corpus"', "\n".join(['dataset = "corpus"', *extra]))
        if self.boundary is not None:
            shutil.copy(self.boundary, self.tmp / "boundary.geojson")
            text = text.replace('window = "3h"', 'window = "3h"\nboundary = "boundary.geojson"')
        job = self.tmp / "job.toml"
        job.write_text(text, encoding="utf-8")
        return job


def run_cli(tmp: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> Run:
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err, tmp)


def run_input(tmp: Path, name: str, capsys: pytest.CaptureFixture[str], *, on_bad_rows: str = "quarantine",
              boundary: Path | None = None) -> Run:
    """Copy corpus file ``name`` into ``tmp`` and run the corpus job on it."""
    shutil.copy(CORPUS / name, tmp / name)
    job = Job(tmp, input_name=name, on_bad_rows=on_bad_rows, boundary=boundary).write()
    return run_cli(tmp, ["run", str(job)], capsys)


def written_text(run: Run) -> dict[str, str]:
    """Everything privmob wrote or printed, as text, by where it is."""
    blobs = {"stdout": run.out, "stderr": run.err}
    for path in run.tmp.rglob("*"):
        if not path.is_file() or (path.suffix in (".csv", ".gz", ".parquet") and path.parent == run.tmp):
            continue  # the input itself (a copy of the corpus file) of course holds them
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            blobs[str(path)] = frame.write_csv()
        else:
            blobs[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return blobs


def assert_no_raw_values(run: Run) -> None:
    leaks = sorted({(where.replace(str(run.tmp), "<tmp>"), marker)
                    for where, blob in written_text(run).items()
                    for marker in RAW_MARKERS if marker in blob.lower()})
    assert leaks == [], f"raw input values echoed: {leaks}"


def assert_refused(run: Run, *mentions: str) -> None:
    """Exit 2, one `error:` line, nothing released, nothing charged, raw values unseen."""
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    assert run.code == 2, run.err
    assert len(run.error_lines()) == 1, run.err
    message = run.message()
    for word in mentions:
        assert word in message, message
    out = run.tmp / "out"
    assert not out.exists() or list(out.iterdir()) == [], "a (partial) release was left behind"
    assert all(c["state"] == "cancelled" for c in run.charges()), run.charges()
    if run.audit_path.exists():
        assert run.events()[-1]["event"] == "failed"
        assert AuditLog(run.audit_path, anchor=Ledger(run.ledger_path)).verify() == []
    assert_no_raw_values(run)


def assert_released(run: Run) -> dict[str, Any]:
    """Exit 0, one committed charge, a release and no raw values anywhere; the operator
    record (the exact row and person counts are no longer in the manifest)."""
    assert "Traceback" not in run.err and run.error_lines() == [], run.err
    assert run.code == 0, run.err
    assert [c["state"] for c in run.charges()] == ["committed"]
    # the ledger's own bookkeeping events (creation, dataset declared) are not the run's
    outcomes = [e["event"] for e in run.events() if e["event"] in ("released", "failed", "refused")]
    assert outcomes == ["released"]
    assert_no_raw_values(run)
    assert "rows_in" not in run.manifest()
    record = run.operator_record()
    counted = (sum(record["rows_bad"].values()) + record["rows_out_of_scope"]
               + record["rows_out_of_period"] + record["rows_outside_boundary"]
               + record["rows_used"])
    assert counted == record["rows_in"], "a row was lost without being counted"
    return record


# --- inputs that must be refused -------------------------------------------------------

REFUSED: dict[str, tuple[str, ...]] = {
    "empty.csv": ("empty",),
    # A header and no rows: an upstream export that failed. Releasing noise about an empty
    # day would tell the analyst nobody moved, and spend budget for it.
    "header_only.csv": (),
    "missing_column.csv": ("'lng'", "missing"),
    # header `id,time,latitude,longitude,category`: hinted by position, never echoed
    "renamed_columns.csv": ("column 3 → 'lat'", "column 1 → 'person_id'"),
    # No header line: the first data row (with a raw person id) is taken as the header.
    "no_header.csv": ("missing",),
    # Two `lat` columns: which one is the position is a guess; never guess silently.
    "duplicated_columns.csv": ("'lat' at columns",),
    # An opening quote that never closes swallows the rest of the file.
    "unbalanced_quote.csv": (),
    "ragged_rows.csv": (),
    "truncated.parquet": ("cannot be read",),
    "magic_only.parquet": ("cannot be read",),
    "truncated.csv.gz": ("cannot be read",),
    # Whole rows, only the gzip trailer cut: the header reads fine and the stream fails
    # late, inside Polars' streaming scan (an OSError, once exit 4).
    "truncated_trailer.csv.gz": ("cannot be read",),
    "not_a_parquet.parquet": ("not a Parquet file",),
    "wrong_type_ts.parquet": ("'ts'",),
    "wrong_type_lat.parquet": ("'lat'",),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unusable_input_is_refused_and_charges_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_input(tmp_path, name, capsys)
    assert_refused(run, *REFUSED[name])
    assert [c["state"] for c in run.charges()] in ([], ["cancelled"])


# --- inputs whose bad rows are quarantined, counted by reason --------------------------

@dataclass(frozen=True)
class Expect:
    bad: dict[str, int]
    used: int
    out_of_period: int = 0
    out_of_scope: int = 0
    outside_boundary: int = 0
    boundary: Path | None = None


QUARANTINED: dict[str, Expect] = {
    "wrong_types.csv": Expect({"group_missing": 1, "lat_not_numeric": 3, "lng_not_numeric": 1,
                               "person_id_missing": 1, "ts_unparseable": 3}, used=6),
    "nan_inf_coordinates.csv": Expect({"coordinates_not_finite": 6}, used=6),
    "out_of_range.csv": Expect({"lat_out_of_range": 3, "lng_out_of_range": 2}, used=6),
    # Beijing with lat/lng swapped has latitude 116: out of range, never indexed.
    "swapped_latlng.csv": Expect({"lat_out_of_range": 3}, used=6, boundary=BEIJING),
    # Swapped coordinates that are still valid degrees land far outside the boundary.
    "swapped_latlng_in_range.csv": Expect({}, used=6, outside_boundary=4, boundary=SQUARE),
    "mixed_timestamps.csv": Expect({"ts_unparseable": 6}, used=9, out_of_period=2),
    "far_timestamps.csv": Expect({}, used=6, out_of_period=10),
    "non_utf8.csv": Expect({"lat_not_numeric": 1, "ts_unparseable": 1}, used=8, out_of_scope=1),
    "short_rows.csv": Expect({"lng_not_numeric": 1, "ts_unparseable": 1}, used=6),
}


@pytest.mark.parametrize("name", sorted(QUARANTINED))
def test_bad_rows_are_quarantined_and_counted_by_reason(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    want = QUARANTINED[name]
    run = run_input(tmp_path, name, capsys, boundary=want.boundary)
    m = assert_released(run)
    assert m["rows_bad"] == want.bad
    assert m["rows_used"] == want.used
    assert m["rows_out_of_period"] == want.out_of_period
    assert m["rows_out_of_scope"] == want.out_of_scope
    assert m["rows_outside_boundary"] == want.outside_boundary
    if want.bad:  # the quarantine file holds exactly the bad rows, by reason, ids pseudonymised
        quarantined = pl.read_parquet(run.quarantine_path)
        assert dict(quarantined["reason"].value_counts().iter_rows()) == want.bad
        assert "person_id" not in quarantined.columns
        assert oct(run.quarantine_path.stat().st_mode & 0o777) == oct(0o600)
    else:
        assert not run.quarantine_path.exists()


@pytest.mark.parametrize("name", sorted(n for n, e in QUARANTINED.items() if e.bad))
def test_bad_rows_fail_the_run_when_the_job_says_so(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    want = QUARANTINED[name]
    run = run_input(tmp_path, name, capsys, on_bad_rows="fail", boundary=want.boundary)
    assert_refused(run, *(f"{n} {reason}" for reason, n in want.bad.items()))
    assert [c["state"] for c in run.charges()] == ["cancelled"]
    message = run.message()
    assert any(f"{BAD_REASONS[r][0]} {BAD_REASONS[r][1]}" in message for r in want.bad), message


# --- odd but usable inputs -------------------------------------------------------------

def test_extra_columns_are_dropped_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = assert_released(run_input(tmp_path, "extra_columns.csv", capsys))
    assert (m["rows_in"], m["rows_used"], m["persons"], m["rows_bad"]) == (6, 6, 6, {})
    # name (column 6) and phone (column 7) by their headers; the header text is not kept
    assert {(6, "name"), (7, "phone")} <= {(d["position"], d["kind"])
                                          for d in m["identifier_columns_dropped"]}


def test_embedded_newlines_are_one_record_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Quoted fields spanning lines (and CRLF endings) are records, not physical lines."""
    m = assert_released(run_input(tmp_path, "embedded_newlines.csv", capsys))
    assert m["rows_in"] == 11
    assert m["persons"] == m["rows_used"]  # one record per person: none split in two


def test_a_utf8_byte_order_mark_does_not_hide_the_first_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = assert_released(run_input(tmp_path, "bom_header.csv", capsys))
    assert (m["rows_in"], m["rows_used"], m["rows_bad"]) == (6, 6, {})


def test_duplicated_rows_count_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every row three times gives exactly the aggregate of the deduplicated input."""
    run = run_input(tmp_path, "duplicated_rows.csv", capsys)
    m = assert_released(run)
    assert (m["rows_in"], m["rows_used"], m["persons"]) == (18, 18, 3)
    # 0701: 08:00 and 08:00:30 are one minute, 08:05 another; 0702: one; 0703: two.
    assert m["bounding"]["dwell_minutes"] == 5

    unique = tmp_path / "unique.csv"
    pl.read_csv(CORPUS / "duplicated_rows.csv", infer_schema=False).unique(maintain_order=True) \
        .write_csv(unique)
    assert pl.read_csv(unique).height == 6
    cfg = pm.JobConfig.from_toml(tmp_path / "job.toml")
    engine = get_backend("polars")
    pseudonymiser = Pseudonymiser(TEST_KEY.encode(), PERIOD)
    with_dups = engine.exact_cells(pm.read_pings(tmp_path / "duplicated_rows.csv"), cfg, pseudonymiser, None)
    deduped = engine.exact_cells(pm.read_pings(unique), cfg, pseudonymiser, None)
    assert with_dups.counts.equals(deduped.counts)
    assert with_dups.counts["count"].sum() == 3
    assert with_dups.bounding == deduped.bounding
    assert with_dups.persons == deduped.persons == 3
    assert m["bounding"]["dwell_minutes"] == deduped.bounding.dwell_minutes


# --- generated at test time: an overlong line, paths that never end -------------------

def _child(tmp: Path, argv: list[str], *, timeout: float, mem_limit: int | None = None
           ) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """Run `privmob` in a child process: (result, seconds, peak RSS in bytes).

    A hang fails the test at ``timeout`` instead of hanging CI; ``mem_limit`` caps the
    child's address space so a file read without end cannot take the machine down.
    """
    stats = tmp / "child-rusage.json"
    script = f"""
import json, resource, sys
LIMIT = {mem_limit!r}
if LIMIT is not None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
from privmob.cli import main
try:
    code = main({argv!r})
finally:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    open({str(stats)!r}, "w").write(json.dumps(peak))
sys.exit(code)
"""
    env = {**os.environ, "COLUMNS": "200"}
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              cwd=tmp, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"privmob {' '.join(argv)} did not finish within {timeout} s: it reads without end")
    elapsed = time.monotonic() - start
    peak = json.loads(stats.read_text()) if stats.exists() else 0
    return proc, elapsed, int(peak)


def _result(proc: subprocess.CompletedProcess[str], tmp: Path) -> Run:
    return Run(proc.returncode, proc.stdout, proc.stderr, tmp)


@pytest.mark.parametrize("on_bad_rows", ["quarantine", "fail"])
def test_an_overlong_line_is_bounded(tmp_path: Path, on_bad_rows: str) -> None:
    """A 32 MB line with no delimiter between good rows: quarantined (or refused), fast, in bounded memory."""
    good = "".join((CORPUS / "wrong_types.csv").read_text().splitlines(True)[1:7])
    with (tmp_path / "long.csv").open("w") as fh:
        fh.write("person_id,ts,lat,lng,group\n" + good)
        fh.write("rawid-9999" + "x" * (32 << 20) + "\n")
        fh.write(good)
    job = Job(tmp_path, input_name="long.csv", on_bad_rows=on_bad_rows).write()
    proc, elapsed, peak = _child(tmp_path, ["run", str(job)], timeout=120)
    assert elapsed < 60, f"{elapsed:.1f} s for one 32 MB line"
    assert peak < 1536 << 20, f"peak memory {peak >> 20} MiB for one 32 MB line"
    run = _result(proc, tmp_path)
    if on_bad_rows == "fail":
        assert_refused(run, "1 bad row(s)", "row 7")
    else:
        m = assert_released(run)
        assert sum(m["rows_bad"].values()) == 1 and m["rows_used"] == 12


def _never_ending(tmp: Path, kind: str) -> Path:
    """A path that never ends: a symlink to /dev/zero, or a FIFO nobody writes to."""
    path = tmp / f"endless-{kind}"
    if kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path, 0o600)
    return path


NEVER_ENDING = [(what, kind) for what in ("input", "job", "boundary", "key_file")
                for kind in ("zero", "fifo")]


@pytest.mark.parametrize(("what", "kind"), NEVER_ENDING, ids=[f"{w}-{k}" for w, k in NEVER_ENDING])
def test_a_path_that_never_ends_is_refused_quickly(tmp_path: Path, what: str, kind: str) -> None:
    """Every file privmob reads may be /dev/zero or a FIFO: refused, never read forever."""
    endless = _never_ending(tmp_path, kind)
    shutil.copy(CORPUS / "extra_columns.csv", tmp_path / "pings.csv")
    if what == "input":
        job = Job(tmp_path, input_name=endless.name).write()
    elif what == "boundary":
        job = Job(tmp_path).write()
        job.write_text(job.read_text().replace('window = "3h"',
                                               f'window = "3h"\nboundary = "{endless.name}"'))
    elif what == "key_file":
        job = Job(tmp_path).write()
        job.write_text(job.read_text().replace('key_file = "pseudonym.key"', f'key_file = "{endless.name}"'))
    else:
        job = endless
    proc, _, _ = _child(tmp_path, ["run", str(job)], timeout=15, mem_limit=3 << 30)
    run = _result(proc, tmp_path)
    assert_refused(run)
    assert [c["state"] for c in run.charges()] in ([], ["cancelled"])


def test_dry_run_refuses_an_endless_input_too(tmp_path: Path) -> None:
    endless = _never_ending(tmp_path, "zero")
    job = Job(tmp_path, input_name=endless.name).write()
    proc, _, _ = _child(tmp_path, ["run", str(job), "--dry-run"], timeout=15, mem_limit=3 << 30)
    run = _result(proc, tmp_path)
    assert_refused(run, "not a regular file")
    assert run.charges() == []


def test_an_input_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pings.csv").mkdir()
    run = run_cli(tmp_path, ["run", str(Job(tmp_path).write())], capsys)
    assert_refused(run, "not a regular file")


# --- boundary files that are not polygons ----------------------------------------------

BAD_BOUNDARIES = {
    "boundary_point.geojson": ("must hold polygons", "Point"),
    "boundary_linestring.geojson": ("must hold polygons", "LineString"),
    "boundary_not_json.geojson": ("not a readable vector layer",),
    "boundary_empty.geojson": ("no feature",),
    "boundary_projected.geojson": ("not in longitude/latitude degrees",),
    "boundary_zero_area.geojson": ("no area",),
}


@pytest.mark.parametrize("name", sorted(BAD_BOUNDARIES))
def test_a_boundary_that_is_not_a_polygon_is_refused_before_anything_is_charged(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(CORPUS / "extra_columns.csv", tmp_path / "pings.csv")
    job = Job(tmp_path, boundary=CORPUS / name).write()
    run = run_cli(tmp_path, ["run", str(job)], capsys)
    assert_refused(run, *BAD_BOUNDARIES[name])
    assert run.charges() == []  # the plan fails before the ledger is touched


def test_a_self_intersecting_boundary_is_repaired_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bow-tie ring overlapping a square: merging them unrepaired was a GEOS crash (exit 4)."""
    shutil.copy(CORPUS / "extra_columns.csv", tmp_path / "pings.csv")
    job = Job(tmp_path, boundary=CORPUS / "boundary_bowtie.geojson").write()
    run = run_cli(tmp_path, ["run", str(job)], capsys)
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    assert run.code == 0, run.err
    assert run.release_dir.is_dir()


def test_a_boundary_too_fine_for_its_resolution_is_refused_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Beijing at res 13 is ~370 million cells: refused from an estimate, not computed."""
    shutil.copy(CORPUS / "extra_columns.csv", tmp_path / "pings.csv")
    job = Job(tmp_path, boundary=BEIJING).write()
    job.write_text(job.read_text(encoding="utf-8").replace("resolution = 6", "resolution = 13"),
                   encoding="utf-8")
    start = time.monotonic()
    run = run_cli(tmp_path, ["run", str(job)], capsys)
    assert time.monotonic() - start < 30
    assert_refused(run, "resolution 13", "H3 cells", "resolution = 10 or coarser")


# --- job files with mistakes -----------------------------------------------------------

BAD_JOBS = {
    "job_typo.toml": ("epsilom", "did you mean 'epsilon'?"),
    "job_unknown_key.toml": ("unknown key 'retries'",),
    "job_unknown_section.toml": ("unknown key 'privacy_settings'", "did you mean 'privacy'?"),
    "job_negative_epsilon.toml": ("epsilon = -1.0",),
    "job_nan_epsilon.toml": ("epsilon = nan",),
    "job_min_count_zero.toml": ("min_count = 0",),
    "job_resolution_16.toml": ("resolution = 16",),
    "job_wrong_type.toml": ("epsilon", "wrong type"),
    "job_bad_period.toml": ("2026-02-30",),
    "job_bad_timezone.toml": ("Asia/Beijing",),
    "job_timezone_directory.toml": ("timezone", "'Asia'"),
    "job_bad_window.toml": ("'7m'",),
    "job_negative_budget.toml": ("epsilon_per_day = -5.0",),
    "job_bad_on_bad_rows.toml": ("on_bad_rows = 'ignore'",),
    "job_unknown_user_home.toml": ("~nosuchuser-privmob",),
    "job_not_toml.toml": ("not valid TOML", "line 15"),
    "job_not_utf8.toml": ("not UTF-8",),
}


def _corpus_job(tmp: Path, name: str) -> Path:
    shutil.copy(CORPUS / "extra_columns.csv", tmp / "pings.csv")
    key = tmp / "pseudonym.key"
    key.write_text(TEST_KEY)
    key.chmod(0o600)
    job = tmp / "job.toml"
    shutil.copy(CORPUS / name, job)
    return job


def test_the_corpus_job_itself_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """So each refusal below is caused by the one line its file changes."""
    run = run_cli(tmp_path, ["run", str(_corpus_job(tmp_path, "job_valid.toml"))], capsys)
    assert run.code == 0, run.err
    assert run.release_dir.is_dir()


@pytest.mark.parametrize("name", sorted(BAD_JOBS))
@pytest.mark.parametrize("command", ["run", "explain"])
def test_a_job_file_with_a_mistake_is_refused_before_anything_is_read(
    name: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _corpus_job(tmp_path, name)
    run = run_cli(tmp_path, [command, str(job)], capsys)
    assert_refused(run, *BAD_JOBS[name])
    assert not (tmp_path / "state").exists()  # no ledger, no audit log: nothing was started


def test_a_tiny_epsilon_is_planned_in_bounded_memory_or_refused(tmp_path: Path) -> None:
    """ε = 1e-6 passes the range check; planning it must neither exhaust memory nor crash."""
    job = _corpus_job(tmp_path, "job_tiny_epsilon.toml")
    proc, elapsed, peak = _child(tmp_path, ["explain", str(job)], timeout=60, mem_limit=4 << 30)
    run = _result(proc, tmp_path)
    assert "internal error" not in run.err and "Traceback" not in run.err, run.err
    assert run.code in (0, 2), run.err
    if run.code == 2:
        assert_refused(run, "epsilon")
    assert elapsed < 30 and peak < 2 << 30


def test_corpus_is_small_and_documented() -> None:
    files = sorted(p.name for p in CORPUS.iterdir() if p.is_file())
    assert sum((CORPUS / f).stat().st_size for f in files) < 200_000
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    undocumented = [f for f in files if f != "README.md" and f"`{f}`" not in readme]
    assert undocumented == []
    tested = {*REFUSED, *QUARANTINED, *BAD_BOUNDARIES, *BAD_JOBS, "job_valid.toml", "extra_columns.csv",
              "embedded_newlines.csv", "bom_header.csv", "duplicated_rows.csv",
              "boundary_square_35N_51E.geojson", "job_tiny_epsilon.toml", "boundary_bowtie.geojson"}
    assert sorted(set(files) - tested - {"README.md"}) == []
