"""One privacy path: every released table goes through noising.noise_table, and noise is
drawn at exactly one call site (noising.sample) — occupancy, its levels and flows alike."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import privmob as pm
from privmob.privacy import mechanism, noising, sparse
from privmob.privacy.mechanism import Sensitivity
from privmob.privacy.tablespec import PublicKeys, TableSpec, ThresholdKeys, spec
from tests.conftest import SAMPLES, config

SRC = Path(__file__).resolve().parents[2] / "src" / "privmob"
#: The samplers of privacy noise, and the one function allowed to call each of them.
SAMPLERS = {"noise_and_suppress": {("privacy.noising", "sample")},
            "threshold_counts": {("privacy.noising", "sample")},
            "noise_counts": {("privacy.sparse", "noise_and_suppress")}}


def _calls() -> dict[str, set[tuple[str, str]]]:
    """Sampler name → the (module, function) pairs of src/privmob that call it."""
    found: dict[str, set[tuple[str, str]]] = {name: set() for name in SAMPLERS}
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                    if name in found:
                        found[name].add((module, fn.name))
    return found


def test_noise_is_drawn_at_one_call_site() -> None:
    """Sparse sampling and OpenDP's threshold mechanism are called by noising.sample only
    (and per-key OpenDP noise only inside the sparse sampler): no table has a path of its own."""
    assert _calls() == SAMPLERS


def _flows_levels_config() -> pm.JobConfig:
    return config(
        grid={"resolution": 7, "window": "3h", "boundary": str(SAMPLES / "beijing_boundary.geojson"),
              "parent_resolutions": [6], "parent_epsilon": 0.5},
        privacy={"max_windows": 8, "epsilon": 1.0},
        flows={"units": "cells", "resolution": 6, "epsilon": 0.5},
    )


def test_occupancy_levels_and_flows_all_pass_through_the_sampler(
        key_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = pm.plan(_flows_levels_config())
    seen: list[TableSpec] = []
    real = noising.sample

    def spy(spec: TableSpec, counts: np.ndarray, labels: list[str] | None = None) -> object:
        seen.append(spec)
        return real(spec, counts, labels)

    monkeypatch.setattr(noising, "sample", spy)
    release = plan.release(SAMPLES / "beijing_pings.parquet")
    assert [s.name for s in seen] == ["occupancy", "occupancy_res6", "flows"]
    assert seen == list(plan.specs.tables)  # each with its own spec, no copy of one
    assert isinstance(seen[0].keys, PublicKeys) and isinstance(seen[1].keys, PublicKeys)
    assert isinstance(seen[2].keys, ThresholdKeys)
    assert release.flows is not None and release.levels[6].height == release.manifest["levels"][0][
        "cells_released"]


def _threshold_spec() -> TableSpec:
    privacy = config(privacy={"mechanism": "laplace", "epsilon": 1.0}).privacy
    return spec("flows", privacy, Sensitivity(1, 1), ThresholdKeys(("origin", "destination", "window")))


def test_threshold_keys_stay_typed_columns() -> None:
    """Keys come back as the exact frame's own values — a name with the old separator in it
    included — never as strings split apart again."""
    s = _threshold_spec()
    exact = pl.DataFrame({"origin": ["a|b", "c", "z"], "destination": ["d", "e|f|1", "z"],
                          "window": pl.Series([0, 1, 2], dtype=pl.Int32),
                          "count": pl.Series([10_000, 20_000, 0], dtype=pl.Int64)})
    out = noising.noise_table(s, exact)
    frame = out.frame.sort("window")
    assert frame["origin"].to_list() == ["a|b", "c"]  # the empty key is never released
    assert frame["destination"].to_list() == ["d", "e|f|1"]
    assert frame.schema["window"] == pl.Int32
    assert frame.columns == ["origin", "destination", "window", "count", "ci_low", "ci_high",
                             "near_threshold"]
    assert (frame["count"] >= s.threshold).all()
    assert out.suppressed is None  # threshold keys: how many were withheld is not public


def test_public_keys_are_the_product_of_their_axes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public key set noises every key (empty ones too) and maps positions back to typed
    key values, cell-major."""
    cells = np.array([10, 20, 30], dtype=np.uint64)
    keys = PublicKeys((("cell", cells), ("window", np.arange(4, dtype=np.int64))), "public:x")
    s = spec("occupancy", config(privacy={"mechanism": "laplace"}).privacy, Sensitivity(1, 1), keys)
    exact = pl.DataFrame({"cell": pl.Series([30, 10], dtype=pl.UInt64),
                          "window": pl.Series([3, 1], dtype=pl.Int32),
                          "count": pl.Series([7, 9], dtype=pl.Int64)})
    assert noising.key_vector(keys, exact).tolist() == [0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]
    drawn: list[int] = []

    def everything(model: object, counts: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
        drawn.append(counts.size)
        return np.array([1, 11], dtype=np.int64), np.array([s.threshold, s.threshold + 5], dtype=np.int64)

    monkeypatch.setattr(sparse, "noise_and_suppress", everything)
    out = noising.noise_table(s, exact)
    assert drawn == [12]
    assert out.frame.select("cell", "window").rows() == [(10, 1), (30, 3)]
    assert out.frame.schema["cell"] == pl.UInt64
    assert (out.released, out.suppressed) == (2, 10)


def test_suppression_has_a_public_home() -> None:
    """Suppression is mechanism.suppress (release.suppress is the same function)."""
    from privmob.release import table as release

    assert release.suppress is mechanism.suppress
    assert mechanism.suppress(np.array([3, 10, 11]), 10).tolist() == [False, True, True]
