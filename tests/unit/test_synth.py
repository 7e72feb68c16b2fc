"""Behaviour of the synthetic trace generator (privmob.synth)."""

from __future__ import annotations

import datetime as dt
import gzip
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from privmob import synth

TZ = "Asia/Shanghai"
CLEAN_SCHEMA = {
    "person_id": pl.Utf8,
    "ts": pl.Datetime("us", "UTC"),
    "lat": pl.Float64,
    "lng": pl.Float64,
    "group": pl.Utf8,
}


@pytest.fixture(scope="module")
def day() -> pl.DataFrame:
    """One Beijing day, 600 persons (~260k rows); shared to keep the module fast."""
    return synth.generate(600, seed=7)


def _local_hour(df: pl.DataFrame) -> pl.Expr:
    return pl.col("ts").dt.convert_time_zone(TZ).dt.hour()


def _person_groups(df: pl.DataFrame) -> pl.DataFrame:
    return df.group_by("person_id").agg(pl.col("group").unique())


# --- determinism ----------------------------------------------------------------


def test_same_seed_gives_identical_frame() -> None:
    a = synth.generate(40, 2, seed=11, bad_fraction=0.02)
    b = synth.generate(40, 2, seed=11, bad_fraction=0.02)
    assert a.equals(b)


def test_different_seeds_differ() -> None:
    a = synth.generate(40, seed=1)
    b = synth.generate(40, seed=2)
    assert not a.equals(b)
    # not just a reshuffle: the positions themselves differ
    assert not np.allclose(np.sort(a["lat"].to_numpy())[:100], np.sort(b["lat"].to_numpy())[:100])


# --- schema and ranges ------------------------------------------------------------


def test_clean_schema(day: pl.DataFrame) -> None:
    assert dict(day.schema) == CLEAN_SCHEMA
    assert day.null_count().sum_horizontal().item() == 0
    assert day["person_id"].str.contains(r"^P\d{7}$").all()


@pytest.mark.parametrize("city", sorted(synth.CITIES))
def test_clean_coordinates_inside_city_bbox(city: str) -> None:
    df = synth.generate(150, seed=3, city=city)
    lat_min, lng_min, lat_max, lng_max = synth.CITIES[city].bbox
    assert df["lat"].is_between(lat_min, lat_max).all()
    assert df["lng"].is_between(lng_min, lng_max).all()
    assert df["lat"].is_finite().all()
    assert df["lng"].is_finite().all()


def test_timestamps_fall_in_requested_local_days() -> None:
    df = synth.generate(60, 3, seed=5, start="2026-03-01")
    local = df["ts"].dt.convert_time_zone(TZ).dt.date()
    assert set(local.unique().to_list()) == {
        dt.date(2026, 3, 1),
        dt.date(2026, 3, 2),
        dt.date(2026, 3, 3),
    }
    # every person appears on every day (nobody's phone is off all day)
    per_person_days = df.with_columns(d=local).group_by("person_id").agg(pl.col("d").n_unique())
    assert (per_person_days["d"] == 3).all()


def test_start_accepts_date_object() -> None:
    a = synth.generate(10, seed=1, start=dt.date(2026, 11, 26))
    b = synth.generate(10, seed=1, start="2026-11-26")
    assert a.equals(b)


def test_empty_persons_keep_schema() -> None:
    df = synth.generate(0)
    assert df.height == 0
    assert dict(df.schema) == CLEAN_SCHEMA


# --- population -------------------------------------------------------------------


def test_group_mix_and_out_of_scope_share() -> None:
    n = 2000
    df = synth.generate(n, seed=9, ping_interval_s=7200.0, dense_fraction=0.0)
    groups = _person_groups(df)
    assert (groups["group"].list.len() == 1).all(), "a person must keep one group"
    counts = groups.select(pl.col("group").list.first()).to_series().value_counts()
    share = {g: c / n for g, c in counts.iter_rows()}
    oos = sum(share.get(g, 0.0) for g in synth.OUT_OF_SCOPE_GROUPS)
    assert oos == pytest.approx(0.1, abs=0.01)
    in_scope = 1 - oos
    for g, s in synth.DEFAULT_GROUP_MIX.items():
        assert share[g] / in_scope == pytest.approx(s, abs=0.02), g


def test_custom_group_mix_is_normalised() -> None:
    df = synth.generate(
        400,
        seed=2,
        ping_interval_s=7200.0,
        dense_fraction=0.0,
        out_of_scope_fraction=0.0,
        group_mix={"confirmed": 3, "close_contact": 1},
    )
    counts = dict(
        _person_groups(df).select(pl.col("group").list.first()).to_series().value_counts().iter_rows()
    )
    assert counts == {"confirmed": 300, "close_contact": 100}


