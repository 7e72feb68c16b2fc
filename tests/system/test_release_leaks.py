"""Nothing in a published release folder is an exact function of the input (issue 11).

The differencing check: release an input D and D' = D without one person, each three
times (fresh release ids, the same pseudonym and signing keys), and compare every field
of every file in the folders. A field whose value is the same in every run of D, the
same in every run of D', but differs between the two is computed from the exact data —
not from the noise — and would let anyone holding both releases learn about the person
left out. Fields that vary between runs of the same input (noise, ids, times, digests of
noisy files) are ignored. The keys are public (a boundary) and every true count is far
from the release threshold, so the set of released keys is the same in every run and the
noisy values are the only data-dependent thing left.

The exact figures (rows, persons, bounding tallies, digests, timings) live in the
operator record, which must never reach the folder.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

import privmob as pm
from privmob.governance.signing import generate_keypair
from privmob.release.table import ReleasedTable, read_operator_record, write_operator_record
from tests.conftest import PERIOD, PERIOD_START, TEST_KEY

RUNS = 3
CELL_A = (39.90, 116.35)  # two res-6 cells ~9 km apart, inside the square below
CELL_B = (39.93, 116.45)
PERSONS = 300  # each cell-window holds 300 persons: ~18 σ above the threshold of 53
PHONE_HEADER = "13812345678"


def square_boundary(path: Path) -> Path:
    ring = [[116.30, 39.85], [116.50, 39.85], [116.50, 39.97], [116.30, 39.97], [116.30, 39.85]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"name": "test-square"},
        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}), encoding="utf-8")
    return path


def pings_d() -> pl.DataFrame:
    """Every person stays an hour at A (08:00–09:00), then an hour at B (10:00–11:00)."""
    rows: list[tuple[str, int, float, float, str]] = []
    for i in range(PERSONS):
        pid = f"P{i:03d}"
        rows += [(pid, PERIOD_START + 8 * 3600 + 600 * k, *CELL_A, "confirmed") for k in range(7)]
        rows += [(pid, PERIOD_START + 10 * 3600 + 600 * k, *CELL_B, "confirmed") for k in range(7)]
    # The person the attacker asks about also has rows the pipeline drops (scope, period).
    rows += [("P000", PERIOD_START + 12 * 3600, *CELL_A, "visitor"),
             ("P000", PERIOD_START - 3600, *CELL_A, "confirmed")]
    return pl.DataFrame(rows, schema=["person_id", "ts", "lat", "lng", "group"], orient="row")


def job(tmp: Path, *, reports: bool) -> pm.JobConfig:
    signing = tmp / "signing.pem"
    if not signing.exists():
        generate_keypair(signing)
    return pm.JobConfig.from_dict({
        "job": {"operator": "tester", "period": PERIOD.isoformat(), "reports": reports,
                "signing_key": str(signing)},
        "grid": {"resolution": 6, "window": "3h", "boundary": str(square_boundary(tmp / "area.geojson"))},
        # A per-key spurious rate of 1e-7 (instead of the default ≤ 1 expected empty cell per
        # table): the released key set must be the same in every run for the comparison below.
        "privacy": {"epsilon": 1.0, "max_windows": 8, "max_spurious_rate": 1e-7},
        "flows": {"units": "cells", "resolution": 6, "epsilon": 1.0},
    })


# -- every field of every file ------------------------------------------------------------

def flatten(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, json.dumps(value, sort_keys=True)


_NOISY = frozenset({"count", "ci_low", "ci_high", "near_threshold"})  # all functions of the noisy count


def file_fields(path: Path) -> Iterator[tuple[str, str]]:
    name = path.name
    data = path.read_bytes()
    if name.endswith(".json"):
        yield from flatten(json.loads(data), name)
    elif name.endswith(".parquet"):
        meta = pq.read_metadata(path)
        yield f"{name}#rows", str(meta.num_rows)
        yield f"{name}#schema", str(meta.schema.to_arrow_schema().remove_metadata())
        for k, v in (meta.metadata or {}).items():
            yield f"{name}#meta.{k.decode()}", v.decode(errors="replace")
    elif name.endswith(".csv"):
        lines = data.decode().splitlines()
        yield f"{name}#comment", lines[0]
        yield f"{name}#header", lines[1]
        yield f"{name}#lines", str(len(lines))
    elif name.endswith(".geojson"):
        doc = json.loads(data)
        yield from flatten({k: v for k, v in doc.items() if k != "features"}, name)
        for i, feature in enumerate(doc["features"]):
            props = {k: v for k, v in feature["properties"].items() if k not in _NOISY}
            yield from flatten(props, f"{name}.features[{i}].properties")
    elif name == "report.html":
        yield from html_fields(data.decode())
    else:  # pictures, signature, public key: the whole file
        yield f"{name}#sha256", hashlib.sha256(data).hexdigest()


def html_fields(page: str) -> Iterator[tuple[str, str]]:
    """The page's embedded data and manifest JSON, and each word of its visible text."""
    for i, block in enumerate(re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)):
        yield from flatten(json.loads(block), f"report.html#data{i}")
    for i, block in enumerate(re.findall(r"<pre>(.*?)</pre>", page, re.S)):
        yield from flatten(json.loads(html.unescape(block)), f"report.html#pre{i}")
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    for token in set(re.findall(r"[\w.,:+-]+", text)):
        yield f"report.html#word:{token}", "present"


