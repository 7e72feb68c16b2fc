"""Stay and trip detection: hand-made traces, a plain reference loop, synthetic and real data."""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterable

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privmob import synth
from privmob.errors import ConfigError, SchemaError
from privmob.movement.stays import (
    EARTH_RADIUS_M,
    STAY_SCHEMA,
    TRIP_SCHEMA,
    StayParams,
    _stays,
    person_trips,
    stays,
    trips,
)
from tests.conftest import shared_data

FIX_SCHEMA = {"pid": pl.Int64, "t": pl.Int64, "lat": pl.Float64, "lng": pl.Float64}
HOME = (39.9900, 116.3200)
WORK = (39.9080, 116.4600)  # ~14.5 km from HOME
M_PER_DEG = 111_195.0
T0 = 1_795_000_000  # an epoch second (late 2026); any value works
Fix = tuple[int, int, float, float]


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, l1, p2, l2 = (math.radians(v) for v in (*a, *b))
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def frame(rows: Iterable[Fix]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=FIX_SCHEMA, orient="row")


def stay_at(
    rng: np.random.Generator, pid: int, place: tuple[float, float], t0: int, t1: int, every: int,
    jitter_m: float = 30.0,
) -> list[Fix]:
    """Fixes every ``every`` s in [t0, t1), each within ±jitter_m (north and east) of place."""
    ts = np.arange(t0, t1, every)
    d = rng.uniform(-jitter_m, jitter_m, (ts.size, 2)) / M_PER_DEG
    coslat = math.cos(math.radians(place[0]))
    return [(pid, int(t), place[0] + dy, place[1] + dx / coslat) for t, (dy, dx) in zip(ts, d, strict=True)]


def move(pid: int, a: tuple[float, float], b: tuple[float, float], t0: int, t1: int, every: int) -> list[Fix]:
    """Fixes on the straight line from a to b (exclusive of both ends) every ``every`` s."""
    ts = np.arange(t0 + every, t1, every)
    w = (ts - t0) / (t1 - t0)
    return [
        (pid, int(t), a[0] + (b[0] - a[0]) * x, a[1] + (b[1] - a[1]) * x) for t, x in zip(ts, w, strict=True)
    ]


def commute_day(pid: int = 1, every: int = 60, seed: int = 0) -> pl.DataFrame:
    """Home 00:00–08:00, drive 30 min, work 08:30–16:30, drive 30 min, home 17:00–23:59."""
    rng = np.random.default_rng(seed)
    h = 3600
    rows = (
        stay_at(rng, pid, HOME, T0, T0 + 8 * h, every)
        + move(pid, HOME, WORK, T0 + 8 * h - every, T0 + 8 * h + 1800, 30)
        + stay_at(rng, pid, WORK, T0 + 8 * h + 1800, T0 + 16 * h + 1800, every)
        + move(pid, WORK, HOME, T0 + 16 * h + 1800 - every, T0 + 17 * h, 30)
        + stay_at(rng, pid, HOME, T0 + 17 * h, T0 + 24 * h, every)
    )
    return frame(rows)


# --------------------------------------------------------------------------------------
# Hand-made traces


def test_commute_day_gives_three_stays_and_two_trips() -> None:
    s = stays(commute_day())
    assert s.schema == pl.Schema(STAY_SCHEMA)
    assert s["stay_id"].to_list() == [0, 1, 2]
    h = 3600
    # Each stay starts at its first fix and ends at its last one (fixes every 60 s).
    assert s["start_t"].to_list() == [T0, T0 + 8 * h + 1800, T0 + 17 * h]
    assert s["end_t"].to_list() == [T0 + 8 * h - 60, T0 + 16 * h + 1800 - 60, T0 + 24 * h - 60]
    for row, place in zip(s.iter_rows(named=True), (HOME, WORK, HOME), strict=True):
        assert metres((row["lat"], row["lng"]), place) < 5  # ±30 m jitter averages out
    assert s["n_fixes"].to_list() == [480, 480, 420]

    tr = trips(s)
    assert tr.schema == pl.Schema(TRIP_SCHEMA)
    assert tr["trip_id"].to_list() == [0, 1]
    assert tr["depart_t"].to_list() == s["end_t"].to_list()[:2]
    assert tr["arrive_t"].to_list() == s["start_t"].to_list()[1:]
    first = tr.row(0, named=True)
    assert metres((first["origin_lat"], first["origin_lng"]), HOME) < 5
    assert metres((first["dest_lat"], first["dest_lng"]), WORK) < 5