def test_row_count_follows_ping_interval() -> None:
    n = 500
    df = synth.generate(n, seed=4, ping_interval_s=600.0, dense_fraction=0.0)
    expected = n * synth.expected_rows_per_person_day(600.0, 0.0)
    assert df.height == pytest.approx(expected, rel=0.1)
    gaps = (
        df.sort("person_id", "ts")
        .select(pl.col("ts").diff().over("person_id").dt.total_seconds(fractional=True))
        .to_series()
        .drop_nulls()
        .to_numpy()
    )
    # Poisson process: mean gap near the interval, irregular (cv near 1), not a fixed beat
    assert gaps.mean() == pytest.approx(600.0, rel=0.25)
    cv = gaps.std() / gaps.mean()
    assert 0.7 < cv < 1.6


def test_rows_are_not_grouped_by_person(day: pl.DataFrame) -> None:
    same_as_previous = (day["person_id"] == day["person_id"].shift(1)).to_numpy()
    assert same_as_previous[1:].mean() < 0.05
    assert not day["ts"].is_sorted()


# --- behaviour --------------------------------------------------------------------


def _gaps_by_person(df: pl.DataFrame) -> pl.DataFrame:
    return (
        df.sort("person_id", "ts")
        .with_columns(gap=pl.col("ts").diff().over("person_id").dt.total_seconds(fractional=True))
        .group_by("person_id")
        .agg(
            (pl.col("gap") < 10).sum().alias("fast"),
            ((pl.col("gap") >= 1) & (pl.col("gap") <= 5)).sum().alias("logger"),
        )
    )


def test_dense_loggers_have_sub_10s_gaps() -> None:
    g = _gaps_by_person(synth.generate(100, seed=6, dense_fraction=0.1))
    dense = g.filter(pl.col("fast") >= 500)
    assert dense.height == 10  # exactly round(100 * 0.1) dense loggers
    # a 1-4 h stretch at 1-5 s gives ~1200-4800 fixes, almost all 1-5 s apart
    assert (dense["logger"] >= 900).all()
    g0 = _gaps_by_person(synth.generate(100, seed=6, dense_fraction=0.0))
    assert (g0["fast"] < 50).all()  # ordinary phones only rarely report within 10 s


def test_night_at_home_day_at_business_districts(day: pl.DataFrame) -> None:
    city = synth.CITIES["beijing"]
    centres = np.array([(lat, lng) for lat, lng, _ in city.business])
    coslat = math.cos(math.radians(city.center[0]))

    def near_business(frame: pl.DataFrame) -> float:
        ll = frame.select("lat", "lng").to_numpy()
        km = (
            np.hypot(
                ll[:, None, 0] - centres[None, :, 0],
                (ll[:, None, 1] - centres[None, :, 1]) * coslat,
            )
            * 111.32
        )
        return float((km.min(axis=1) < 2.0).mean())

    h = day.with_columns(h=_local_hour(day))
    night = h.filter(pl.col("h").is_between(1, 4))
    noon = h.filter(pl.col("h").is_between(11, 15))
    assert near_business(noon) > near_business(night) + 0.2

    # at night people stay put: per-person spread is GPS jitter (10-30 m), not movement
    spread_m = night.group_by("person_id").agg((pl.col("lat").std() * 111_320).alias("sd_m"), pl.len())
    sd = spread_m.filter(pl.col("len") >= 10)["sd_m"].to_numpy()
    assert 8 < np.median(sd) < 35
    assert np.quantile(sd, 0.95) < 60


def test_commutes_have_intermediate_fixes(day: pl.DataFrame) -> None:
    # moving persons in the morning rush: fixes far from both their 3am and their
    # noon position exist for many persons
    h = day.with_columns(h=_local_hour(day))
    home = (
        h.filter(pl.col("h") == 3)
        .group_by("person_id")
        .agg(pl.col("lat").median().alias("hl"), pl.col("lng").median().alias("hg"))
    )
    work = (
        h.filter(pl.col("h") == 12)
        .group_by("person_id")
        .agg(pl.col("lat").median().alias("wl"), pl.col("lng").median().alias("wg"))
    )
    rush = (
        h.filter(pl.col("h").is_between(6, 10))
        .join(home, on="person_id")
        .join(work, on="person_id")
        .with_columns(
            d_home=((pl.col("lat") - pl.col("hl")) ** 2 + (pl.col("lng") - pl.col("hg")) ** 2).sqrt(),
            d_work=((pl.col("lat") - pl.col("wl")) ** 2 + (pl.col("lng") - pl.col("wg")) ** 2).sqrt(),
        )
        .filter((pl.col("d_home") > 0.01) & (pl.col("d_work") > 0.01))
    )
    assert rush["person_id"].n_unique() > 100


# --- malformed rows ---------------------------------------------------------------


