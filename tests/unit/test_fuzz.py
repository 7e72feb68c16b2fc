"""Property-based fuzzing of the two parsers that take untrusted input: pings and job files.

* Any bytes or text as a CSV (or a broken Parquet / gzip) file: ``read_pings`` +
  ``Plan.release`` either release or raise a :class:`privmob.PrivmobError` — never another
  exception type (the CLI would report that as an internal error, exit 4).
* Any TOML-shaped mapping: ``JobConfig.from_dict`` returns a config or raises
  :class:`privmob.ConfigError` — never ``TypeError``, ``KeyError``, ``AttributeError``, ...
* Any privacy setting the config accepts: ``plan`` calibrates it in bounded memory and the
  noise spends no more than the ε the ledger is charged.
* Valid but odd pings (poles, the antimeridian, period edges, emoji / RTL / very long
  ids): the release succeeds and its invariants hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import math
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h3
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import privmob as pm
from privmob import config as config_module
from privmob.privacy.mechanism import rho_to_epsilon
from privmob.stages.ingest import REQUIRED_COLUMNS
from tests.conftest import PERIOD, PERIOD_START, TEST_KEY, fresh_ledger

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PERIOD_END = PERIOD_START + 86400
KEY_GROUPS = ("confirmed", "suspected", "close_contact")
T = TypeVar("T")


def bounded(fn: Callable[[], T]) -> T:
    """Run ``fn`` with this process's address space capped at its current size + 3 GiB, so
    a runaway allocation fails the example instead of meeting the OOM killer. The
    MemoryError becomes a plain failure and is dropped — with the frames that hold the
    half-built arrays — before the next example runs (so the cap cannot creep upwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize() + (3 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(hard, cap), hard))
    try:
        return fn()
    except MemoryError as exc:
        message = f"ran out of memory (a bug: it must stay bounded or refuse clearly): {exc}"
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    raise AssertionError(message)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    key = folder / "pseudonym.key"
    key.write_text(TEST_KEY)
    key.chmod(0o600)
    return folder


def make_plan(workdir: Path, **privacy: Any) -> pm.Plan:
    """A job with threshold keys and bounds small enough that a few persons get released."""
    return pm.plan(pm.JobConfig.from_dict({
        "job": {"operator": "fuzz", "period": PERIOD.isoformat(), "key_file": str(workdir / "pseudonym.key"),
                "allow_empty": True},  # generated inputs may hold no usable row: still a release
        "grid": {"resolution": 5, "window": "1h"},
        "privacy": {"mechanism": "laplace", "epsilon": 20.0, "max_windows": 1, "min_count": 1,
                    "max_spurious_rate": 0.5, **privacy},
    }))


@pytest.fixture(scope="module")
def plan(workdir: Path) -> pm.Plan:
    return make_plan(workdir)


def check_release(released: pm.ReleasedTable, plan: pm.Plan) -> None:
    """What every release must satisfy, whatever went in."""
    table, m = released.table, released.manifest
    assert table.columns == ["cell", "window_start", "count", "ci_low", "ci_high", "near_threshold"]
    if table.height:
        assert table["count"].min() >= max(plan.release_threshold, m["release_threshold"])
        # selection-aware: ci_low ≤ count always; ci_high may lie below a count near τ
        assert (table["ci_low"] <= table["count"]).all() and (table["ci_low"] <= table["ci_high"]).all()
        assert table["ci_low"].min() >= 0  # type: ignore[operator]
        assert table.select("cell", "window_start").is_unique().all()
        starts = table["window_start"].dt.epoch("s")
        assert starts.min() >= PERIOD_START and starts.max() < PERIOD_END  # type: ignore[operator]
        for cell in table["cell"].unique().to_list():
            assert h3.is_valid_cell(cell) and h3.get_resolution(cell) == plan.config.grid.resolution
    op = released.operator_record  # exact figures: the operator's, not the manifest's
    counted = (sum(op["rows_bad"].values()) + op["rows_out_of_scope"] + op["rows_out_of_period"]
               + op["rows_outside_boundary"] + op["rows_used"])
    assert counted == op["rows_in"]
    assert "rows_in" not in m and "persons" not in m
    assert m["cells_released"] == table.height


def release_or_refuse(plan: pm.Plan, path: Path) -> pm.ReleasedTable | None:
    """Release ``path`` under ``plan``; a PrivmobError is an acceptable outcome, nothing else is."""
    try:
        with fresh_ledger(epsilon_per_day=100):  # each input its own budget: ε 20 per release
            released = plan.release(pm.read_pings(path))
    except pm.PrivmobError as exc:
        message = str(exc)
    else:
        check_release(released, plan)
        return released
    assert message.strip(), "an error without a message"
    return None


# --- arbitrary files as pings ----------------------------------------------------------

