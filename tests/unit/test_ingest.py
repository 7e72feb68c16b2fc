"""Behaviour of reading and validating raw pings (privmob.stages.ingest)."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from privmob.errors import InputError, SchemaError
from privmob.stages.ingest import BAD_REASONS, REQUIRED_COLUMNS, Pings, read_pings, require_columns, validate
from tests.conftest import PERIOD_START, SAMPLES, pings

TZ = "Asia/Shanghai"
#: 2026-11-26 08:00 in Shanghai == 00:00 UTC.
EIGHT_AM = PERIOD_START + 8 * 3600
CSV_TEXT = (
    "person_id,ts,lat,lng,group,name\n"
    "a,2026-11-26T08:00:00+08:00,39.9,116.4,confirmed,Zhang San\n"
    "b,1795651200,39.8,116.3,suspected,Li Si\n"
)


def _frame() -> pl.DataFrame:
    return pings([
        ("a", EIGHT_AM, 39.9, 116.4, "confirmed"),
        ("b", EIGHT_AM + 60, 39.8, 116.3, "suspected"),
    ])


def _validated(df: pl.DataFrame, tz: str = TZ, **kw: Any) -> pl.DataFrame:
    return validate(df.lazy(), dict(df.schema), tz, **kw).collect()


def _one(person_id: Any = "p1", ts: Any = EIGHT_AM, lat: Any = 39.9, lng: Any = 116.4,
         group: Any = "confirmed", tz: str = TZ) -> dict[str, Any]:
    """Validate one row (columns typed from the Python values) and return it as a dict."""
    out = _validated(pings([(person_id, ts, lat, lng, group)]), tz)
    assert out.height == 1
    return out.row(0, named=True)


def _texts(col: str, values: list[str | None], **fixed: str) -> pl.DataFrame:
    """A frame of text columns (as a CSV would give), varying one column."""
    base = {"person_id": "p1", "ts": "2026-11-26T08:00:00+08:00", "lat": "39.9", "lng": "116.4",
            "group": "confirmed", **fixed}
    data: dict[str, list[str | None]] = {c: [base[c]] * len(values) for c in REQUIRED_COLUMNS}
    data[col] = values
    return pl.DataFrame(data, schema=dict.fromkeys(REQUIRED_COLUMNS, pl.String))


# --- read_pings ------------------------------------------------------------------------


def test_read_pings_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    _frame().write_parquet(path)
    p = read_pings(path)
    assert p.kind == "parquet"
    assert p.path == path
    assert list(p.schema()) == list(REQUIRED_COLUMNS)
    assert p.scan().collect().equals(_frame())


def test_read_pings_from_parquet_with_another_suffix(tmp_path: Path) -> None:
    path = tmp_path / "p.data"
    _frame().write_parquet(path)
    assert read_pings(str(path)).kind == "parquet"


def test_read_pings_from_csv_reads_every_column_as_text(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(CSV_TEXT, encoding="utf-8")
    p = read_pings(path)
    assert p.kind == "csv"
    schema = p.schema()
    assert set(schema.values()) == {pl.String}
    out = validate(p.scan(), schema, TZ).collect()
    assert out["t"].to_list() == [EIGHT_AM, EIGHT_AM]  # same instant, two notations
    assert out["reason"].to_list() == [None, None]
    assert "name" not in out.columns  # extra columns never enter the validated frame


def test_read_pings_from_csv_gz(tmp_path: Path) -> None:
    path = tmp_path / "p.csv.gz"
    path.write_bytes(gzip.compress(CSV_TEXT.encode()))
    p = read_pings(path)
    assert p.kind == "csv"
    frame = p.scan().collect()
    assert frame["person_id"].to_list() == ["a", "b"]
    assert frame["lat"].to_list() == ["39.9", "39.8"]


def test_read_pings_sample_dirty_csv_gz_has_every_kind_of_bad_row() -> None:
    p = read_pings(SAMPLES / "beijing_pings_dirty.csv.gz")
    out = validate(p.scan(), p.schema(), TZ).collect()
    reasons = set(out["reason"].drop_nulls())
    assert reasons <= set(BAD_REASONS)
    assert out["reason"].null_count() > 0.5 * out.height


def test_read_pings_from_polars_frame() -> None:
    df = _frame()
    p = read_pings(df)
    assert p.kind == "frame"
    assert p.path is None
    assert p.scan().collect().equals(df)


def test_read_pings_from_lazyframe() -> None:
    p = read_pings(_frame().lazy())
    assert p.kind == "frame"
    assert p.scan().collect().equals(_frame())


def test_read_pings_from_pandas() -> None:
    import pandas as pd
    pdf = pd.DataFrame({"person_id": ["a", "b"], "ts": [EIGHT_AM, EIGHT_AM + 1],
                        "lat": [39.9, 39.8], "lng": [116.4, 116.3],
                        "group": ["confirmed", "suspected"]})
    p = read_pings(pdf)
    assert p.kind == "frame"
    got = p.scan().collect()
    assert got["person_id"].to_list() == ["a", "b"]
    assert got["ts"].to_list() == [EIGHT_AM, EIGHT_AM + 1]
    out = _validated(got)
    assert out["reason"].to_list() == [None, None]


def test_read_pings_passes_a_pings_handle_through() -> None:
    p = read_pings(_frame())
    assert read_pings(p) is p


def test_read_pings_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_pings(tmp_path / "missing.parquet")


def test_read_pings_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a regular file"):
        read_pings(tmp_path)


def test_read_pings_fake_parquet_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    path.write_text(CSV_TEXT)
    with pytest.raises(InputError, match="not a Parquet file"):
        read_pings(path)


def test_read_pings_fake_parquet_is_a_value_error_too(tmp_path: Path) -> None:
    path = tmp_path / "P.PARQUET"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="Parquet"):
        read_pings(path)


def test_corrupt_parquet_fails_with_input_error_when_its_schema_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 10)
    p = read_pings(path)
    with pytest.raises(InputError, match="cannot be read"):
        p.schema()


def test_empty_csv_fails_with_input_error(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="cannot be read"):
        read_pings(path).schema()


def test_read_pings_refuses_other_objects() -> None:
    with pytest.raises(InputError, match="list"):
        read_pings([("a", 0, 1.0, 2.0, "confirmed")])  # type: ignore[arg-type]


def test_sha256_of_a_file_is_the_digest_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(CSV_TEXT)
    assert read_pings(path).sha256() == hashlib.sha256(CSV_TEXT.encode()).hexdigest()


def test_sha256_of_a_frame_is_stable_and_content_sensitive() -> None:
    a, b = read_pings(_frame()), read_pings(_frame())
    assert a.sha256() == b.sha256()
    other = read_pings(_frame().with_columns(pl.col("lat") + 0.001))
    assert other.sha256() != a.sha256()


def test_describe_never_holds_data() -> None:
    assert Pings("frame", frame=_frame()).describe() == "input data frame"


# --- require_columns --------------------------------------------------------------------


def test_require_columns_passes_with_all_columns() -> None:
    require_columns(dict.fromkeys(REQUIRED_COLUMNS, pl.String), group_optional=False)


def test_require_columns_names_every_missing_column_and_gives_rename_hints() -> None:
    schema = {"uid": pl.String, "Timestamp": pl.String, "latitude": pl.Float64,
              "longitude": pl.Float64, "status": pl.String}
    with pytest.raises(SchemaError) as info:
        require_columns(schema, group_optional=False)
    msg = str(info.value)
    for col in REQUIRED_COLUMNS:
        assert repr(col) in msg
    # Hints name the input's columns by position: a header is input and is never echoed.
    assert "column 3 → 'lat'" in msg
    assert "column 4 → 'lng'" in msg
    assert "column 1 → 'person_id'" in msg
    assert "column 2 → 'ts'" in msg
    assert "column 5 → 'group'" in msg
    assert "found 5 column(s): none of the job's columns and 5 other(s)" in msg
    for header in schema:
        assert header not in msg.replace("'ts'", "")


def test_require_columns_never_echoes_a_data_row_taken_for_a_header() -> None:
    # A headerless CSV: its first row (an id, a time, a place) becomes the "column names".
    schema = {"rawid-0001": pl.String, "2026-11-26T08:00:00+08:00": pl.String,
              "39.9": pl.String, "116.4": pl.String, "close_contact": pl.String}
    with pytest.raises(SchemaError) as info:
        require_columns(schema, group_optional=False)
    msg = str(info.value)
    assert "rawid-0001" not in msg and "39.9" not in msg
    assert "5 other(s) (names not shown" in msg and "header row" in msg


def test_require_columns_names_repeated_headers_by_position_only() -> None:
    """A headerless file whose first row repeats a value: the old message echoed it."""
    schema = {"13812345678": pl.String, "13812345678_duplicated_0": pl.String, "ts": pl.String,
              "lat": pl.String, "lat_duplicated_0": pl.String}
    with pytest.raises(SchemaError) as info:
        require_columns(schema, group_optional=False)
    msg = str(info.value)
    assert "13812345678" not in msg
    assert "one name at columns 1, 2" in msg and "'lat' at columns 4, 5" in msg


def test_require_columns_only_missing_ones_are_named() -> None:
    schema = {"person_id": pl.String, "ts": pl.String, "latitude": pl.Float64,
              "lng": pl.Float64, "group": pl.String}
    with pytest.raises(SchemaError, match=r"missing required column\(s\) 'lat';") as info:
        require_columns(schema, group_optional=False)
    assert "column 3 → 'lat'" in str(info.value)
    assert "latitude" not in str(info.value)
    assert "'lng'" not in str(info.value).split(";")[0]


def test_require_columns_without_a_near_name_gives_no_rename_hint() -> None:
    schema = {"person_id": pl.String, "ts": pl.String, "lng": pl.Float64,
              "group": pl.String, "foo": pl.Float64}
    with pytest.raises(SchemaError) as info:
        require_columns(schema, group_optional=False)
    assert "rename" not in str(info.value)


def test_require_columns_missing_group_points_to_assume_group() -> None:
    schema = {c: pl.String for c in REQUIRED_COLUMNS if c != "group"}
    with pytest.raises(SchemaError, match="assume_group"):
        require_columns(schema, group_optional=False)
    require_columns(schema, group_optional=True)  # no error


def test_require_columns_schema_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="missing"):
        require_columns({}, group_optional=True)


# --- validate: reasons ---------------------------------------------------------------------


def test_good_row_has_no_reason_and_typed_columns() -> None:
    out = _validated(_frame())
    assert out.columns == ["person_id", "t", "lat", "lng", "group", "reason"]
    assert out.schema["t"] == pl.Int64
    assert out.schema["lat"] == pl.Float64
    assert out.schema["lng"] == pl.Float64
    assert out.schema["person_id"] == pl.String
    assert out["reason"].to_list() == [None, None]
    assert out["t"].to_list() == [EIGHT_AM, EIGHT_AM + 60]


@pytest.mark.parametrize("pid", [None, "", "   "])
def test_missing_person_id(pid: str | None) -> None:
    out = _validated(_texts("person_id", [pid]))
    assert out["reason"].to_list() == ["person_id_missing"]


def test_person_id_is_stripped() -> None:
    assert _validated(_texts("person_id", ["  p7 "]))["person_id"].to_list() == ["p7"]


def test_numeric_person_ids_are_cast_to_text() -> None:
    row = _one(person_id=12345)
    assert row["person_id"] == "12345"
    assert row["reason"] is None


@pytest.mark.parametrize("ts", ["yesterday", "2026-13-45T00:00:00", "", "2026-11-26", "1795651200000"])
def test_unparseable_ts(ts: str) -> None:
    assert _validated(_texts("ts", [ts]))["reason"].to_list() == ["ts_unparseable"]


def test_null_ts_is_unparseable() -> None:
    assert _validated(_texts("ts", [None]))["reason"].to_list() == ["ts_unparseable"]


def test_lat_text_abc_is_not_numeric() -> None:
    assert _validated(_texts("lat", ["abc"]))["reason"].to_list() == ["lat_not_numeric"]


def test_lng_text_is_not_numeric() -> None:
    assert _validated(_texts("lng", ["east"]))["reason"].to_list() == ["lng_not_numeric"]


def test_null_numeric_lat_is_not_numeric() -> None:
    df = pings([("p", EIGHT_AM, 39.9, 116.4, "confirmed"), ("p", EIGHT_AM, None, 116.4, "confirmed")])
    assert _validated(df)["reason"].to_list() == [None, "lat_not_numeric"]


def test_lat_400_is_out_of_range() -> None:
    assert _one(lat=400.17)["reason"] == "lat_out_of_range"
    assert _validated(_texts("lat", ["400.17"]))["reason"].to_list() == ["lat_out_of_range"]


@pytest.mark.parametrize("lat", [-90.0, 90.0])
def test_lat_limits_are_in_range(lat: float) -> None:
    assert _one(lat=lat)["reason"] is None


def test_lat_just_past_the_limit_is_out_of_range() -> None:
    assert _one(lat=-90.0001)["reason"] == "lat_out_of_range"


@pytest.mark.parametrize("lng", [181.0, -180.5])
def test_lng_out_of_range(lng: float) -> None:
    assert _one(lng=lng)["reason"] == "lng_out_of_range"


@pytest.mark.parametrize("lng", [-180.0, 180.0])
def test_lng_limits_are_in_range(lng: float) -> None:
    assert _one(lng=lng)["reason"] is None


@pytest.mark.parametrize(
    ("lat", "lng"),
    [(float("nan"), 116.4), (39.9, float("nan")), (float("inf"), 116.4), (39.9, float("-inf"))],
)
def test_nan_and_inf_coordinates_are_not_finite(lat: float, lng: float) -> None:
    assert _one(lat=lat, lng=lng)["reason"] == "coordinates_not_finite"


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf"])
def test_nan_and_inf_coordinate_text_is_not_finite(text: str) -> None:
    assert _validated(_texts("lat", [text]))["reason"].to_list() == ["coordinates_not_finite"]


@pytest.mark.parametrize("group", [None, "", "  "])
def test_missing_group(group: str | None) -> None:
    assert _validated(_texts("group", [group]))["reason"].to_list() == ["group_missing"]


def test_assume_group_fills_a_missing_group_column() -> None:
    df = _frame().drop("group")
    out = _validated(df, assume_group="close_contact")
    assert out["group"].to_list() == ["close_contact", "close_contact"]
    assert out["reason"].to_list() == [None, None]


def test_unusable_coordinate_type_is_a_schema_error() -> None:
    df = _frame().with_columns(pl.col("lat").cast(pl.Boolean))
    with pytest.raises(SchemaError, match="'lat'"):
        _validated(df)


def test_unusable_ts_type_is_a_schema_error() -> None:
    df = _frame().with_columns(pl.col("ts").cast(pl.Boolean))
    with pytest.raises(SchemaError, match="'ts'"):
        _validated(df)


# --- first failing check wins ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ((None, "garbage", "abc", "east", None), "person_id_missing"),
        (("p", "garbage", "abc", "east", None), "ts_unparseable"),
        (("p", "1795651200", "abc", "east", None), "lat_not_numeric"),
        (("p", "1795651200", "400", "east", None), "lng_not_numeric"),
        (("p", "1795651200", "nan", "500", None), "coordinates_not_finite"),
        (("p", "1795651200", "400", "500", None), "lat_out_of_range"),
        (("p", "1795651200", "39.9", "500", None), "lng_out_of_range"),
        (("p", "1795651200", "39.9", "116.4", None), "group_missing"),
        (("p", "1795651200", "39.9", "116.4", "confirmed"), None),
    ],
)
def test_first_failing_check_wins(row: tuple[Any, ...], reason: str | None) -> None:
    df = pl.DataFrame([row], schema=dict.fromkeys(REQUIRED_COLUMNS, pl.String), orient="row")
    assert _validated(df)["reason"].to_list() == [reason]


def test_checks_run_in_the_documented_order() -> None:
    expected_order = ["person_id_missing", "ts_unparseable", "lat_not_numeric", "lng_not_numeric",
                      "coordinates_not_finite", "lat_out_of_range", "lng_out_of_range", "group_missing"]
    assert list(BAD_REASONS) == expected_order


def test_validate_tags_each_row_independently() -> None:
    df = pl.DataFrame(
        {"person_id": ["a", "", "c", "d"],
         "ts": ["1795651200", "1795651200", "x", "1795651200"],
         "lat": ["39.9", "39.9", "39.9", "91"],
         "lng": ["116.4"] * 4,
         "group": ["confirmed"] * 4},
    )
    assert _validated(df)["reason"].to_list() == [
        None, "person_id_missing", "ts_unparseable", "lat_out_of_range"]


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T08:00:00+08:00",
        "2026-11-26T00:00:00Z",
        "2026-11-26T00:00:00z",
        "2026-11-26T00:00:00+00:00",
        "2026-11-25T21:00:00-03:00",
        "2026-11-26 08:00:00+08:00",
        "  2026-11-26T08:00:00+08:00  ",
    ],
)
def test_iso_with_offset_or_z(text: str) -> None:
    out = _validated(_texts("ts", [text]))
    assert out["reason"].to_list() == [None]
    assert out["t"].to_list() == [EIGHT_AM]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T08:00:00.123+08:00", EIGHT_AM),
        ("2026-11-26T08:00:59.999999+08:00", EIGHT_AM + 59),
        ("2026-11-26T00:00:01.5Z", EIGHT_AM + 1),
        ("2026-11-26T08:00:00.25", EIGHT_AM),
    ],
)
def test_fractional_seconds_are_truncated_to_the_second(text: str, expected: int) -> None:
    out = _validated(_texts("ts", [text]))
    assert out["t"].to_list() == [expected]


@pytest.mark.parametrize("text", ["2026-11-26T08:00:00", "2026-11-26 08:00:00", "2026-11-26T08:00"])
def test_naive_text_is_read_in_the_job_timezone(text: str) -> None:
    shanghai = _validated(_texts("ts", [text]), "Asia/Shanghai")
    assert shanghai["t"].to_list() == [EIGHT_AM]
    utc = _validated(_texts("ts", [text]), "UTC")
    assert utc["t"].to_list() == [EIGHT_AM + 8 * 3600]
    expected = int(dt.datetime(2026, 11, 26, 8, tzinfo=dt.timezone(dt.timedelta(hours=-5))).timestamp())
    ny = _validated(_texts("ts", [text]), "America/New_York")
    assert ny["t"].to_list() == [expected]


def test_naive_text_in_a_dst_zone_uses_the_offset_of_that_date() -> None:
    out = _validated(_texts("ts", ["2026-07-01T12:00:00", "2026-01-01T12:00:00"]), "Europe/Berlin")
    summer = int(dt.datetime(2026, 7, 1, 10, tzinfo=dt.UTC).timestamp())
    winter = int(dt.datetime(2026, 1, 1, 11, tzinfo=dt.UTC).timestamp())
    assert out["t"].to_list() == [summer, winter]


def test_epoch_seconds_as_int() -> None:
    row = _one(ts=1795651200)
    assert row["t"] == 1795651200
    assert row["reason"] is None


@pytest.mark.parametrize(("value", "expected"), [(1795651200.9, 1795651200), (1795651200.0, 1795651200),
                                                 (-0.5, -1)])
def test_epoch_seconds_as_float_are_floored(value: float, expected: int) -> None:
    assert _one(ts=value)["t"] == expected


def test_non_finite_float_epoch_is_unparseable() -> None:
    df = pings([("p", 1795651200.0, 39.9, 116.4, "c"), ("p", float("nan"), 39.9, 116.4, "c"),
                ("p", float("inf"), 39.9, 116.4, "c")])
    assert _validated(df)["reason"].to_list() == [None, "ts_unparseable", "ts_unparseable"]


@pytest.mark.parametrize(("text", "expected"), [("1795651200", 1795651200), ("1795651200.7", 1795651200),
                                                (" 1795651200 ", 1795651200), ("0", 0)])
def test_epoch_seconds_as_text(text: str, expected: int) -> None:
    out = _validated(_texts("ts", [text]))
    assert out["t"].to_list() == [expected]
    assert out["reason"].to_list() == [None]


def test_epoch_text_is_independent_of_the_timezone() -> None:
    a = _validated(_texts("ts", ["1795651200"]), "UTC")["t"].to_list()
    b = _validated(_texts("ts", ["1795651200"]), "Asia/Shanghai")["t"].to_list()
    assert a == b == [1795651200]


def test_datetime_column_tz_aware() -> None:
    instant = dt.datetime(2026, 11, 26, 0, 0, 30, 500_000, tzinfo=dt.UTC)
    df = pl.DataFrame({"person_id": ["p", "q"],
                       "ts": pl.Series([instant, instant], dtype=pl.Datetime("us", "UTC")),
                       "lat": [39.9, 39.9], "lng": [116.4, 116.4], "group": ["c", "c"]})
    shanghai = df.with_columns(pl.col("ts").dt.convert_time_zone("Asia/Shanghai"))
    for frame in (df, shanghai):
        # An aware instant is the same instant whatever the job's zone.
        assert _validated(frame, "UTC")["t"].to_list() == [EIGHT_AM + 30] * 2
        assert _validated(frame, "Asia/Shanghai")["t"].to_list() == [EIGHT_AM + 30] * 2


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_datetime_column_naive_is_read_in_the_job_timezone(unit: str) -> None:
    df = pl.DataFrame({"person_id": ["p"],
                       "ts": pl.Series([dt.datetime(2026, 11, 26, 8)], dtype=pl.Datetime(unit)),
                       "lat": [39.9], "lng": [116.4], "group": ["c"]})
    assert _validated(df, "Asia/Shanghai")["t"].to_list() == [EIGHT_AM]
    assert _validated(df, "UTC")["t"].to_list() == [EIGHT_AM + 8 * 3600]


def test_null_datetime_is_unparseable() -> None:
    df = pl.DataFrame({"person_id": ["p", "q"],
                       "ts": pl.Series([dt.datetime(2026, 11, 26, 8), None], dtype=pl.Datetime("us")),
                       "lat": [39.9, 39.9], "lng": [116.4, 116.4], "group": ["c", "c"]})
    assert _validated(df)["reason"].to_list() == [None, "ts_unparseable"]


def test_parquet_sample_validates_cleanly() -> None:
    p = read_pings(SAMPLES / "beijing_pings.parquet")
    schema = p.schema()
    assert schema["ts"] == pl.Datetime("us", "UTC")
    out = validate(p.scan(), schema, TZ).head(2000).collect()
    assert out["reason"].null_count() == out.height
