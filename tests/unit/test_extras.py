"""A plain ``pip install privmob`` runs the demo; each optional part names its extra.

The optional dependencies (Matplotlib and the fonts, statsmodels, POT, geopandas and GDAL,
PySpark, pyarrow, pandas) are hidden from one child interpreter exactly as if they were not
installed: every import finder is wrapped so that it does not find them (``import x``
raises ModuleNotFoundError, ``importlib.util.find_spec`` returns None). In it,
``import privmob`` and the demo (release, manifest, signature; its reports skipped with the
install line) must work, a job asking for reports must be refused before its ledger is
touched, and each optional feature must raise :class:`~privmob.errors.MissingExtraError`
(exit code 2 in the CLI) whose message is the exact ``pip install 'privmob[...]'`` line.
A second child hides all but ``[report]``: there the demo draws its reports.
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
#: ... and those of the [report] extra: Matplotlib (with Pillow and its other dependencies),
#: fontTools, brotli and the bundled CJK font.
REPORT = ("matplotlib", "mpl_toolkits", "PIL", "kiwisolver", "contourpy", "cycler", "pyparsing",
          "fontTools", "brotli", "brotlicffi", "noto_cjk_sans_otc")
REPORT_LINE = "`pip install 'privmob[report]'`"

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
    BASE = sys.argv[3] == "base"  # else: every extra hidden but [report]
    out = {}

    def attempt(name, fn):
        try:
            out[name] = {"ok": True, "value": fn()}
        except Exception as exc:
            out[name] = {"ok": False, "type": type(exc).__name__, "message": str(exc),
                         "extra": getattr(exc, "extra", None),
                         "is_privmob": type(exc).__module__ == "privmob.errors",
                         "exit_code": getattr(exc, "exit_code", None)}

    import contextlib, io, os
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

    def cli(*argv):
        # One CLI command, with what it printed (stdout, stderr).
        so, se = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            code = main([str(a) for a in argv])
        return {"code": code, "out": so.getvalue(), "err": se.getvalue()}

    def demo():
        result = cli("demo", "--out", tmp / "demo")
        meta = pl.read_parquet_metadata(tmp / "demo" / "release.parquet")
        return {**result, "files": sorted(p.name for p in (tmp / "demo").iterdir()),
                "marking": meta.get("privmob.marking", "")}

    attempt("demo", demo)
    if not BASE:
        print("RESULT " + json.dumps(out))
        sys.exit(0)

    def report_import():
        import privmob.report

    attempt("report_import", report_import)

    def report_submodule():
        import privmob.report.heatmap

    attempt("report_submodule", report_submodule)
    attempt("cli_report", lambda: {**cli("report", tmp / "demo", "--out", tmp / "pictures"),
                                   "made": (tmp / "pictures").exists()})

    # `privmob run` of the demo job (default ledger: $PRIVMOB_LEDGER), with and without reports.
    from privmob.stages.pseudonymise import new_key

    key = tmp / "job.key"
    key.write_bytes(new_key())
    key.chmod(0o600)
    ledger = Path(os.environ["PRIVMOB_LEDGER"])
    ledger_files = lambda: sorted(p.name for p in ledger.parent.iterdir()
                                  if p.name.startswith(ledger.name))
    demo_job = (samples_dir() / "demo.toml").read_text(encoding="utf-8")

    def job(name, reports):
        text = demo_job.replace('input = "beijing_pings.parquet"',
                                f'input = "{samples_dir() / "beijing_pings.parquet"}"')
        text = text.replace('output = "../out/demo-job/{period}"', f'output = "{tmp / name}/{{period}}"')
        text = text.replace('boundary = "beijing_boundary.geojson"',
                            f'boundary = "{samples_dir() / "beijing_boundary.geojson"}"')
        if reports is not None:
            text = text.replace("[job]\\n", f"[job]\\nreports = {reports}\\n", 1)
        path = tmp / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def run(name, reports):
        result = cli("run", job(name, reports), "--key-file", key, "--quiet")
        return {**result, "ledger": ledger_files(),
                "files": sorted(p.name for p in (tmp / name).rglob("*") if p.is_file())}

    attempt("run_reports_default", lambda: run("runs-default", None))
    attempt("run_reports_true", lambda: run("runs-true", "true"))

    def python_release():
        from privmob import JobConfig, plan
        cfg = JobConfig.from_toml(job("py", None)).with_overrides(job__key_file=str(key))
        plan(cfg).release(samples_dir() / "beijing_pings.parquet", write_to=tmp / "py-out")

    attempt("python_release", python_release)
    out["ledger_after_refusals"] = ledger_files()
    out["python_out_made"] = (tmp / "py-out").exists()
    attempt("run_reports_false", lambda: run("runs-false", "false"))
    from privmob.governance.audit import AuditLog
    audit = ledger.with_name(ledger.name + ".audit.jsonl")
    out["audit_events"] = [e["event"] for e in AuditLog(audit).entries()] if audit.exists() else None

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
    out["loaded_hidden"] = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
    print("RESULT " + json.dumps(out))
    """
)