#: Values a field of a CSV may hold: the valid, the nearly valid and the hostile.
FIELD = st.one_of(
    st.sampled_from([
        "", " ", "rawid-1", "rawid-2", "2026-11-26T08:00:00+08:00", "2026-11-26 09:30:00",
        "2026-11-26T00:00:00Z", "1795651200", "1795651200.5", "-1", "0", "1e12", "9" * 30,
        "39.9", "116.4", "90", "-90", "180", "-180", "400", "181", "NaN", "inf", "-inf", "1e999",
        "confirmed", "suspected", "close_contact", "general", '"', '""', '"a,b"', '"x\ny"',
        "\r", "\\", "#", "\x00", "\ufeff", "😷", "\u202e", "13812345678",
    ]),
    st.text(max_size=12),
)
HEADER = st.one_of(
    st.permutations(list(REQUIRED_COLUMNS)),
    st.lists(st.sampled_from([*REQUIRED_COLUMNS, "name", "", '"lat"', "ts "]), max_size=7),
)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    """A header (often the right one) and rows of hostile fields, sometimes ragged."""
    header = draw(HEADER)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 8))):
        width = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        lines.append(",".join(draw(FIELD) for _ in range(max(width, 0))))
    end = draw(st.sampled_from([newline, ""]))
    return newline.join(lines) + end


@FUZZ
@given(data=st.binary(max_size=1500))
def test_arbitrary_bytes_as_csv(plan: pm.Plan, workdir: Path, data: bytes) -> None:
    path = workdir / "bytes.csv"
    path.write_bytes(data)
    release_or_refuse(plan, path)


@FUZZ
@given(text=st.text(max_size=600))
def test_arbitrary_text_as_csv(plan: pm.Plan, workdir: Path, text: str) -> None:
    path = workdir / "text.csv"
    path.write_text("person_id,ts,lat,lng,group\n" + text, encoding="utf-8")
    release_or_refuse(plan, path)


@settings(FUZZ, max_examples=200)
@given(text=csv_texts())
def test_hostile_csv(plan: pm.Plan, workdir: Path, text: str) -> None:
    path = workdir / "hostile.csv"
    path.write_bytes(text.encode("utf-8"))
    release_or_refuse(plan, path)


@settings(FUZZ, max_examples=60)
@given(text=csv_texts(), cut=st.floats(0.0, 1.0))
def test_hostile_gzip_cut_anywhere(plan: pm.Plan, workdir: Path, text: str, cut: float) -> None:
    """A gzip stream that ends early is refused; read whole, it is the CSV it holds."""
    blob = gzip.compress(text.encode("utf-8"), mtime=0)
    path = workdir / "hostile.csv.gz"
    path.write_bytes(blob[: math.floor(len(blob) * cut)])
    release_or_refuse(plan, path)


@settings(FUZZ, max_examples=60)
@given(body=st.binary(max_size=400), tail=st.booleans())
def test_garbage_parquet(plan: pm.Plan, workdir: Path, body: bytes, tail: bool) -> None:
    """Bytes between Parquet magic numbers (or after just one) are not a table."""
    path = workdir / "garbage.parquet"
    path.write_bytes(b"PAR1" + body + (b"PAR1" if tail else b""))
    assert release_or_refuse(plan, path) is None


@settings(FUZZ, max_examples=40)
@given(cut=st.integers(0, 10_000))
def test_truncated_parquet(plan: pm.Plan, workdir: Path, cut: int) -> None:
    whole = workdir / "whole.parquet"
    if not whole.exists():
        pl.DataFrame({"person_id": [f"rawid-{i}" for i in range(50)],
                      "ts": [PERIOD_START + 60 * i for i in range(50)],
                      "lat": [39.9] * 50, "lng": [116.4] * 50, "group": ["confirmed"] * 50}
                     ).write_parquet(whole)
    data = whole.read_bytes()
    assume(cut < len(data))
    path = workdir / "cut.parquet"
    path.write_bytes(data[:cut])
    assert release_or_refuse(plan, path) is None


# --- TOML-shaped mappings as job configurations ----------------------------------------

SECTIONS: dict[str, type[Any]] = dict(config_module._SECTIONS)
FIELDS = {name: [f.name for f in dataclasses.fields(klass)] for name, klass in SECTIONS.items()}
ALL_FIELDS = sorted({f for names in FIELDS.values() for f in names})