def test_bad_fraction_injects_every_kind() -> None:
    df = synth.generate(30, seed=8, ping_interval_s=600.0, dense_fraction=0.0, bad_fraction=0.05)
    assert all(dtype == pl.Utf8 for dtype in df.schema.values())
    lat, lng, pid, ts = df["lat"], df["lng"], df["person_id"], df["ts"]
    assert (lat == "400.17").any()
    assert (lng == "181").any()
    assert ((lat == "abc") | (lng == "abc")).any()
    assert (pid == "").any()
    assert pid.is_null().any()
    assert (ts == "not-a-time").any()
    assert ((lat == "NaN") & (lng == "NaN")).any()

    bad = (
        (lat == "400.17")
        | (lng == "181")
        | (lat == "abc")
        | (lng == "abc")
        | (lat == "NaN")
        | pid.is_null()
        | (pid == "")
        | (ts == "not-a-time")
    )
    assert bad.sum() == round(0.05 * df.height)

    good = df.filter(~bad)
    iso = good["ts"].str.contains(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+08:00$")
    epoch = good["ts"].str.contains(r"^\d{10}$")
    assert (iso | epoch).all()
    assert 0.1 < epoch.to_numpy().mean() < 0.4
    assert good["lat"].cast(pl.Float64).is_between(39, 42).all()
    parsed = good.filter(iso)["ts"].str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z")
    local = parsed.dt.convert_time_zone(TZ).dt.date()
    assert (local == dt.date(2026, 11, 26)).all()


def test_no_bad_fraction_keeps_proper_dtypes() -> None:
    assert dict(synth.generate(5, seed=1, bad_fraction=0.0).schema) == CLEAN_SCHEMA


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"city": "atlantis"},
        {"dense_fraction": 1.5},
        {"bad_fraction": -0.1},
        {"ping_interval_s": 0.0},
        {"group_mix": {"confirmed": -1.0}},
        {"start": "26/11/2026"},
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        synth.generate(3, **kwargs)  # type: ignore[arg-type]


def test_invalid_person_and_day_counts_raise() -> None:
    with pytest.raises(ValueError, match="persons"):
        synth.generate(-1)
    with pytest.raises(ValueError, match="days"):
        synth.generate(3, 0)


# --- writing --------------------------------------------------------------------------


def test_write_round_trips(tmp_path: Path) -> None:
    df = synth.generate(5, seed=1, ping_interval_s=1800.0, dense_fraction=0.0)
    p = synth.write(df, tmp_path / "x.parquet")
    assert pl.read_parquet(p).equals(df)

    c = synth.write(df, tmp_path / "x.csv")
    text = pl.read_csv(c, infer_schema=False)
    assert text["ts"].str.ends_with("+08:00").all()
    back = text["ts"].str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z").dt.convert_time_zone("UTC")
    assert back.equals(df["ts"], check_names=False)

    g1 = synth.write(df, tmp_path / "a.csv.gz")
    g2 = synth.write(df, tmp_path / "b.csv.gz")
    assert g1.read_bytes() == g2.read_bytes()  # zero mtime: reproducible bytes
    assert gzip.decompress(g1.read_bytes()) == c.read_bytes()

    with pytest.raises(ValueError, match="suffix"):
        synth.write(df, tmp_path / "x.json")


def test_generate_to_parquet_chunks_have_distinct_persons(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    per_day = synth.expected_rows_per_person_day(3600.0, 0.0)
    rows = synth.generate_to_parquet(
        path, 250, 1, seed=3, rows_per_chunk=200, ping_interval_s=3600.0, dense_fraction=0.0
    )
    f = pq.ParquetFile(path)
    assert f.metadata.num_rows == rows
    assert f.num_row_groups == math.ceil(250 / int(200 / per_day))
    assert rows == pytest.approx(250 * per_day, rel=0.1)

    owners: dict[str, int] = {}
    for i in range(f.num_row_groups):
        ids = f.read_row_group(i, columns=["person_id"]).column("person_id").to_pylist()
        for pid in set(ids):
            assert owners.setdefault(pid, i) == i, f"{pid} in row groups {owners[pid]} and {i}"
    assert len(owners) == 250
    df = pl.read_parquet(path)
    assert dict(df.schema) == CLEAN_SCHEMA
    assert df["person_id"].str.len_chars().n_unique() == 1  # one id width across chunks

    again = tmp_path / "again.parquet"
    synth.generate_to_parquet(
        again, 250, 1, seed=3, rows_per_chunk=200, ping_interval_s=3600.0, dense_fraction=0.0
    )
    assert pl.read_parquet(again).equals(df)


def test_chunked_shares_add_up(tmp_path: Path) -> None:
    # chunks of ~11 persons: rounding per chunk must not inflate 5% dense / 10% out of scope
    path = tmp_path / "small_chunks.parquet"
    synth.generate_to_parquet(path, 1100, 1, seed=1, rows_per_chunk=2000, ping_interval_s=1800.0)
    per_person = (
        pl.read_parquet(path)
        .sort("person_id", "ts")
        .with_columns(gap=pl.col("ts").diff().over("person_id").dt.total_seconds(fractional=True))
        .group_by("person_id")
        .agg((pl.col("gap") < 10).sum().alias("fast"), pl.col("group").first())
    )
    assert per_person.height == 1100
    assert (per_person["fast"] >= 500).sum() == pytest.approx(55, abs=15)
    oos = per_person["group"].is_in(list(synth.OUT_OF_SCOPE_GROUPS)).sum()
    assert oos == pytest.approx(110, abs=20)