def test_dense_jitter_within_the_radius_does_not_split_a_stay() -> None:
    # Eight hours at 1 Hz (28,800 fixes) with ±30 m jitter: one stay, whatever the anchor.
    rng = np.random.default_rng(3)
    s = stays(frame(stay_at(rng, 5, HOME, T0, T0 + 8 * 3600, 1)))
    assert s.height == 1
    assert s.row(0, named=True)["n_fixes"] == 8 * 3600
    assert metres((s["lat"][0], s["lng"][0]), HOME) < 2


def test_outliers_and_an_off_centre_anchor_do_not_split_a_stay() -> None:
    rng = np.random.default_rng(4)
    # Arrive on foot (1 fix/s) from 600 m north, then stay 4 h with ±30 m jitter and a
    # multipath outlier (400 m off) every hour.
    north = (HOME[0] + 600 / M_PER_DEG, HOME[1])
    rows = move(7, north, HOME, T0 - 430, T0, 1) + stay_at(rng, 7, HOME, T0, T0 + 4 * 3600, 1)
    rows = [
        (p, t, lat + (400 / M_PER_DEG if t % 3600 == 1800 else 0.0), lng) for p, t, lat, lng in rows
    ]
    fixes = frame(rows)
    plain = _stays(fixes, StayParams(), merge=False)  # the textbook: split by each outlier
    assert plain.height >= 4
    s = stays(fixes)
    assert s.height == 1
    assert metres((s["lat"][0], s["lng"][0]), HOME) < 10
    assert s["end_t"][0] == T0 + 4 * 3600 - 1
    assert s["start_t"][0] <= T0  # the stay begins on the approach, within the radius


def test_a_walk_without_a_pause_is_no_stay() -> None:
    # Two hours on foot (1.4 m/s, a fix every second) heading east, with ±10 m jitter.
    rng = np.random.default_rng(5)
    ts = np.arange(0, 7200)
    east = 1.4 * ts / (M_PER_DEG * math.cos(math.radians(HOME[0])))
    noise = rng.uniform(-10, 10, (ts.size, 2)) / M_PER_DEG
    walk = frame(
        (9, T0 + int(t), HOME[0] + n[0], HOME[1] + e + n[1]) for t, e, n in zip(ts, east, noise, strict=True)
    )
    assert stays(walk).is_empty()
    # Slower than radius / min_duration (200 m / 10 min = 0.33 m/s) is a stay by definition.
    crawl = walk.with_columns(t=T0 + (pl.col("t") - T0) * 5)
    assert not stays(crawl).is_empty()


def test_a_gap_longer_than_max_gap_splits_a_stay() -> None:
    rng = np.random.default_rng(6)
    rows = stay_at(rng, 2, HOME, T0, T0 + 3600, 60) + stay_at(rng, 2, HOME, T0 + 3 * 3600, T0 + 4 * 3600, 60)
    fixes = frame(rows)  # 2 h without data between two hours at home
    s = stays(fixes, StayParams(max_gap_s=3600))
    assert s["start_t"].to_list() == [T0, T0 + 3 * 3600]
    assert s["end_t"].to_list() == [T0 + 3600 - 60, T0 + 4 * 3600 - 60]
    assert trips(s).height == 1
    # A longer allowed gap bridges it: one stay from the first fix to the last.
    bridged = stays(fixes, StayParams(max_gap_s=3 * 3600))
    assert bridged.select("start_t", "end_t").rows() == [(T0, T0 + 4 * 3600 - 60)]