TOML_SCALAR = st.one_of(
    st.text(max_size=16),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # TOML has nan and ±inf
    st.booleans(),
    st.dates(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))),
    st.times(),
)
TOML_VALUE = st.recursive(
    TOML_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
#: Values that sit on or next to what a field accepts.
PLAUSIBLE = st.sampled_from([
    "", " ", "~", "~nosuchuser-fuzz/x", "a\x00b", "Asia", "Asia/Shanghai", "UTC", "asia/shanghai",
    "../etc", "a" * 300, "1h", "15m", "7m", "0m", "1d", "2d", "١h", "2026-11-26", "2026-02-30", "laplace",
    "gaussian", "quarantine", "fail", "polars", "spark", "epidemic-prevention", "operator",
    0, 1, 15, 16, -1, 64, 65, 366, 367, 10_000, 10_001, 2**63 - 1,
    0.0, 1e-300, 1e-7, 1e-3, 0.5, 1.0, 20.0, 20.000001, 100.0, float("nan"), float("inf"), -1.0,
    True, False, [], ["confirmed"], ["confirmed", 1], {}, {"adcode": "110000"}, {"a": {"b": 1}},
    dt.date(2026, 11, 26), dt.datetime(2026, 11, 26, 8, 0), dt.time(8, 0),
])
VALUE = st.one_of(PLAUSIBLE, TOML_VALUE)
KEY = st.one_of(st.sampled_from(ALL_FIELDS), st.text(max_size=10))


@st.composite
def toml_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Often a valid job with a few fields changed; sometimes any TOML-shaped mapping."""
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["job"] = {"operator": "fuzz", "period": "2026-11-26"}
    for name in draw(st.lists(st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(max_size=8)), max_size=4)):
        if draw(st.integers(0, 9)) == 0:
            doc[name] = draw(TOML_VALUE)  # a section that is not a table
            continue
        section = doc.setdefault(name, {}) if isinstance(doc.get(name, {}), dict) else {}
        keys = st.sampled_from(FIELDS[name]) if name in FIELDS and draw(st.booleans()) else KEY
        for key in draw(st.lists(keys, max_size=4)):
            section[key] = draw(VALUE)
        doc[name] = section
    return doc


@settings(FUZZ, max_examples=200)
@given(doc=toml_documents())
def test_any_toml_document_gives_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    try:
        cfg = pm.JobConfig.from_dict(doc, base_dir=Path("/srv/privmob"))
    except pm.ConfigError as exc:
        message = str(exc)
        assert message.strip()  # any ConfigError is a pass, but it must say something
        return
    # What it accepted is usable: digestible and printable.
    assert len(cfg.sha256()) == 64
    assert cfg.to_dict()["job"]["operator"].strip()


@settings(FUZZ, max_examples=60)
@given(
    mechanism=st.sampled_from(["laplace", "gaussian"]),
    epsilon=st.one_of(st.floats(0.05, 20.0), st.sampled_from([0.05, 20.0])),
    delta=st.one_of(st.floats(1e-12, 1e-3, exclude_max=True), st.sampled_from([1e-12, 9.99e-4])),
    max_cells=st.integers(1, 8),
    max_windows=st.integers(1, 48),
    min_count=st.one_of(st.integers(1, 10**6), st.just(10**9)),
    spurious=st.one_of(st.floats(1e-12, 0.5), st.just(0.5)),
    window=st.sampled_from(["1m", "15m", "1h", "1d"]),
    days=st.integers(1, 366),
)
def test_every_valid_privacy_setting_plans_within_its_budget(
    mechanism: str, epsilon: float, delta: float, max_cells: int, max_windows: int, min_count: int,
    spurious: float, window: str, days: int,
) -> None:
    """Settings the config accepts calibrate (OpenDP) and explain without crashing, and the
    noise never spends more than the ε the ledger will be charged."""
    cfg = pm.JobConfig.from_dict({
        "job": {"operator": "fuzz", "period": "2026-11-26", "period_days": days},
        "grid": {"window": window},
        "privacy": {"mechanism": mechanism, "epsilon": epsilon, "delta": delta,
                    "max_cells_per_window": max_cells, "max_windows": max_windows,
                    "min_count": min_count, "max_spurious_rate": spurious},
    })
    p = bounded(lambda: pm.plan(cfg))
    assert "release plan" in bounded(p.explain)
    assert p.release_threshold >= min_count
    assert_spends_at_most(p, epsilon)


def test_a_min_count_beyond_the_mechanisms_integer_range_is_refused() -> None:
    with pytest.raises(pm.ConfigError, match="min_count"):
        pm.JobConfig.from_dict({"job": {"operator": "fuzz", "period": "2026-11-26"},
                                "privacy": {"min_count": 2**62}})


def assert_spends_at_most(p: pm.Plan, epsilon: float) -> None:
    noise = p.noise
    if noise.mechanism == "laplace":
        assert math.isclose(noise.scale * epsilon, p.sensitivity.l1, rel_tol=1e-9)
    else:
        assert noise.cost.rho is not None
        spent = rho_to_epsilon(float(noise.cost.rho), float(noise.cost.delta))
        assert spent <= epsilon * (1 + 1e-6), f"charged ε = {epsilon:g}, the noise gives ε = {spent:g}"


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3, 1e-4, 1e-5])
def test_gaussian_noise_at_small_epsilon_spends_no_more_than_charged(epsilon: float) -> None:
    """Small but valid ε (the config accepts (0, 20]): calibration must still meet it, or refuse."""
    cfg = pm.JobConfig.from_dict({
        "job": {"operator": "fuzz", "period": "2026-11-26"},
        "privacy": {"mechanism": "gaussian", "epsilon": epsilon, "delta": 1e-7, "max_windows": 1},
    })
    try:
        p = bounded(lambda: pm.plan(cfg))
    except pm.ConfigError:
        return
    assert_spends_at_most(p, epsilon)


# --- valid but odd pings ---------------------------------------------------------------

def _plain(s: str) -> bool:
    return bool(s) and s == s.strip()


ODD_IDS = st.one_of(
    st.text(min_size=1, max_size=20).filter(_plain),
    st.sampled_from(["😷", "👨‍👩‍👧‍👦", "\u202eevil\u202c", "مريض-٣", "患者甲", "x\x00y", "Ｐ００１",
                     "a" * 10_000, "🏳️‍🌈" * 500, "e\u0301", "\u00e9"]),
)
LATS = st.one_of(st.sampled_from([90.0, -90.0, 0.0, 89.999999, -89.999999, 39.9]), st.floats(-90, 90))
LNGS = st.one_of(st.sampled_from([180.0, -180.0, 0.0, 179.999999, -179.999999, 116.4]), st.floats(-180, 180))
TIMES = st.one_of(
    st.sampled_from([PERIOD_START, PERIOD_END - 1, PERIOD_START - 1, PERIOD_END, PERIOD_START + 43_200]),
    st.integers(PERIOD_START - 3600, PERIOD_END + 3600),
)


@st.composite
def odd_frames(draw: st.DrawFn) -> pl.DataFrame:
    ids = draw(st.lists(ODD_IDS, min_size=1, max_size=6, unique=True))
    places = draw(st.lists(st.tuples(LATS, LNGS), min_size=1, max_size=4))
    rows = [(draw(st.sampled_from(ids)), draw(TIMES), *draw(st.sampled_from(places)),
             draw(st.sampled_from(KEY_GROUPS))) for _ in range(draw(st.integers(1, 40)))]
    frame = pl.DataFrame(rows, schema={"person_id": pl.String, "ts": pl.Int64, "lat": pl.Float64,
                                       "lng": pl.Float64, "group": pl.String}, orient="row")
    ts_kind = draw(st.sampled_from(["epoch", "datetime", "iso-text"]))
    if ts_kind == "datetime":
        frame = frame.with_columns(pl.from_epoch("ts", "s").dt.replace_time_zone("UTC"))
    elif ts_kind == "iso-text":
        frame = frame.with_columns(
            pl.from_epoch("ts", "s").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Shanghai")
            .dt.strftime("%Y-%m-%dT%H:%M:%S%:z"))
    return frame


@settings(FUZZ, max_examples=120)
@given(frame=odd_frames())
def test_odd_but_valid_pings_release_and_keep_the_invariants(plan: pm.Plan, frame: pl.DataFrame) -> None:
    with fresh_ledger(epsilon_per_day=100):  # each example its own budget
        released = plan.release(pm.read_pings(frame))
    check_release(released, plan)
    m = released.operator_record
    t = frame["ts"]
    if t.dtype == pl.String:
        t = t.str.to_datetime("%Y-%m-%dT%H:%M:%S%:z")
    if t.dtype != pl.Int64:
        t = t.dt.epoch("s")
    in_period = frame.filter((t >= PERIOD_START) & (t < PERIOD_END))
    assert m["rows_in"] == frame.height
    assert m["rows_bad"] == {}
    assert m["rows_used"] == in_period.height
    assert m["rows_out_of_period"] == frame.height - in_period.height
    assert m["persons"] == in_period["person_id"].n_unique()
    # No odd id (non-ASCII or long; plain words may equal a group or mechanism name by
    # chance) travels into what is released, as a key or a value.
    ids = {i for i in frame["person_id"].to_list() if not i.isascii() or len(i) > 32}
    assert not ids & (_strings(dict(released.manifest)) | _strings(dict(m))), "a raw id in the manifest"
    assert not ids & set(released.table["cell"].to_list())


def _strings(value: Any) -> set[str]:
    """Every string key and value in a nested manifest."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {k for k in value if isinstance(k, str)} | {s for v in value.values() for s in _strings(v)}
    if isinstance(value, list | tuple):
        return {s for v in value for s in _strings(v)}
    return set()
