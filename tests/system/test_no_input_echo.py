"""No input value ever reaches a message or a log (issue 11).

Every malformed variant of tests/corpus is rebuilt here with canaries — a mobile number, a
resident ID number and a Chinese name — in the header *and* in the cells (a headerless
file's "header" is a data row), then run through ``privmob run`` (text and JSON logs),
``privmob run --dry-run`` and the Python API with an audit log. None of the canaries may
appear on stdout, stderr, in an exception message, the audit log or the ledger.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import privmob as pm
from privmob.cli import main
from tests.conftest import TEST_KEY

PHONE = "13812345678"
RESIDENT_ID = "11010519491231002X"
NAME = "张三丰"
CANARIES = (PHONE, RESIDENT_ID, NAME)
GOOD_TS = "2026-11-26T09:00:00+08:00"
HEADER = "person_id,ts,lat,lng,group"

JOB = """\
[job]
operator = "cdc-analyst-01"
input = "{input}"
output = "out/{{period}}"
period = "2026-11-26"
dataset = "canary"
key_file = "pseudonym.key"
on_bad_rows = "{on_bad_rows}"

[grid]
resolution = 6
window = "3h"

[privacy]
mechanism = "laplace"
epsilon = 1.0
max_windows = 8
min_count = 10

[budget]
ledger = "state/ledger.sqlite"
epsilon_per_day = 50.0
"""


def _rows(n: int, first: int = 0) -> str:
    return "".join(f"{PHONE}{i},{GOOD_TS},39.86,116.36,confirmed\n" for i in range(first, first + n))


def _parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def _variants() -> dict[str, bytes]:
    """File name → bytes: each malformed shape of tests/corpus, with canaries inside."""
    big = (HEADER + "\n"
           + "".join(f"{PHONE}{i},{GOOD_TS},39.86,116.36,{NAME}\n" for i in range(20_000))).encode()
    big_gz = gzip.compress(big)
    typed = pl.DataFrame({"person_id": [PHONE] * 12, "ts": [True] * 12, "lat": [39.86] * 12,
                          "lng": [116.36] * 12, "group": [NAME] * 12, PHONE: [RESIDENT_ID] * 12})
    listed = pl.DataFrame({"person_id": [PHONE] * 3, "ts": [GOOD_TS] * 3, "lat": [[39.86]] * 3,
                           "lng": [116.36] * 3, "group": [NAME] * 3})
    text = {
        # no header: the first data row is taken for the header
        "headerless.csv": f"{PHONE},{GOOD_TS},39.86,116.36,{NAME}\n" + _rows(12),
        # …and when that row repeats a value, the "header" repeats a name
        "headerless_repeats.csv": f"{PHONE},{PHONE},{RESIDENT_ID},{RESIDENT_ID},{NAME}\n" + _rows(12),
        "duplicated_columns.csv": f"{HEADER},{PHONE},{PHONE}\n"
        + "".join(f"a{i},{GOOD_TS},39.86,116.36,confirmed,{NAME},{RESIDENT_ID}\n" for i in range(12)),
        "duplicated_job_column.csv": f"person_id,ts,lat,lng,group,lat,{NAME}\n"
        + "".join(f"{PHONE},{GOOD_TS},39.86,116.36,confirmed,39.9,{NAME}\n" for _ in range(12)),
        "missing_column.csv": f"{PHONE},ts,{NAME},lng,group\n" + _rows(12),
        "renamed_columns.csv": f"id,time,latitude,longitude,{NAME}\n" + _rows(12),
        "wrong_types.csv": f"{HEADER}\na1,{PHONE},{NAME},116.36,confirmed\n"
        f"a2,{GOOD_TS},{RESIDENT_ID},{NAME},confirmed\n,{GOOD_TS},39.86,116.36,{NAME}\n" + _rows(12),
        "ragged_rows.csv": HEADER + "\n" + _rows(3) + f"a9,{GOOD_TS},39.86,116.36,confirmed,{PHONE},{NAME}\n"
        + _rows(8, 3),
        "short_rows.csv": HEADER + "\n" + _rows(3) + f"{PHONE},{NAME}\n" + _rows(8, 3),
        "unbalanced_quote.csv": HEADER + "\n" + _rows(3) + f'"{PHONE},{GOOD_TS},39.86,116.36,{NAME}\n'
        + _rows(8, 3),
        "pii_in_group.csv": HEADER + "\n"
        + "".join(f"a{i},{GOOD_TS},39.86,116.36,{PHONE} {RESIDENT_ID} {NAME}\n" for i in range(12)),
    }
    variants = {name: body.encode() for name, body in text.items()}
    variants.update({
        "non_utf8.csv": (HEADER + "\n" + _rows(3)).encode()
        + f"{PHONE},{GOOD_TS},39.86,116.36,".encode() + NAME.encode("gbk") + b"\xff\n" + _rows(8, 3).encode(),
        "non_utf8_header.csv": NAME.encode("gbk") + f",{PHONE},ts,lat,lng,group\n".encode()
        + _rows(12).encode(),
        "truncated_trailer.csv.gz": big_gz[:-6],  # only the CRC/size trailer is cut: fails late
        "truncated_half.csv.gz": big_gz[: len(big_gz) // 2],
        "wrong_type_ts.parquet": _parquet(typed),
        "wrong_type_lat.parquet": _parquet(listed),
        "truncated.parquet": _parquet(typed)[: len(_parquet(typed)) // 2],
        "canary_columns.parquet": _parquet(pl.DataFrame({PHONE: ["a"] * 3, NAME: [1] * 3})),
        "not_a_parquet.parquet": (HEADER + "\n" + _rows(12)).encode(),
    })
    return variants


VARIANTS = _variants()


def _setup(tmp: Path, name: str, on_bad_rows: str = "quarantine") -> Path:
    (tmp / name).write_bytes(VARIANTS[name])
    key = tmp / "pseudonym.key"
    key.write_text(TEST_KEY)
    key.chmod(0o600)
    job = tmp / "job.toml"
    job.write_text(JOB.format(input=name, on_bad_rows=on_bad_rows), encoding="utf-8")
    declare(job)
    return job


def declare(job: Path) -> None:
    """Declare the job's dataset in its ledger, with the job's caps (once per ledger)."""
    cfg = pm.JobConfig.from_toml(job)
    p = pm.plan(cfg)
    ledger, budget = p.ledger(), p.budget()
    assert ledger is not None and budget is not None
    if cfg.dataset not in ledger.datasets():
        ledger.declare(cfg.dataset, budget, operator="tester", reason="test set-up")


def _logs(tmp: Path) -> str:
    """The audit log and the ledger (bytes, as text): everything privmob kept about the run."""
    state = tmp / "state"
    if not state.exists():
        return ""
    files = [p for p in state.rglob("*") if p.is_file()]
    return "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in files)


def _leaks(**where: str) -> list[tuple[str, str]]:
    """(where, canary) for every canary found, raw or as a JSON ``\\u`` escape."""
    forms = {c: (c, json.dumps(c)[1:-1]) for c in CANARIES}
    return sorted((place, c) for place, text in where.items() for c, fs in forms.items()
                  if any(f in text for f in fs))


def _cli(tmp: Path, args: list[str], capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.chdir(tmp)
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


MODES: dict[str, Callable[[Path], list[str]]] = {
    "run": lambda job: ["run", str(job)],
    "run_json": lambda job: ["run", str(job), "--log-format", "json"],
    "run_fail_on_bad_rows": lambda job: ["run", str(job)],
    "dry_run": lambda job: ["run", str(job), "--dry-run"],
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cli_never_echoes_an_input_value(name: str, mode: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job = _setup(tmp_path, name, "fail" if mode == "run_fail_on_bad_rows" else "quarantine")
    code, out, err = _cli(tmp_path, MODES[mode](job), capsys, monkeypatch)
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 2), (code, err)
    assert _leaks(stdout=out, stderr=err, logs=_logs(tmp_path)) == [], err


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_python_api_never_echoes_an_input_value(name: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    job = _setup(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    p = pm.plan(pm.JobConfig.from_toml(job))
    message = ""
    try:
        p.release(tmp_path / name)
    except pm.PrivmobError as exc:
        message = f"{exc}\n{exc.__notes__ if hasattr(exc, '__notes__') else ''}"
    audit = p.config.budget.audit_path if p.config.budget is not None else None
    assert audit is not None and audit.exists(), "the run left no audit entry"
    assert _leaks(exception=message, logs=_logs(tmp_path)) == [], message


def test_the_variants_are_refused_for_the_right_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The messages still say what is wrong, by position and job column name."""
    expected = {
        "headerless_repeats.csv": ("repeats a column name", "columns 1, 2", "columns 3, 4"),
        "duplicated_columns.csv": ("repeats a column name", "columns 6, 7"),
        "duplicated_job_column.csv": ("'lat' at columns 3, 6",),
        "headerless.csv": ("missing required column(s) 'person_id', 'ts', 'lat', 'lng', 'group'",
                           "5 other(s)", "header row"),
        "renamed_columns.csv": ("column 1 → 'person_id'", "column 2 → 'ts'", "column 3 → 'lat'",
                                "column 4 → 'lng'"),
        "truncated_trailer.csv.gz": ("cannot be read",),
        "wrong_type_ts.parquet": ("'ts'",),
    }
    for name, words in expected.items():
        folder = tmp_path / name
        folder.mkdir()
        code, _out, err = _cli(folder, ["run", str(_setup(folder, name))], capsys, monkeypatch)
        assert code == 2, (name, err)
        for word in words:
            assert word in err, (name, err)


def test_dry_run_names_job_columns_and_counts_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    name = "extra.csv"
    VARIANTS[name] = (f"{HEADER},{PHONE},{NAME}\n"
                      + "".join(f"a{i},{GOOD_TS},39.86,116.36,confirmed,x,y\n" for i in range(3))).encode()
    try:
        args = ["run", str(_setup(tmp_path, name)), "--dry-run"]
        code, out, err = _cli(tmp_path, args, capsys, monkeypatch)
    finally:
        del VARIANTS[name]
    assert code == 0, err
    assert "person_id: String" in out and "and 2 other column(s), not read" in out
    assert _leaks(stdout=out, stderr=err) == []


def test_dry_run_checks_column_types(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A Boolean ts is refused by the dry run, not first by the real run."""
    code, _out, err = _cli(tmp_path, ["run", str(_setup(tmp_path, "wrong_type_ts.parquet")), "--dry-run"],
                           capsys, monkeypatch)
    assert code == 2 and "'ts'" in err, err