def test_short_visits_single_fixes_and_empty_input() -> None:
    rng = np.random.default_rng(7)
    short = stay_at(rng, 3, WORK, T0, T0 + 540, 60)  # 9 minutes: first to last fix 480 s
    exact = stay_at(rng, 4, WORK, T0, T0 + 601, 60)  # first to last fix exactly 600 s
    single = [(8, T0, HOME[0], HOME[1])]
    s = stays(frame(short + exact + single))
    assert s["pid"].to_list() == [4]
    assert stays(frame(single)).is_empty()
    empty = stays(frame([]))
    assert empty.is_empty() and empty.schema == pl.Schema(STAY_SCHEMA)
    assert trips(empty).is_empty() and trips(empty).schema == pl.Schema(TRIP_SCHEMA)


def test_duplicates_and_same_second_fixes() -> None:
    rng = np.random.default_rng(8)
    rows = stay_at(rng, 1, HOME, T0, T0 + 1800, 60)
    s = stays(frame(rows + rows[:5]))  # exact duplicates are dropped
    assert s["n_fixes"].to_list() == [30]
    # Two fixes in the same second, far apart: an order is fixed by position, not input.
    odd = [*rows, (1, T0 + 900, HOME[0] + 0.01, HOME[1])]
    a = stays(frame(odd))
    b = stays(frame(list(reversed(odd))))
    assert a.equals(b)


def test_stay_across_the_antimeridian() -> None:
    rng = np.random.default_rng(9)
    rows = [(1, t, lat, ((lng + 180) % 360) - 180) for _, t, lat, lng in
            stay_at(rng, 1, (65.0, 179.9995), T0, T0 + 3600, 30)]
    s = stays(frame(rows))
    assert s.height == 1 and s["n_fixes"][0] == 120
    assert metres((s["lat"][0], s["lng"][0]), (65.0, 179.9995)) < 5


def test_lazy_input_other_columns_and_int32() -> None:
    day = commute_day()
    lazy = day.lazy().with_columns(pl.col("t").cast(pl.Int32, strict=False).cast(pl.Int64), group=pl.lit("x"))
    assert stays(lazy).equals(stays(day))
    small = day.with_columns(pl.col("pid").cast(pl.Int32), pl.col("lat").cast(pl.Float32))
    assert stays(small).height == 3


def test_bad_params_and_inputs_are_refused() -> None:
    for bad in ({"radius_m": 0}, {"radius_m": float("nan")}, {"radius_m": True}, {"min_duration_s": 0},
                {"min_duration_s": 1.5}, {"max_gap_s": -1}, {"radius_m": 2e7}):
        with pytest.raises(ConfigError):
            StayParams(**bad)  # type: ignore[arg-type]
    day = commute_day()
    with pytest.raises(SchemaError, match="lack"):
        stays(day.drop("lng"))
    with pytest.raises(SchemaError, match="epoch"):
        stays(day.with_columns(pl.from_epoch("t")))
    with pytest.raises(SchemaError, match="null"):
        stays(day.with_columns(lat=pl.when(pl.col("t") == T0).then(None).otherwise(pl.col("lat"))))
    with pytest.raises(SchemaError, match="NaN"):
        stays(day.with_columns(lat=pl.when(pl.col("t") == T0).then(float("nan")).otherwise(pl.col("lat"))))
    with pytest.raises(SchemaError, match="stays"):
        trips(day)


# --------------------------------------------------------------------------------------
# Agreement with a plain per-person Python loop