def _child(tmp: Path, hidden: tuple[str, ...], mode: str) -> dict[str, Any]:
    """Run the child (the demo takes a few seconds); its results by step name."""
    (tmp / "ledgers").mkdir()
    env = {**os.environ, "PRIVMOB_LEDGER": str(tmp / "ledgers" / "ledger.sqlite"), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp), ",".join(hidden), mode],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, f"child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["stderr"] = proc.stderr
    return result


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base install: every extra hidden, [report] too."""
    return _child(tmp_path_factory.mktemp("no-extras"), HIDDEN + REPORT, "base")


@pytest.fixture(scope="module")
def with_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``pip install 'privmob[report]'``: every other extra hidden."""
    return _child(tmp_path_factory.mktemp("report-extra"), HIDDEN, "report")


def _says_install(step: dict[str, Any], extra: str) -> None:
    assert not step["ok"], step
    assert step["type"] == "MissingExtraError", step
    assert step["is_privmob"] and step["exit_code"] == 2
    assert step["extra"] == extra
    assert f"`pip install 'privmob[{extra}]'`" in step["message"]


def test_import_privmob_loads_no_optional_dependency(without_extras: dict[str, Any]) -> None:
    assert without_extras["loaded_hidden"] == []


RELEASE_FILES = {"release.parquet", "release.csv", "manifest.json", "manifest.sig"}
REPORT_FILES = {"heatmap.png", "heatmap.pdf", "report.html"}


def test_the_demo_draws_its_reports_with_the_report_extra(with_report: dict[str, Any]) -> None:
    demo = with_report["demo"]
    assert demo["ok"], demo
    assert demo["value"]["code"] == 0, demo["value"]["err"][-2000:]
    assert set(demo["value"]["files"]) >= RELEASE_FILES | REPORT_FILES
    assert "privmob[report]" not in demo["value"]["out"] + demo["value"]["err"]
    # The Parquet file still carries the marking without pyarrow.
    assert demo["value"]["marking"]


def test_the_demo_releases_on_the_base_install_and_names_the_report_extra(
        without_extras: dict[str, Any]) -> None:
    demo = without_extras["demo"]
    assert demo["ok"], demo
    assert demo["value"]["code"] == 0, demo["value"]["err"][-2000:]
    files = set(demo["value"]["files"])
    assert files >= RELEASE_FILES and not files & REPORT_FILES, files
    assert not any(name.startswith("heatmap") for name in files)
    assert demo["value"]["marking"]
    said = [ln for ln in (demo["value"]["out"] + demo["value"]["err"]).splitlines() if REPORT_LINE in ln]
    assert len(said) == 1 and said[0].startswith("reports skipped"), said


@pytest.mark.parametrize("step", ["report_import", "report_submodule"])
def test_importing_the_reports_without_the_extra_names_it(without_extras: dict[str, Any], step: str) -> None:
    _says_install(without_extras[step], "report")
    assert "matplotlib" in without_extras[step]["message"]


def test_privmob_report_names_the_report_extra_and_exits_2(without_extras: dict[str, Any]) -> None:
    step = without_extras["cli_report"]
    assert step["ok"], step
    assert step["value"]["code"] == 2
    (line,) = step["value"]["err"].splitlines()
    assert line.startswith("error: ") and REPORT_LINE in line
    assert not step["value"]["made"]  # refused before the report folder is made