def folder_fields(folder: Path) -> dict[str, str]:
    return {k: v for p in sorted(folder.iterdir()) for k, v in file_fields(p)}


def exact_leaks(runs_d: list[dict[str, str]], runs_e: list[dict[str, str]]) -> dict[str, tuple[str, str]]:
    """Fields stable within each input's runs that differ between the two inputs."""
    leaks = {}
    for key in sorted(set().union(*runs_d, *runs_e)):
        d = {r.get(key, "<absent>") for r in runs_d}
        e = {r.get(key, "<absent>") for r in runs_e}
        if len(d) == 1 and len(e) == 1 and d != e:
            leaks[key] = (d.pop(), e.pop())
    return leaks


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Path, ReleasedTable]]]:
    """D and D' (without P000), each released RUNS times, the last run with reports."""
    tmp = tmp_path_factory.mktemp("leaks")
    d = pings_d()
    inputs = {"D": d, "D-minus-P000": d.filter(pl.col("person_id") != "P000")}
    out: dict[str, list[tuple[Path, ReleasedTable]]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
        for name, frame in inputs.items():
            out[name] = []
            for run in range(RUNS):
                # Each run is a first release of its own: a fresh ledger (never the user's).
                home = tmp / f"{name}-{run}"
                mp.setenv("PRIVMOB_LEDGER", str(home / "state" / "ledger.sqlite"))
                folder = home / "release"
                released = pm.plan(job(tmp, reports=True)).release(pm.read_pings(frame), write_to=folder)
                out[name].append((folder, released))
    return out


def test_release_with_and_without_one_person_differs_only_by_noise(
    releases: dict[str, list[tuple[Path, ReleasedTable]]],
) -> None:
    runs_d = [folder_fields(f) for f, _ in releases["D"]]
    runs_e = [folder_fields(f) for f, _ in releases["D-minus-P000"]]
    # The check has something to look at: the operator record does see the person ...
    op_d, op_e = releases["D"][0][1].operator_record, releases["D-minus-P000"][0][1].operator_record
    assert op_d["persons"] == op_e["persons"] + 1
    assert op_d["rows_in"] == op_e["rows_in"] + 16
    assert op_d["bounding"]["dwell_minutes"] > op_e["bounding"]["dwell_minutes"]
    assert op_d["flows"]["persons"] == op_e["flows"]["persons"] + 1
    # ... all the files were compared, reports and flows included ...
    assert {"manifest.json", "manifest.sig", "release.parquet", "flows.geojson", "report.html",
            "heatmap.png"} <= {p.name for p in releases["D"][0][0].iterdir()}
    assert any(k.startswith("report.html#data") for k in runs_d[0])
    # ... and no field of the folder is a function of the exact data.
    assert exact_leaks(runs_d, runs_e) == {}


def test_the_check_finds_an_exact_field() -> None:
    """The comparison itself flags a field stable per input but different across inputs."""
    d = [{"m.persons": "300", "m.release_id": str(i)} for i in range(RUNS)]
    e = [{"m.persons": "299", "m.release_id": str(i + 9)} for i in range(RUNS)]
    assert exact_leaks(d, e) == {"m.persons": ("300", "299")}


def test_operator_record_stays_out_of_the_folder(
    releases: dict[str, list[tuple[Path, ReleasedTable]]],
) -> None:
    folder, released = releases["D"][0]
    op = released.operator_record
    secrets = [op["input_sha256"], op["config_sha256"], op["key_id"]]
    assert all(isinstance(s, str) and len(s) >= 16 for s in secrets)
    for path in folder.iterdir():
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), path.name
    manifest = json.loads((folder / "manifest.json").read_text())
    for field in ("rows_in", "persons", "timings_s", "input_sha256", "config_sha256",
                  "identifier_columns_dropped", "rows_used", "rows_bad", "exact_fields_note"):
        assert field not in manifest
    assert set(manifest["bounding"]) == {"rule"}
    assert "key_id" not in manifest["pseudonymisation"]
    assert set(manifest["flows"]).isdisjoint({"trips", "persons", "trips_outside_units"})
    assert set(manifest["flows"]["bounding"]) == {"rule"}
    assert manifest["privacy_unit"] == "one person over one release period (person-day)"
    assert "rows" not in repr(released) and str(op["rows_in"]) not in repr(released)
    read = ReleasedTable.read(folder)
    assert read.operator_record == {}