def _hav(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, l1, p2, l2 = (math.radians(v) for v in (*a, *b))
    return math.sin((p2 - p1) * 0.5) ** 2 + math.cos(p1) * math.cos(p2) * math.sin((l2 - l1) * 0.5) ** 2


def _centroid(points: list[Fix]) -> tuple[float, float]:
    x = sum(math.cos(math.radians(p[2])) * math.cos(math.radians(p[3])) for p in points)
    y = sum(math.cos(math.radians(p[2])) * math.sin(math.radians(p[3])) for p in points)
    z = sum(math.sin(math.radians(p[2])) for p in points)
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def reference_stays(fixes: pl.DataFrame, p: StayParams, *, merge: bool = True) -> list[tuple[object, ...]]:
    """The definition in privmob.movement.stays' docstring, as a plain loop per person and fix."""
    thr = math.sin(p.radius_m / EARTH_RADIUS_M / 2) ** 2
    by_person: dict[int, list[Fix]] = {}
    for row in sorted(set(fixes.select("pid", "t", "lat", "lng").iter_rows())):
        by_person.setdefault(row[0], []).append(row)
    out: list[tuple[object, ...]] = []
    for pid, fx in sorted(by_person.items()):
        segments: list[list[Fix]] = [[fx[0]]]
        for prev, cur in itertools.pairwise(fx):
            if cur[1] - prev[1] > p.max_gap_s:
                segments.append([])
            segments[-1].append(cur)
        found: list[tuple[int, list[Fix]]] = []  # (segment, fixes) of each stay point
        for seg_no, seg in enumerate(segments):
            i = 0
            while i < len(seg):
                j = i + 1
                while j < len(seg) and _hav(seg[i][2:], seg[j][2:]) <= thr:
                    j += 1
                if seg[j - 1][1] - seg[i][1] >= p.min_duration_s:
                    found.append((seg_no, seg[i:j]))
                    i = j
                else:
                    i += 1
        groups: list[list[tuple[int, list[Fix]]]] = []
        for item in found:
            if merge and groups:
                seg_no, last = groups[-1][-1]
                if (seg_no == item[0] and item[1][0][1] - last[-1][1] < p.min_duration_s
                        and _hav(_centroid(last), _centroid(item[1])) <= thr):
                    groups[-1].append(item)
                    continue
            groups.append([item])
        for stay_id, g in enumerate(groups):
            pts = [f for _, part in g for f in part]
            lat, lng = _centroid(pts)
            out.append((pid, stay_id, g[0][1][0][1], g[-1][1][-1][1], lat, lng, len(pts)))
    return out


def random_traces(rng: np.random.Generator, persons: int) -> pl.DataFrame:
    """Stays (jitter 0–120 m, any sampling from 1 s to over an hour) and moves, mixed."""
    rows: list[Fix] = []
    for pid in range(persons):
        t = int(rng.integers(0, 1000))
        lat, lng = 39.9 + rng.normal(0, 0.01), 116.4 + rng.normal(0, 0.01)
        for _ in range(int(rng.integers(1, 6))):
            if rng.random() < 0.5:
                end, jit = t + int(rng.integers(0, 2400)), rng.uniform(0, 120) / M_PER_DEG
                while t < end:
                    rows.append((pid, t, lat + rng.normal(0, jit), lng + rng.normal(0, jit)))
                    t += int(rng.choice([1, 5, 30, 120, 400, 4000], p=[0.3, 0.2, 0.2, 0.15, 0.1, 0.05]))
            else:
                step, ang = rng.uniform(5, 300) / M_PER_DEG, rng.uniform(0, 2 * math.pi)
                for _ in range(int(rng.integers(1, 40))):
                    t += int(rng.integers(1, 60))
                    lat, lng = lat + step * math.sin(ang), lng + step * math.cos(ang) / 0.77
                    rows.append((pid, t, lat, lng))
        if rows and rng.random() < 0.3:
            rows.append(rows[-1])  # an exact duplicate
        if rows and rng.random() < 0.3:
            last = rows[-1]
            rows.append((last[0], last[1], last[2] + 0.003, last[3]))  # same second, elsewhere
    return frame(rows)


def random_params(rng: np.random.Generator) -> StayParams:
    return StayParams(
        radius_m=float(rng.choice([50.0, 100.0, 200.0, 300.0])),
        min_duration_s=int(rng.choice([60, 300, 600, 900])),
        max_gap_s=int(rng.choice([60, 600, 3600])),
    )


@pytest.mark.parametrize("merge", [False, True], ids=["textbook", "merged"])
def test_agrees_exactly_with_the_reference_loop(merge: bool) -> None:
    total = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        fixes = random_traces(rng, int(rng.integers(1, 6)))
        params = random_params(rng)
        got = _stays(fixes.sample(fraction=1.0, shuffle=True, seed=seed), params, merge=merge)
        want = reference_stays(fixes, params, merge=merge)
        assert got.select("pid", "stay_id", "start_t", "end_t", "n_fixes").rows() == [
            (r[0], r[1], r[2], r[3], r[6]) for r in want
        ], f"seed {seed}, {params}"
        for row, ref in zip(got.iter_rows(), want, strict=True):  # centroids: float sums
            assert row[4] == pytest.approx(ref[4], abs=1e-9) and row[5] == pytest.approx(ref[5], abs=1e-9)
        total += len(want)
    assert total > 200  # the traces exercise the stays, not just empty answers


# --------------------------------------------------------------------------------------
# Properties

FIXES = st.lists(
    st.tuples(
        st.integers(0, 3), st.integers(0, 20_000), st.floats(39.900, 39.906), st.floats(116.400, 116.408)
    ),
    min_size=0, max_size=150,
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(FIXES, st.randoms(use_true_random=False))
def test_row_order_does_not_matter(rows: list[Fix], rnd: object) -> None:
    params = StayParams(radius_m=300, min_duration_s=300, max_gap_s=2000)
    fixes = frame(rows)
    shuffled = frame(rnd.sample(rows, len(rows)))  # type: ignore[attr-defined]
    a, b = stays(fixes, params), stays(shuffled, params)
    assert a.equals(b)
    assert trips(a).equals(trips(b))


@FAST
@given(FIXES)
def test_stays_and_trips_invariants(rows: list[Fix]) -> None:
    p = StayParams(radius_m=300, min_duration_s=300, max_gap_s=2000)
    s = stays(frame(rows), p)
    assert (s["end_t"] - s["start_t"] >= p.min_duration_s).all()
    assert (s["n_fixes"] >= 2).all()
    per = s.group_by("pid").agg(pl.len(), pl.col("stay_id").max(), (pl.col("start_t").diff() > 0).all())
    assert (per["stay_id"] == per["len"] - 1).all() and per["start_t"].all()
    # Stays of a person do not overlap (two fixes may share a second, hence >=).
    nxt = s.with_columns(nxt=pl.col("start_t").shift(-1).over("pid")).drop_nulls("nxt")
    assert (nxt["nxt"] >= nxt["end_t"]).all()
    tr = trips(s)
    assert tr.height == s.height - s["pid"].n_unique() if s.height else tr.is_empty()
    assert (tr["arrive_t"] >= tr["depart_t"]).all()


# --------------------------------------------------------------------------------------
# Whole persons at a time: what lets an engine find trips where the fixes are


def test_trips_of_chunks_of_whole_persons_are_the_trips_of_all() -> None:
    """Any split into chunks of whole persons, each person renumbered within its chunk
    (as the Spark engine does: stays need integer ids), gives exactly — centroids to the
    bit — the trips of all fixes at once, so an engine may run the step per partition."""
    checked = 0
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        fixes = random_traces(rng, int(rng.integers(2, 12)))
        params = random_params(rng)
        whole = person_trips(fixes.sample(fraction=1.0, shuffle=True, seed=seed), params)
        persons = fixes["pid"].unique().to_numpy()
        chunk_of = dict(zip(persons.tolist(), rng.integers(0, 3, persons.size).tolist(), strict=True))
        parts = []
        for chunk in set(chunk_of.values()):
            rows = fixes.filter(pl.col("pid").is_in([p for p, c in chunk_of.items() if c == chunk]))
            coded = rows.with_columns(pl.col("pid").alias("person"),
                                      (pl.col("pid").rank("dense").cast(pl.Int64) * 7 - 100).alias("pid"))
            codes = coded.select("pid", "person").unique()
            found = person_trips(coded, params).join(codes, on="pid").drop("pid")
            parts.append(found.rename({"person": "pid"}).select(list(TRIP_SCHEMA)))
        split = pl.concat(parts).sort("pid", "trip_id")
        assert split.equals(whole), f"seed {seed}, {params}"
        checked += whole.height
    assert checked > 100  # the traces make trips, not just empty answers


def test_person_trips_is_trips_of_stays_with_the_jobs_parameters() -> None:
    from privmob.config import FlowsConfig

    fixes = commute_day()
    assert person_trips(fixes).equals(trips(stays(fixes)))
    fc = FlowsConfig(units="cells", stay_radius_m=150.0, stay_min_duration="20m", stay_max_gap="2h")
    assert StayParams.of(fc) == StayParams(radius_m=150.0, min_duration_s=1200, max_gap_s=7200)
    assert StayParams.of(None) == StayParams()
    assert person_trips(fixes, StayParams.of(fc)).equals(trips(stays(fixes, StayParams.of(fc))))
    assert person_trips(fixes.clear()).schema == pl.Schema(TRIP_SCHEMA)


# --------------------------------------------------------------------------------------
# Synthetic city and real GeoLife traces


def synth_fixes(persons: int, days: int, seed: int) -> pl.DataFrame:
    df = synth.generate(persons, days, seed=seed)
    return df.select(
        pl.col("person_id").str.slice(1).cast(pl.Int64).alias("pid"),
        pl.col("ts").dt.epoch("s").alias("t"),
        "lat",
        "lng",
    )


def test_synthetic_city_gives_few_stays_per_person_day() -> None:
    s = stays(synth_fixes(200, 1, seed=1))
    per = s.group_by("pid").len()
    assert per.height >= 0.95 * 200
    assert 2 <= per["len"].median() <= 6  # type: ignore[operator]
    tr = trips(s)
    assert tr.group_by("pid").len().join(per, on="pid", how="right").select(
        (pl.col("len").fill_null(0) == pl.col("len_right") - 1).all()
    ).item()


def test_synthetic_persons_sleep_in_the_same_place_every_night() -> None:
    """Synth internals (homes) are not exposed; home shows as the stay that covers 03:00
    local time, which must be the same place (within the radius) night after night."""
    s = stays(synth_fixes(200, 3, seed=1))
    midnight = int(dt.datetime(2026, 11, 26, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp())

    def covering(ts: int) -> pl.DataFrame:
        return s.filter((pl.col("start_t") <= ts) & (pl.col("end_t") >= ts)).select("pid", "lat", "lng")

    night1 = covering(midnight + 86_400 + 3 * 3600)
    night2 = covering(midnight + 2 * 86_400 + 3 * 3600)
    both = night1.join(night2, on="pid")
    same = [metres((r[1], r[2]), (r[3], r[4])) < 200 for r in both.iter_rows()]
    assert both.height > 0.8 * 200 and sum(same) > 0.95 * both.height
    # By day (11:00) most persons stay somewhere else than at night.
    day = covering(midnight + 86_400 + 11 * 3600).join(night1, on="pid")
    away = [metres((r[1], r[2]), (r[3], r[4])) > 500 for r in day.iter_rows()]
    assert day.height > 0.8 * 200 and sum(away) > 0.6 * day.height


@pytest.mark.shared_data
def test_geolife_stays_and_trips_are_plausible() -> None:
    path = shared_data("geolife", "traces.csv.gz")
    fixes = (
        pl.scan_csv(path, schema_overrides={"person_id": pl.String, "ts": pl.String})
        .select(
            pl.col("person_id").cast(pl.Int64).alias("pid"),
            pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC").dt.epoch("s").alias("t"),
            "lat",
            "lng",
        )
        .collect()
    )
    s = stays(fixes)
    tr = trips(s)
    minutes = ((s["end_t"] - s["start_t"]) / 60).median()
    local_day = (pl.col("t") + 8 * 3600) // 86_400  # Beijing
    person_days = fixes.select(pl.struct(pl.col("pid"), local_day).n_unique()).item()
    print(f"\nGeoLife: {fixes.height:,} fixes, {s.height:,} stays, {tr.height:,} trips, "
          f"median stay {minutes:.1f} min, {s.height / person_days:.2f} stays per person-day with data")
    assert 20 <= s["pid"].n_unique() <= 28
    assert 1_000 <= s.height <= 20_000
    assert tr.height == s.height - s["pid"].n_unique()
    assert 10 <= minutes <= 240  # type: ignore[operator]
    # Dense loggers: a stay holds many fixes, and stays are a small fraction of rows.
    assert s["n_fixes"].median() >= 20  # type: ignore[operator]
    assert 0.3 <= s.height / person_days <= 6
