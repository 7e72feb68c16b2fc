"""A plain ``pip install privmob`` runs the demo; each optional part names its extra.

The optional dependencies (statsmodels, POT, geopandas and GDAL, PySpark, pyarrow, pandas)
are hidden from one child interpreter exactly as if they were not installed: every import
finder is wrapped so that it does not find them (``import x`` raises ModuleNotFoundError,
``importlib.util.find_spec`` returns None). In it, ``import privmob`` and the whole demo
(release, signature, heatmaps, HTML report) must work, and each optional feature must raise
:class:`~privmob.errors.MissingExtraError` (exit code 2 in the CLI) whose message is the
exact ``pip install 'privmob[...]'`` line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Top-level modules that only extras install (and what they pull in).
HIDDEN = ("statsmodels", "ot", "geopandas", "pyogrio", "pyproj", "pyspark", "py4j", "pyarrow",
          "pandas", "scipy")

_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys, traceback
    from pathlib import Path

    HIDDEN = set(sys.argv[2].split(","))

    class Hide(importlib.abc.MetaPathFinder):
        # Wraps a finder so that it never finds a hidden package: as if not installed.
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            return self.inner.find_spec(name, path, target)

        def __getattr__(self, attr):  # find_distributions, invalidate_caches, ...
            return getattr(self.inner, attr)

    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    tmp = Path(sys.argv[1])
    out = {}

    def attempt(name, fn):
        try:
            out[name] = {"ok": True, "value": fn()}
        except Exception as exc:
            out[name] = {"ok": False, "type": type(exc).__name__, "message": str(exc),
                         "extra": getattr(exc, "extra", None),
                         "is_privmob": type(exc).__module__ == "privmob.errors",
                         "exit_code": getattr(exc, "exit_code", None)}

    import datetime as dt
    import h3
    import polars as pl
    import privmob
    from privmob.cli import main, samples_dir

    start = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    cell = h3.latlng_to_cell(39.9, 116.4, 7)
    rows = pl.DataFrame({"cell": [cell] * 48,
                         "window_start": [start + dt.timedelta(hours=h) for h in range(48)],
                         "count": [100 + 50 * (h % 24 >= 8) for h in range(48)]})

    def fc(method):
        from privmob.analysis.forecast import forecast
        f = forecast(rows, horizon=24, noise_std=10.0, threshold=40, window="1h", method=method)
        return f.table["method"][0]

    attempt("forecast_ets", lambda: fc("auto"))
    attempt("forecast_naive", lambda: fc("seasonal_naive"))

    def ev():
        from privmob.analysis.evaluate import evaluate
        return evaluate(rows, rows, min_count=10)["jsd"]

    attempt("evaluate_cells", ev)

    def spark():
        from privmob.backends import get_backend
        return type(get_backend("spark")).__name__

    attempt("spark", spark)

    def synth_big():
        from privmob.synth import generate_to_parquet
        return generate_to_parquet(tmp / "s.parquet", 5)

    attempt("synth_parquet", synth_big)

    def boundary_where():
        from privmob.privacy.keys import load_boundary
        return str(load_boundary(samples_dir() / "beijing_districts.geojson", {"name": "x"}))

    attempt("boundary_where", boundary_where)

    def flow_units():
        from privmob.movement.flows import load_units
        return str(load_units(samples_dir() / "beijing_districts.geojson", "name"))

    attempt("flow_units", flow_units)

    # The CLI: a missing extra is a privmob error, exit 2, one line on stderr.
    attempt("cli_synth", lambda: main(["synth", "--out", str(tmp / "cli.parquet"), "--persons", "5"]))

    def demo():
        code = main(["demo", "--out", str(tmp / "demo")])
        names = sorted(p.name for p in (tmp / "demo").iterdir())
        meta = pl.read_parquet_metadata(tmp / "demo" / "release.parquet")
        return {"code": code, "files": names, "marking": meta.get("privmob.marking", "")}

    attempt("demo", demo)
    out["loaded_hidden"] = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the child once (the demo takes a few seconds); its results by step name."""
    tmp = tmp_path_factory.mktemp("no-extras")
    env = {**os.environ, "PRIVMOB_LEDGER": str(tmp / "ledger.sqlite"), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp), ",".join(HIDDEN)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, f"child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["stderr"] = proc.stderr
    return result