def test_explain_shows_exact_figures_only_from_the_operator_record(
    releases: dict[str, list[tuple[Path, ReleasedTable]]],
) -> None:
    folder, released = releases["D"][0]
    rows = f"{released.operator_record['rows_in']:,}"
    assert f"input: {rows} rows" in released.explain()
    public = ReleasedTable.read(folder).explain()
    assert "input:" not in public and rows not in public
    assert "released 2 cell-windows" in public and "person-day" in public


def test_write_operator_record_is_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state" / "records" / "r-1.json"
    record = {"release_id": "r-1", "rows_in": 12, "persons": 3}
    assert write_operator_record(path, record) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_operator_record(path) == record
    write_operator_record(path, {**record, "rows_in": 13})  # replaced whole, no temp file left
    assert read_operator_record(path)["rows_in"] == 13
    assert sorted(os.listdir(path.parent)) == ["r-1.json"]


def test_dropped_identifier_columns_never_keep_header_text(key_env: str, tmp_path: Path) -> None:
    """A header that is itself a phone number (a headerless export) must appear nowhere."""
    base = pings_d().head(140)
    frame = base.with_columns(
        pl.Series(PHONE_HEADER, [f"139{i:08d}" for i in range(base.height)]),  # by values
        pl.Series("姓名", ["某"] * base.height),  # by name
    )
    released = pm.plan(job(tmp_path, reports=True)).release(frame, write_to=tmp_path / "out")
    dropped = released.operator_record["identifier_columns_dropped"]
    assert dropped == [
        {"position": 6, "kind": "mobile", "found_by": "values", "rows": base.height},
        {"position": 7, "kind": "name", "found_by": "header"},
    ]
    assert PHONE_HEADER not in json.dumps(released.operator_record, ensure_ascii=False)
    assert "姓名" not in json.dumps(released.operator_record, ensure_ascii=False)
    for path in (tmp_path / "out").iterdir():
        data = path.read_bytes()
        assert PHONE_HEADER.encode() not in data and "姓名".encode() not in data, path.name