@pytest.mark.parametrize("step", ["run_reports_default", "run_reports_true"])
def test_a_job_asking_for_reports_is_refused_before_its_ledger_is_touched(
        without_extras: dict[str, Any], step: str) -> None:
    run = without_extras[step]
    assert run["ok"], run
    assert run["value"]["code"] == 2, run["value"]["err"][-2000:]
    (line,) = run["value"]["err"].splitlines()
    assert line.startswith("error: ") and REPORT_LINE in line
    assert "`[job] reports = false`" in line
    assert run["value"]["files"] == []  # nothing written
    assert run["value"]["ledger"] == []  # the (default) ledger and its audit log never opened


def test_a_python_release_asking_for_reports_is_refused_before_its_ledger_is_touched(
        without_extras: dict[str, Any]) -> None:
    _says_install(without_extras["python_release"], "report")
    assert "`[job] reports = false`" in without_extras["python_release"]["message"]
    assert without_extras["ledger_after_refusals"] == []
    assert not without_extras["python_out_made"]


def test_a_job_without_reports_runs_on_the_base_install_and_is_the_only_charge(
        without_extras: dict[str, Any]) -> None:
    run = without_extras["run_reports_false"]
    assert run["ok"], run
    assert run["value"]["code"] == 0, run["value"]["err"][-2000:]
    files = {Path(f).name for f in run["value"]["files"]}
    assert files >= RELEASE_FILES - {"manifest.sig"} and not files & REPORT_FILES  # unsigned job
    assert run["value"]["ledger"] == ["ledger.sqlite", "ledger.sqlite.audit.jsonl"]
    # The ledger's whole history is this one release: the three refused attempts before it
    # reserved, cancelled and audited nothing.
    events = without_extras["audit_events"]
    assert events is not None
    assert events.count("reserved") == 1 and events.count("released") == 1, events
    assert not {"refused", "failed"} & set(events), events


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
    assert {"report", "forecast", "eval", "geo", "spark"} <= set(extras)
    for name, requirements in extras.items():
        missing = [r for r in requirements if r.replace(" ", "") not in dev]
        assert not missing, f"[dev] lacks [{name}]'s {missing}"


def test_heavy_optional_packages_are_not_base_dependencies() -> None:
    with (REPO / "pyproject.toml").open("rb") as fh:
        base = {_name(r) for r in tomllib.load(fh)["project"]["dependencies"]}
    assert not base & {"statsmodels", "pot", "geopandas", "pyspark", "pyarrow", "pandas", "scipy",
                       "matplotlib", "fonttools", "brotli", "noto-cjk-sans-otc", "pillow"}


# -- import privmob: the analysis tools are bound on first use ------------------------------

_LAZY_CHILD = textwrap.dedent(
    """
    import json, sys
    import privmob.cli
    loaded = sorted(m for m in sys.modules if m.startswith(("privmob.analysis", "privmob.report")))
    import privmob
    from privmob import Forecast, evaluate, forecast
    from privmob.analysis import evaluate as ev_mod, forecast as fc_mod
    same = [evaluate is ev_mod.evaluate is privmob.evaluate, forecast is fc_mod.forecast,
            Forecast is fc_mod.Forecast]
    missing = [n for n in privmob.__all__ if not hasattr(privmob, n)]
    print(json.dumps({"loaded": loaded, "same": same, "missing": missing,
                      "in_dir": sorted({"evaluate", "forecast", "Forecast"} & set(dir(privmob)))}))
    """
)


def test_the_cli_imports_no_analysis_or_report_module_and_the_lazy_names_still_work() -> None:
    """``import privmob`` binds evaluate/forecast/Forecast on first use (they are not needed
    to release); ``privmob.evaluate``, ``from privmob import evaluate`` and ``__all__`` work."""
    proc = subprocess.run([sys.executable, "-c", _LAZY_CHILD], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"loaded": [], "same": [True, True, True], "missing": [],
                      "in_dir": ["Forecast", "evaluate", "forecast"]}