def _says_install(step: dict[str, Any], extra: str) -> None:
    assert not step["ok"], step
    assert step["type"] == "MissingExtraError", step
    assert step["is_privmob"] and step["exit_code"] == 2
    assert step["extra"] == extra
    assert f"`pip install 'privmob[{extra}]'`" in step["message"]


def test_import_privmob_loads_no_optional_dependency(without_extras: dict[str, Any]) -> None:
    assert without_extras["loaded_hidden"] == []


def test_the_demo_runs_with_reports_on_the_base_install(without_extras: dict[str, Any]) -> None:
    demo = without_extras["demo"]
    assert demo["ok"], demo
    assert demo["value"]["code"] == 0
    files = set(demo["value"]["files"])
    assert {"release.parquet", "release.csv", "manifest.json", "manifest.sig",
            "heatmap.png", "heatmap.pdf", "report.html"} <= files
    # The Parquet file still carries the marking without pyarrow.
    assert demo["value"]["marking"]


def test_ets_forecast_names_the_forecast_extra(without_extras: dict[str, Any]) -> None:
    _says_install(without_extras["forecast_ets"], "forecast")
    assert "statsmodels" in without_extras["forecast_ets"]["message"]


def test_seasonal_naive_forecast_needs_no_extra(without_extras: dict[str, Any]) -> None:
    assert without_extras["forecast_naive"] == {"ok": True, "value": "seasonal_naive"}


def test_earth_movers_distance_names_the_eval_extra(without_extras: dict[str, Any]) -> None:
    _says_install(without_extras["evaluate_cells"], "eval")
    assert "pot" in without_extras["evaluate_cells"]["message"]


def test_large_synthetic_parquet_names_the_eval_extra(without_extras: dict[str, Any]) -> None:
    _says_install(without_extras["synth_parquet"], "eval")


@pytest.mark.parametrize("step", ["boundary_where", "flow_units"])
def test_gdal_boundary_layers_name_the_geo_extra(without_extras: dict[str, Any], step: str) -> None:
    _says_install(without_extras[step], "geo")


def test_spark_backend_names_the_spark_extra(without_extras: dict[str, Any]) -> None:
    step = without_extras["spark"]
    assert not step["ok"] and step["is_privmob"] and step["exit_code"] == 2
    assert "`pip install 'privmob[spark]'`" in step["message"]


def test_cli_exits_2_with_the_install_line(without_extras: dict[str, Any]) -> None:
    assert without_extras["cli_synth"] == {"ok": True, "value": 2}
    errors = [ln for ln in without_extras["stderr"].splitlines() if ln.startswith("error:")]
    assert any("`pip install 'privmob[eval]'`" in ln for ln in errors), without_extras["stderr"][-2000:]


# -- pyproject: [dev] is every extra plus the tools -----------------------------------------


def _extras() -> dict[str, list[str]]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        extras: dict[str, list[str]] = tomllib.load(fh)["project"]["optional-dependencies"]
    return extras


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_dev_extra_contains_every_other_extra() -> None:
    extras = _extras()
    dev = {r.replace(" ", "") for r in extras["dev"]}
    assert {"forecast", "eval", "geo", "spark"} <= set(extras)
    for name, requirements in extras.items():
        missing = [r for r in requirements if r.replace(" ", "") not in dev]
        assert not missing, f"[dev] lacks [{name}]'s {missing}"


def test_heavy_optional_packages_are_not_base_dependencies() -> None:
    with (REPO / "pyproject.toml").open("rb") as fh:
        base = {_name(r) for r in tomllib.load(fh)["project"]["dependencies"]}
    assert not base & {"statsmodels", "pot", "geopandas", "pyspark", "pyarrow", "pandas", "scipy"}
