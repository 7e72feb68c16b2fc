"""Behaviour of the pipeline stages between ingest and the mechanism:
scope, pseudonymise, index, bound and aggregate."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from pathlib import Path

import h3
import polars as pl
import pytest

from privmob.errors import KeyFileError
from privmob.stages import aggregate, bound, index, scope
from privmob.stages.pseudonymise import MIN_KEY_BYTES, Pseudonymiser, load_key, new_key
from tests.conftest import PERIOD_START, TEST_KEY

DAY = 86400
GROUPS = ("confirmed", "suspected", "close_contact")
CELL_A = h3.str_to_int(h3.latlng_to_cell(39.9087, 116.3975, 8))
CELL_B = h3.str_to_int(h3.latlng_to_cell(39.9334, 116.4547, 8))
CELL_C = h3.str_to_int(h3.latlng_to_cell(40.0000, 116.3000, 8))
CELL_D = h3.str_to_int(h3.latlng_to_cell(39.8000, 116.5000, 8))


# --- scope ----------------------------------------------------------------------------------


def _status(rows: list[tuple[str | None, str | None, int | None]],
            start: int = PERIOD_START, end: int = PERIOD_START + DAY) -> list[str]:
    df = pl.DataFrame(rows, schema={"reason": pl.String, "group": pl.String, "t": pl.Int64},
                      orient="row")
    return df.select(scope.status(GROUPS, start, end).alias("s"))["s"].to_list()


def test_scope_key_groups_in_period_are_ok() -> None:
    rows = [(None, g, PERIOD_START + 3600) for g in GROUPS]
    assert _status(rows) == [scope.OK] * 3


def test_scope_other_groups_are_out_of_scope() -> None:
    rows = [(None, "general_public", PERIOD_START), (None, "confirmedx", PERIOD_START),
            (None, "con firmed", PERIOD_START), (None, "13812345678", PERIOD_START)]
    assert _status(rows) == [scope.OUT_OF_SCOPE] * 4


@pytest.mark.parametrize("value", ["Confirmed", "CONFIRMED", " confirmed ", "ｃｏｎｆｉｒｍｅｄ",
                                   "Ｃｏｎｆｉｒｍｅｄ\u3000", "close-contact", "Close Contact",
                                   "close\t-  contact", "ＣＬＯＳＥ＿ＣＯＮＴＡＣＴ"])
def test_scope_matches_groups_whatever_their_case_width_and_spacing(value: str) -> None:
    """Before: matched exactly, so each of these was silently dropped as out of scope."""
    assert _status([(None, value, PERIOD_START)]) == [scope.OK]


def test_scope_normalises_the_configured_groups_too() -> None:
    df = pl.DataFrame({"reason": [None, None], "group": ["close_contact", "confirmed"],
                       "t": [PERIOD_START] * 2}, schema={"reason": pl.String, "group": pl.String,
                                                         "t": pl.Int64})
    got = df.select(scope.status([" Close-Contact"], PERIOD_START, PERIOD_START + DAY))
    assert got.to_series().to_list() == [scope.OK, scope.OUT_OF_SCOPE]
    assert scope.normalised_groups(["Confirmed", "confirmed", "ｃｏｎｆｉｒｍｅｄ"]) == ["confirmed"]


def test_scope_normalisation_runs_per_distinct_value_in_every_batch() -> None:
    n = 200_000
    values = ["Confirmed", "resident", "close-contact", None]
    df = pl.DataFrame({"reason": pl.Series([None] * n, dtype=pl.String),
                       "group": [values[i % 4] for i in range(n)], "t": [PERIOD_START] * n})
    got = (df.lazy().select(scope.status(GROUPS, PERIOD_START, PERIOD_START + DAY).alias("s"))
           .group_by("s").len().collect(engine="streaming"))
    # a null group is never in scope (ingest has already made it group_missing)
    assert dict(got.iter_rows()) == {scope.OK: n // 2, scope.OUT_OF_SCOPE: n // 2}


def test_out_of_scope_by_group_names_only_label_like_values() -> None:
    counted = pl.DataFrame({
        "status": [scope.OUT_OF_SCOPE] * 6 + [scope.OK, "lat_out_of_range"],
        "group": ["General Public", "general-public", "13812345678", "张三", "a@b.cn", "Resident",
                  "confirmed", "x"],
        "n": [5, 2, 3, 4, 1, 7, 100, 9],
    })
    got = scope.out_of_scope_by_group(counted)
    assert got == {"general_public": 7, "resident": 7, scope.OTHER: 8, scope.OTHER_VALUES: 3}
    assert not any(v in str(got) for v in ("138", "张", "@"))
    assert scope.out_of_scope_by_group(counted.filter(pl.col("status") == scope.OK)) == {}


def test_backend_counts_what_scope_dropped_per_group() -> None:
    from privmob.backends import get_backend
    from tests.conftest import config, pings

    rows = [("p1", PERIOD_START + 60, 39.9, 116.4, "CONFIRMED"),
            ("p2", PERIOD_START + 60, 39.9, 116.4, "Resident"),
            ("p3", PERIOD_START + 60, 39.9, 116.4, "resident "),
            ("p4", PERIOD_START + 60, 39.9, 116.4, "13812345678")]
    exact = get_backend("polars").exact_cells(
        pings(rows), config(), Pseudonymiser(TEST_KEY.encode(), "p"), None)
    assert exact.rows_by_status == {scope.OK: 1, scope.OUT_OF_SCOPE: 3}
    assert exact.out_of_scope_by_group == {"resident": 2, scope.OTHER: 1, scope.OTHER_VALUES: 1}


def test_scope_period_is_half_open() -> None:
    end = PERIOD_START + DAY
    rows = [
        (None, "confirmed", PERIOD_START - 1),
        (None, "confirmed", PERIOD_START),
        (None, "confirmed", end - 1),
        (None, "confirmed", end),
        (None, "confirmed", end + 1),
    ]
    assert _status(rows) == [scope.OUT_OF_PERIOD, scope.OK, scope.OK, scope.OUT_OF_PERIOD,
                             scope.OUT_OF_PERIOD]


def test_scope_bad_row_reason_wins_over_scope_and_period() -> None:
    rows = [("lat_out_of_range", "general_public", PERIOD_START - 10),
            ("ts_unparseable", "confirmed", None)]
    assert _status(rows) == ["lat_out_of_range", "ts_unparseable"]


def test_scope_out_of_scope_wins_over_out_of_period() -> None:
    assert _status([(None, "general_public", PERIOD_START - 10)]) == [scope.OUT_OF_SCOPE]


def test_scope_status_values_are_distinct() -> None:
    assert len({scope.OK, scope.OUT_OF_SCOPE, scope.OUT_OF_PERIOD}) == 3


# --- pseudonymise: load_key --------------------------------------------------------------------


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610, 0o601])
def test_load_key_refuses_group_or_other_accessible_file(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, TEST_KEY.encode(), mode)
    with pytest.raises(KeyFileError, match=r"chmod 600") as info:
        load_key(path, "UNUSED_ENV")
    assert f"{mode:04o}" in str(info.value)
    assert TEST_KEY not in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_key_accepts_owner_only_file(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, TEST_KEY.encode() + b"\n", mode)
    assert load_key(path, "UNUSED_ENV") == TEST_KEY.encode()


def test_load_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "nope.key", "UNUSED_ENV")


def test_load_key_file_takes_precedence_over_env(tmp_path: Path, key_env: str) -> None:
    other = "fedcba9876543210" * 4
    path = _key_file(tmp_path, other.encode())
    assert load_key(path, "PRIVMOB_PSEUDONYM_KEY") == other.encode()


def test_load_key_too_short_file(tmp_path: Path) -> None:
    short = "s3cr3t-but-short"
    path = _key_file(tmp_path, short.encode())
    with pytest.raises(KeyFileError, match=f"shorter than {MIN_KEY_BYTES} bytes") as info:
        load_key(path, "UNUSED_ENV")
    assert short not in str(info.value)


def test_load_key_from_env(key_env: str) -> None:
    assert load_key(None, "PRIVMOB_PSEUDONYM_KEY") == TEST_KEY.encode()


def test_load_key_from_a_custom_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_JOB_KEY", "k-0123456789abcdef" * 2)
    assert load_key(None, "MY_JOB_KEY") == b"k-0123456789abcdef" * 2


@pytest.mark.parametrize("value", [None, ""])
def test_load_key_env_missing_or_empty(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("PRIVMOB_TEST_KEY_VAR", raising=False)
    else:
        monkeypatch.setenv("PRIVMOB_TEST_KEY_VAR", value)
    with pytest.raises(KeyFileError, match="PRIVMOB_TEST_KEY_VAR"):
        load_key(None, "PRIVMOB_TEST_KEY_VAR")


def test_load_key_env_too_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVMOB_TEST_KEY_VAR", "x" * (MIN_KEY_BYTES - 1))
    with pytest.raises(KeyFileError, match="shorter"):
        load_key(None, "PRIVMOB_TEST_KEY_VAR")


def test_key_file_error_is_a_permission_error() -> None:
    assert issubclass(KeyFileError, PermissionError)


def test_new_key_is_long_enough_and_random() -> None:
    a, b = new_key(), new_key()
    assert len(a) >= MIN_KEY_BYTES
    assert a != b


@pytest.mark.parametrize(("content", "said"), [
    (b"\x00" * 32, "all zero bytes"),
    (b"0" * 64, "one byte repeated"),
    (b"x" * 40, "one byte repeated"),
    (b"ab" * 32, "only 2 distinct"),
    (bytes(range(7)) * 5, "only 7 distinct"),
])
def test_load_key_refuses_a_guessable_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          content: bytes, said: str) -> None:
    """Length alone let these through: /dev/zero, a repeated character, a placeholder."""
    with pytest.raises(KeyFileError, match=said) as info:
        load_key(_key_file(tmp_path, content), "UNUSED_ENV")
    assert "privmob keys pseudonym" in str(info.value)
    if content.isascii() and b"\x00" not in content:
        monkeypatch.setenv("PRIVMOB_TEST_KEY_VAR", content.decode())
        with pytest.raises(KeyFileError, match="environment variable PRIVMOB_TEST_KEY_VAR"):
            load_key(None, "PRIVMOB_TEST_KEY_VAR")


def test_new_key_is_never_refused_and_the_floor_is_far_below_random_keys() -> None:
    from privmob.stages.pseudonymise import MIN_DISTINCT_BYTES, key_weakness

    keys = [new_key() for _ in range(2000)]
    assert all(key_weakness(k) is None for k in keys)
    # 64 random hex digits show ≥ 12 of the 16 nearly always: 8 is a floor for mistakes
    assert min(len(set(k)) for k in keys) >= MIN_DISTINCT_BYTES + 3
    assert key_weakness(os.urandom(32)) is None
    assert key_weakness(TEST_KEY.encode()) is None


def _signing_key(tmp_path: Path) -> Path:
    from privmob.governance.signing import generate_keypair

    path = tmp_path / "signing.pem"
    generate_keypair(path)
    return path


def test_keys_apart_refuses_the_signing_key_in_any_form(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from privmob.governance.signing import load_private_key
    from privmob.stages.pseudonymise import check_keys_apart

    signing = _signing_key(tmp_path)
    raw = load_private_key(signing).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    for same in (signing.read_bytes(), signing.read_bytes().strip() + b"\n", raw, raw.hex().encode(),
                 raw.hex().upper().encode()):
        with pytest.raises(KeyFileError, match="signing key") as info:
            check_keys_apart(same, signing, None)
        message = str(info.value)
        assert "privmob keys pseudonym" in message and str(signing) in message
        assert raw.hex() not in message.lower()
    check_keys_apart(new_key(), signing, None)  # a key of its own: fine
    check_keys_apart(new_key(), None, None)


def test_keys_apart_refuses_the_store_key(tmp_path: Path) -> None:
    from privmob.stages.pseudonymise import check_keys_apart

    key = new_key()
    store = _key_file(tmp_path, key + b"\n")
    with pytest.raises(KeyFileError, match="working-store key"):
        check_keys_apart(key, None, store)
    with pytest.raises(KeyFileError, match="working-store key"):  # the same secret, as bytes
        check_keys_apart(bytes.fromhex(key.decode()) * 1, None,
                         _key_file(tmp_path, key))
    check_keys_apart(new_key(), None, store)
    check_keys_apart(new_key(), None, tmp_path / "missing.key")  # the store reports that


def test_a_release_with_the_signing_key_as_pseudonym_key_is_refused_before_any_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import privmob as pm
    from tests.conftest import config

    signing = _signing_key(tmp_path)
    cfg = config(job={"key_file": str(signing), "signing_key": str(signing)})
    read: list[object] = []
    import privmob.pipeline.run

    monkeypatch.setattr(privmob.pipeline.run, "get_backend", lambda *a: read.append(a))
    with pytest.raises(KeyFileError, match="same secret as the signing key"):
        pm.plan(cfg).release(tmp_path / "never-read.parquet")
    assert read == []


# --- pseudonymise: Pseudonymiser ----------------------------------------------------------------


IDS = pl.Series("person_id", ["P0000001", "P0000002", "alice", "张三", "P0000001x"])


def test_pseudonyms_are_int64_and_aligned() -> None:
    out = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(IDS)
    assert out.dtype == pl.Int64
    assert out.len() == IDS.len()
    one = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(IDS[2:3])
    assert one.to_list() == out[2:3].to_list()


def test_pseudonyms_are_deterministic() -> None:
    a = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(IDS)
    b = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(IDS)
    assert a.to_list() == b.to_list()


def test_pseudonyms_are_a_keyed_hmac_not_a_plain_hash() -> None:
    p = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
    value = p.pseudonyms(pl.Series(["alice"]))[0]
    plain = int.from_bytes(hashlib.sha256(b"alice").digest()[:8], "big", signed=True)
    with_master = int.from_bytes(hmac.digest(TEST_KEY.encode(), b"alice", "sha256")[:8], "big",
                                 signed=True)
    assert value not in (plain, with_master)


def test_pseudonyms_differ_per_period_label() -> None:
    a = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(IDS).to_list()
    b = Pseudonymiser(TEST_KEY.encode(), "2026-11-27").pseudonyms(IDS).to_list()
    assert not set(a) & set(b)


def test_pseudonyms_differ_per_key() -> None:
    a = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(IDS).to_list()
    b = Pseudonymiser(b"f" * 64, "2026-11-26").pseudonyms(IDS).to_list()
    assert not set(a) & set(b)


def test_key_id_differs_per_period_and_key_and_is_stable() -> None:
    ids = {
        Pseudonymiser(TEST_KEY.encode(), "2026-11-26").key_id,
        Pseudonymiser(TEST_KEY.encode(), "2026-11-27").key_id,
        Pseudonymiser(b"f" * 64, "2026-11-26").key_id,
    }
    assert len(ids) == 3
    assert (Pseudonymiser(TEST_KEY.encode(), "2026-11-26").key_id
            == Pseudonymiser(TEST_KEY.encode(), "2026-11-26").key_id)


def test_key_never_appears_in_repr_or_key_id() -> None:
    p = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
    derived = hmac.digest(TEST_KEY.encode(), b"privmob/period/2026-11-26", "sha256")
    for text in (repr(p), str(p), p.key_id):
        assert TEST_KEY not in text
        assert TEST_KEY[:16] not in text
        assert derived.hex() not in text
        assert derived.hex()[:16] not in text
    assert "2026-11-26" in repr(p)
    assert p.key_id in repr(p)


def test_pseudonymiser_has_no_instance_dict() -> None:
    p = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
    assert not hasattr(p, "__dict__")  # no stray attribute can hold the master key


def test_pseudonyms_of_distinct_ids_are_distinct() -> None:
    ids = pl.Series([f"P{i:07d}" for i in range(20_000)])
    out = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(ids)
    assert out.n_unique() == ids.len()


def test_pseudonyms_of_empty_series() -> None:
    out = Pseudonymiser(TEST_KEY.encode(), "2026-11-26").pseudonyms(pl.Series([], dtype=pl.String))
    assert out.len() == 0
    assert out.dtype == pl.Int64


def test_hex_pseudonyms_are_full_length_and_consistent_with_int_ones() -> None:
    p = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
    hexes = p.hex(pl.Series(["alice", None, "bob"]))
    assert hexes[1] is None
    assert all(len(h) == 64 for h in (hexes[0], hexes[2]))
    ints = p.pseudonyms(pl.Series(["alice", "bob"])).to_list()
    assert [int.from_bytes(bytes.fromhex(h)[:8], "big", signed=True) for h in (hexes[0], hexes[2])] == ints
    assert "alice" not in hexes[0]


# --- index ------------------------------------------------------------------------------------


def test_window_is_aligned_to_the_period_start() -> None:
    ts = [PERIOD_START, PERIOD_START + 3599, PERIOD_START + 3600, PERIOD_START + DAY - 1,
          PERIOD_START - 1, PERIOD_START + DAY]
    df = pl.DataFrame({"t": ts})
    out = df.select(index.window(PERIOD_START, 3600).alias("w"))["w"]
    assert out.dtype == pl.Int32
    assert out.to_list() == [0, 0, 1, 23, -1, 24]


def test_window_alignment_does_not_follow_utc_midnight() -> None:
    utc_midnight = PERIOD_START + 8 * 3600  # 08:00 local in Shanghai
    df = pl.DataFrame({"t": [utc_midnight, utc_midnight + 3 * 3600 - 1]})
    assert df.select(index.window(PERIOD_START, 3 * 3600))["t"].to_list() == [2, 3]


def test_window_with_15_minutes() -> None:
    df = pl.DataFrame({"t": [PERIOD_START + 899, PERIOD_START + 900, PERIOD_START + 95 * 900]})
    assert df.select(index.window(PERIOD_START, 900))["t"].to_list() == [0, 1, 95]


def test_cell_matches_h3() -> None:
    points = [(39.9087, 116.3975), (40.0, 116.3), (-33.86, 151.21)]
    df = pl.DataFrame({"lat": [p[0] for p in points], "lng": [p[1] for p in points]})
    for res in (5, 8, 9):
        out = df.select(index.cell(res).alias("c"))["c"]
        assert out.to_list() == [h3.str_to_int(h3.latlng_to_cell(a, b, res)) for a, b in points]


def test_minute_is_the_whole_minute() -> None:
    df = pl.DataFrame({"t": [0, 59, 60, 119, 3600]})
    assert df.select(index.minute())["t"].to_list() == [0, 0, 1, 1, 60]


# --- bound --------------------------------------------------------------------------------------


def _dwell(rows: list[tuple[int, int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"pid": pl.Int64, "window": pl.Int32, "cell": pl.UInt64,
                                      "minutes": pl.Int64}, orient="row")


def _keys(df: pl.DataFrame) -> set[tuple[int, int, int]]:
    return set(df.select("pid", "window", "cell").iter_rows())


def _pids(rng: random.Random, n: int) -> list[int]:
    """n distinct signed 64-bit pseudonym-like ids."""
    out: set[int] = set()
    while len(out) < n:
        out.add(rng.getrandbits(64) - 2**63)
    return sorted(out)


def _random_dwell(seed: int, persons: int = 40, windows: int = 24, cells: int = 12) -> pl.DataFrame:
    rng = random.Random(seed)
    pool = [h3.str_to_int(c) for c in h3.grid_disk(h3.latlng_to_cell(39.9, 116.4, 8), 2)][:cells]
    rows = []
    for pid in _pids(rng, persons):
        for w in rng.sample(range(windows), rng.randint(1, windows)):
            for c in rng.sample(pool, rng.randint(1, len(pool))):
                rows.append((pid, w, c, rng.randint(1, 5)))  # small range: many ties
    return _dwell(rows)


def test_bound_keeps_the_cell_with_most_dwell() -> None:
    df = _dwell([(7, 0, CELL_A, 3), (7, 0, CELL_B, 40), (7, 0, CELL_C, 10)])
    out = bound.bound(df, max_cells_per_window=1, max_windows=24)
    assert _keys(out) == {(7, 0, CELL_B)}
    out2 = bound.bound(df, max_cells_per_window=2, max_windows=24)
    assert _keys(out2) == {(7, 0, CELL_B), (7, 0, CELL_C)}


def test_bound_keeps_the_windows_with_most_dwell() -> None:
    df = _dwell([(7, 0, CELL_A, 5), (7, 1, CELL_A, 50), (7, 2, CELL_A, 20), (7, 2, CELL_B, 20),
                 (7, 3, CELL_A, 1)])
    out = bound.bound(df, max_cells_per_window=2, max_windows=2)
    assert {w for _, w, _ in _keys(out)} == {1, 2}
    assert _keys(out) == {(7, 1, CELL_A), (7, 2, CELL_A), (7, 2, CELL_B)}


def test_bound_leaves_small_contributions_untouched() -> None:
    df = _dwell([(1, 0, CELL_A, 5), (1, 3, CELL_B, 1), (2, 0, CELL_A, 2)])
    out = bound.bound(df, 1, 24)
    assert out.sort("pid", "window").equals(df.sort("pid", "window"))


def test_bound_is_per_person() -> None:
    df = _dwell([(1, 0, CELL_A, 5), (1, 0, CELL_B, 1), (2, 0, CELL_A, 1), (2, 0, CELL_B, 5)])
    out = bound.bound(df, 1, 24)
    assert _keys(out) == {(1, 0, CELL_A), (2, 0, CELL_B)}


@pytest.mark.parametrize(("k", "w"), [(1, 1), (1, 3), (2, 5), (3, 24)])
def test_bound_caps_cells_per_window_and_windows_per_person(k: int, w: int) -> None:
    df = _random_dwell(seed=k * 100 + w)
    out = bound.bound(df, k, w)
    per_window = out.group_by("pid", "window").len()
    assert per_window["len"].max() <= k
    per_person = out.group_by("pid").agg(pl.col("window").n_unique().alias("n"))
    assert per_person["n"].max() <= w
    assert out.select("pid", "window", "cell").is_duplicated().sum() == 0
    # every kept row is an input row, unchanged
    assert out.join(df, on=["pid", "window", "cell", "minutes"], how="anti").height == 0
    # every person keeps something, and exactly min(k, cells) in each kept window
    assert set(out["pid"]) == set(df["pid"])
    avail = df.group_by("pid", "window").len().rename({"len": "avail"})
    check = per_window.join(avail, on=["pid", "window"])
    assert (check["len"] == check["avail"].clip(upper_bound=k)).all()


def test_bound_kept_cells_have_no_less_dwell_than_dropped_ones() -> None:
    df = _random_dwell(seed=5)
    out = bound.bound(df, 2, 24)
    dropped = df.join(out, on=["pid", "window", "cell"], how="anti")
    worst_kept = out.group_by("pid", "window").agg(pl.col("minutes").min().alias("kept_min"))
    best_dropped = dropped.group_by("pid", "window").agg(pl.col("minutes").max().alias("drop_max"))
    both = worst_kept.join(best_dropped, on=["pid", "window"])
    assert both.height > 0
    assert (both["kept_min"] >= both["drop_max"]).all()


def test_bound_kept_windows_have_no_less_dwell_than_dropped_ones() -> None:
    df = _random_dwell(seed=6)
    out = bound.bound(df, 1, 4)
    totals = df.group_by("pid", "window").agg(pl.col("minutes").sum().alias("total"))
    kept = totals.join(out.select("pid", "window").unique(), on=["pid", "window"], how="semi")
    dropped = totals.join(out.select("pid", "window").unique(), on=["pid", "window"], how="anti")
    a = kept.group_by("pid").agg(pl.col("total").min().alias("kept_min"))
    b = dropped.group_by("pid").agg(pl.col("total").max().alias("drop_max"))
    both = a.join(b, on="pid")
    assert both.height > 0
    assert (both["kept_min"] >= both["drop_max"]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_is_independent_of_input_row_order(seed: int) -> None:
    df = _random_dwell(seed=seed)
    expected = bound.bound(df, 1, 3).sort("pid", "window", "cell")
    for shuffle_seed in range(3):
        shuffled = df.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
        assert not shuffled.equals(df)
        got = bound.bound(shuffled, 1, 3).sort("pid", "window", "cell")
        assert got.equals(expected)


def test_bound_ties_are_broken_deterministically_and_not_by_row_order() -> None:
    # Four cells with equal dwell: which one is kept must not depend on row order.
    rows = [(123456789, 0, c, 10) for c in (CELL_A, CELL_B, CELL_C, CELL_D)]
    kept = set()
    for perm_seed in range(8):
        perm = rows[:]
        random.Random(perm_seed).shuffle(perm)
        out = bound.bound(_dwell(perm), 1, 24)
        assert out.height == 1
        kept.add(out["cell"][0])
    assert len(kept) == 1


def test_bound_tie_break_depends_on_the_pseudonym() -> None:
    # Equal dwell everywhere: the keyed tie-break should not pick the same cell for everyone.
    cells = [CELL_A, CELL_B, CELL_C, CELL_D]
    pids = _pids(random.Random(3), 64)
    df = _dwell([(p, 0, c, 10) for p in pids for c in cells])
    out = bound.bound(df, 1, 24)
    assert out.height == len(pids)
    assert out["cell"].n_unique() > 1


def test_bound_window_ties_are_order_independent() -> None:
    rows = [(42, w, CELL_A, 7) for w in range(10)]
    kept = set()
    for perm_seed in range(6):
        perm = rows[:]
        random.Random(perm_seed).shuffle(perm)
        out = bound.bound(_dwell(perm), 1, 3)
        assert out.height == 3
        kept.add(tuple(sorted(out["window"].to_list())))
    assert len(kept) == 1


def test_bound_of_empty_frame() -> None:
    out = bound.bound(_dwell([]), 1, 24)
    assert out.height == 0
    assert out.columns == ["pid", "window", "cell", "minutes"]


def test_dwell_counts_distinct_minutes_not_pings() -> None:
    """A 1 Hz logger's 60 fixes in one minute weigh less than 3 fixes in 3 minutes."""
    from privmob.backends import get_backend
    from privmob.stages.pseudonymise import Pseudonymiser
    from tests.conftest import PERIOD_START, TEST_KEY, config, pings

    base = PERIOD_START + 3600
    a, b = (39.9087, 116.3975), (39.9900, 116.3100)  # two far-apart res-8 cells
    rows = [("p1", base + s, *a, "confirmed") for s in range(60)]
    rows += [("p1", base + 600 + 60 * m, *b, "confirmed") for m in range(3)]
    cfg = config(grid={"resolution": 8}, privacy={"max_cells_per_window": 1})
    exact = get_backend("polars").exact_cells(
        pings(rows), cfg, Pseudonymiser(TEST_KEY.encode(), "p"), None)
    import h3

    assert exact.counts["cell"].to_list() == [h3.str_to_int(h3.latlng_to_cell(*b, 8))]
    assert exact.bounding.dwell_minutes == 4
    assert exact.bounding.dwell_minutes_kept == 3


