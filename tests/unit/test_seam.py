"""The engine seam: driver-side steps are written once, above it, and engines call them.

The schema check (with the ``assume_group`` rule), the row accounting (with the usable
rows outside the boundary) and the PII findings are functions of their stage modules;
an engine supplies only counts. Spark's side of the same calls is checked in
tests/system/test_spark_parity.py.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import privmob as pm
from privmob.backends import PolarsBackend, get_backend
from privmob.errors import SchemaError
from privmob.stages import pii, scope
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD_START, TEST_KEY, config, pings

SRC = Path(__file__).resolve().parents[2] / "src" / "privmob"


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Record what each call of ``module.name`` returned (None while it runs or if it
    raised), still running the real function."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        result = real(*args, **kwargs)
        calls[-1] = result
        return result

    monkeypatch.setattr(module, name, spy)
    return calls


# --- the schema check ------------------------------------------------------------------


def test_check_schema_refuses_in_order_with_the_engines_messages() -> None:
    cfg = config()
    assumed = config(scope={"assume_group": "confirmed"})
    ok = {"person_id": pl.String(), "ts": pl.Int64(), "lat": pl.Float64(), "lng": pl.Float64(),
          "group": pl.String()}
    scope.check_schema(ok, cfg)
    scope.check_schema({k: v for k, v in ok.items() if k != "group"}, assumed)
    with pytest.raises(SchemaError, match=r"missing required column.*'group'.*assume_group"):
        scope.check_schema({k: v for k, v in ok.items() if k != "group"}, cfg)
    with pytest.raises(SchemaError, match="assume_group is set but the input has a group column"):
        scope.check_schema(ok, assumed)
    with pytest.raises(SchemaError):
        scope.check_schema({**ok, "lat": pl.Boolean()}, cfg)  # an unusable type
    # A column missing outranks a bad type: the first problem is the one reported.
    with pytest.raises(SchemaError, match="missing"):
        scope.check_schema({"person_id": pl.String(), "ts": pl.Boolean()}, cfg)


def test_polars_engine_refuses_through_the_shared_check(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch, scope, "check_schema")
    frame = pings([("a", PERIOD_START + 60, 39.9, 116.4, "confirmed")])
    with pytest.raises(SchemaError, match="assume_group is set"):
        get_backend("polars").exact_cells(frame, config(scope={"assume_group": "confirmed"}),
                                          Pseudonymiser(TEST_KEY.encode(), "p"), None)
    assert len(calls) == 1  # the refusal came from the shared check
    get_backend("polars").exact_cells(frame, config(), Pseudonymiser(TEST_KEY.encode(), "p"), None)
    assert len(calls) == 2


# --- the row accounting ------------------------------------------------------------------


def test_rows_by_status_moves_rows_outside_the_boundary_and_drops_empty_statuses() -> None:
    counted = pl.DataFrame({"status": ["ok", "out_of_scope", "ok", "lat_out_of_range", "ok"],
                            "group": ["confirmed", "general", "suspected", None, "x"],
                            "n": [5, 3, 2, 0, 1]})
    assert scope.rows_by_status(counted) == {"ok": 8, "out_of_scope": 3}
    moved = scope.rows_by_status(counted, outside=2)
    assert moved == {"ok": 6, "out_of_scope": 3, scope.OUTSIDE_BOUNDARY: 2}
    assert list(moved) == sorted(moved)  # the same order whatever order the engine counted in
    assert scope.rows_by_status(counted, outside=8) == {"out_of_scope": 3, "outside_boundary": 8}
    assert scope.rows_by_status(counted.clear()) == {}


def test_polars_engine_counts_through_the_shared_accounting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows outside the boundary are counted by scope.rows_by_status and reported as such."""
    accounted = _spy(monkeypatch, scope, "rows_by_status")
    found = _spy(monkeypatch, pii, "findings")
    frame = pings([("a", PERIOD_START + 60, 39.9, 116.4, "confirmed"),
                   ("b", PERIOD_START + 60, 10.0, 10.0, "confirmed"),  # far outside Beijing
                   ("c", PERIOD_START + 60, 39.9, 116.4, "call 13812345678")])
    cfg = config(grid={"boundary": str(Path(__file__).resolve().parents[2] / "data-samples"
                                       / "beijing_boundary.geojson")})
    exact = get_backend("polars").exact_cells(frame, cfg, Pseudonymiser(TEST_KEY.encode(), "p"),
                                              pm.plan(cfg).key_cells)
    assert accounted == [exact.rows_by_status]
    assert exact.rows_by_status == {"ok": 1, "out_of_scope": 1, "outside_boundary": 1}
    assert found == [exact.pii] and exact.pii == {"group": {"mobile": 1}}


# --- the PII findings --------------------------------------------------------------------


def test_findings_weigh_group_values_by_their_rows_and_add_the_scanned_columns() -> None:
    counted = pl.DataFrame({"status": ["ok", "out_of_scope", "out_of_scope"],
                            "group": ["confirmed", "id 11010519491231002X", "mail a@b.cn"],
                            "n": [100, 4, 3]})
    scanned = {"pii:note:mobile": 2, "pii:note:email": 0, "pii:a:b:email": 1, "rows": 9}
    assert pii.findings(counted, scanned) == {
        "group": {"resident_id": 4, "email": 3}, "note": {"mobile": 2}, "a:b": {"email": 1}}
    # No group column (assume_group filled it in): the configured value is not input.
    assert pii.findings(None, scanned) == {"note": {"mobile": 2}, "a:b": {"email": 1}}
    assert pii.findings(counted.clear(), {}) == {}


# --- the package's public engine API --------------------------------------------------------


def test_engines_are_public_names_of_the_backends_package() -> None:
    from privmob.backends import _polars

    assert PolarsBackend is _polars.PolarsBackend
    frame = pings([("a", PERIOD_START + 60, 39.9, 116.4, "confirmed"),
                   ("b", "not a time", 39.9, 116.4, "confirmed")])
    lf = PolarsBackend().validated(frame, config())
    assert isinstance(lf, pl.LazyFrame)
    assert lf.collect()["status"].to_list() == ["ok", "ts_unparseable"]


def test_no_module_outside_the_engines_imports_an_engine_module() -> None:
    """evaluate (and everything else above the seam) uses privmob.backends' public names."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "backends":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("privmob.backends._"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders


def test_polars_trips_are_the_stays_definition_of_its_fixes() -> None:
    """The engine's trips are person_trips of its fixes (the path flows used to take)."""
    from privmob.movement.stays import StayParams, person_trips

    rng = np.random.default_rng(3)
    rows = []
    for person, (a, b) in enumerate([((39.90, 116.40), (39.95, 116.45)), ((39.99, 116.32), (39.91, 116.46))]):
        for t in range(0, 4 * 3600, 120):  # 2 h at a, then 2 h at b
            lat, lng = a if t < 2 * 3600 else b
            rows.append((f"p{person}", PERIOD_START + t, lat + rng.normal(0, 1e-4), lng, "confirmed"))
    cfg = config(flows={"units": "cells", "resolution": 6, "epsilon": 0.5})
    engine = get_backend("polars")
    key = Pseudonymiser(TEST_KEY.encode(), "p")
    trips = engine.trips(pings(rows), cfg, key)
    assert trips.height == 2 and trips["pid"].n_unique() == 2
    assert trips.equals(person_trips(engine.fixes(pings(rows), cfg, key), StayParams.of(cfg.flows)))
    # Explicit parameters win over the job's: a 3 h minimum stay leaves no trip.
    assert engine.trips(pings(rows), cfg, key, StayParams(min_duration_s=3 * 3600)).height == 0