@pytest.mark.parametrize("window", ["1h", "2h"])
def test_exact_stage_counts_every_batch_once(window: str) -> None:
    """Over an input of many streaming batches the status counts equal a direct count, and
    the dwell minutes (one 64-minute word per 1 h window, two per 2 h window) n_unique."""
    import numpy as np

    from privmob.backends import get_backend
    from tests.conftest import config

    n = 300_000
    rng = np.random.default_rng(7)
    group = rng.choice(["confirmed", "suspected", "resident", "", None], n).tolist()
    frame = pl.DataFrame({
        "person_id": [f"p{i}" for i in rng.integers(0, 500, n)],
        "ts": (PERIOD_START - 3600 + rng.integers(0, DAY + 7200, n)).tolist(),
        "lat": (39.9 + rng.random(n) * 0.05).tolist(),
        "lng": (116.4 + rng.random(n) * 0.05).tolist(),
        "group": group,
    }).with_columns(lat=pl.when(pl.int_range(pl.len()) % 997 == 0).then(95.0).otherwise("lat"))
    cfg = config(grid={"resolution": 8, "window": window}, privacy={"max_cells_per_window": 3})
    exact = get_backend("polars").exact_cells(
        frame, cfg, Pseudonymiser(TEST_KEY.encode(), "p"), None)
    start, end, seconds = PERIOD_START, PERIOD_START + DAY, cfg.grid.window_seconds
    g = pl.col("group").str.strip_chars()
    status = (pl.when(pl.col("lat") > 90).then(pl.lit("lat_out_of_range"))
              .when(g.is_null() | (g == "")).then(pl.lit("group_missing"))
              .when(~g.is_in(GROUPS)).then(pl.lit("out_of_scope"))
              .when((pl.col("ts") < start) | (pl.col("ts") >= end)).then(pl.lit("out_of_period"))
              .otherwise(pl.lit("ok")))
    expected = dict(frame.group_by(status.alias("s")).len().iter_rows())
    assert exact.rows_by_status == expected
    ok = frame.filter(status == "ok")
    minutes = ok.select(
        "person_id", ((pl.col("ts") - start) // seconds).alias("w"),
        index.cell(8).alias("c"), ((pl.col("ts") - start) % seconds // 60).alias("m"),
    ).group_by("person_id", "w", "c").agg(pl.col("m").n_unique())
    assert exact.bounding.dwell_minutes == minutes["m"].sum()
    assert exact.bounding.person_cell_windows == minutes.height


def test_bounding_stats() -> None:
    before = _dwell([(1, 0, CELL_A, 6), (1, 0, CELL_B, 2), (1, 1, CELL_A, 2)])
    after = bound.bound(before, 1, 24)
    stats = bound.stats(before, after)
    assert stats.person_cell_windows == 3
    assert stats.person_cell_windows_kept == 2
    assert stats.dropped_share == pytest.approx(1 / 3)
    assert stats.dwell_kept_share == pytest.approx(8 / 10)
    d = stats.as_dict()
    assert d["person_cell_windows"] == 3
    empty = bound.stats(_dwell([]), _dwell([]))
    assert (empty.dropped_share, empty.dwell_kept_share) == (0.0, 1.0)


# --- aggregate ----------------------------------------------------------------------------------


def test_cell_counts_counts_distinct_persons_per_cell_and_window() -> None:
    bounded = _dwell([
        (1, 0, CELL_A, 5), (2, 0, CELL_A, 1), (3, 0, CELL_A, 9),
        (1, 1, CELL_A, 5), (2, 1, CELL_B, 5),
        (3, 2, CELL_B, 1),
    ])
    out = aggregate.cell_counts(bounded)
    assert out.schema == pl.Schema({"cell": pl.UInt64, "window": pl.Int32, "count": pl.Int64})
    got = {(c, w): n for c, w, n in out.iter_rows()}
    assert got == {(CELL_A, 0): 3, (CELL_A, 1): 1, (CELL_B, 1): 1, (CELL_B, 2): 1}


def test_cell_counts_is_sorted_by_window_then_cell() -> None:
    df = _random_dwell(seed=9)
    out = aggregate.cell_counts(bound.bound(df, 2, 24))
    assert out.equals(out.sort("window", "cell"))
    assert out.select("cell", "window").is_duplicated().sum() == 0


def test_cell_counts_total_equals_bounded_rows_and_ignores_minutes() -> None:
    df = bound.bound(_random_dwell(seed=4), 1, 24)
    out = aggregate.cell_counts(df)
    assert out["count"].sum() == df.height
    heavier = aggregate.cell_counts(df.with_columns(pl.col("minutes") * 100))
    assert heavier.equals(out)


def test_cell_counts_of_empty_frame() -> None:
    out = aggregate.cell_counts(_dwell([]))
    assert out.height == 0
    assert out.columns == ["cell", "window", "count"]


def test_exact_counts_repr_hides_counts() -> None:
    counts = aggregate.cell_counts(_dwell([(1, 0, CELL_A, 5)] + [(p, 0, CELL_B, 1) for p in range(2, 39)]))
    stats = bound.stats(_dwell([]), _dwell([]))
    exact = aggregate.ExactCounts(counts=counts, rows_in=100, rows_by_status={"ok": 100}, persons=38,
                                  bounding=stats)
    text = repr(exact)
    assert "37" not in text
    assert "private" in text
