"""A run with no usable row is refused (exit 2), releases nothing and spends nothing.

Without the refusal such a run published pure noise — every key's count is noise alone —
and charged the budget, with exit 0: a stale day, epoch-millisecond timestamps (every row
"out of period"), a group column that matches no key group, or a boundary that holds no
fix. ``[job] allow_empty = true`` is the explicit way to release anyway.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import privmob as pm
from privmob.cli import main
from privmob.governance.ledger import Ledger
from tests.conftest import PERIOD_START, TEST_KEY, config, pings

SECRET_ID = "13812345678"  # a phone number as person id: must never reach a message


def _rows(ts_scale: int = 1, group: str = "confirmed", day: int = 0) -> list[tuple[object, ...]]:
    return [(f"{SECRET_ID}{p}", (PERIOD_START + day * 86400 + 600 * p) * ts_scale, 39.9087, 116.3975, group)
            for p in range(12)]


@pytest.mark.parametrize(("rows", "hint"), [
    (_rows(ts_scale=1000), "epoch milliseconds"),
    (_rows(day=-1), "[job] period"),
    (_rows(group="general_public"), "[scope] groups"),
])
def test_python_release_with_no_usable_rows_is_refused(
        key_env: str, rows: list[tuple[object, ...]], hint: str) -> None:
    plan = pm.plan(config())
    with pytest.raises(pm.InputError, match="no usable rows") as info:
        plan.release(pings(rows))
    message = str(info.value)
    assert hint in message and "allow_empty" in message and "12" in message
    assert SECRET_ID not in message and str(PERIOD_START * 1000) not in message


def test_allow_empty_releases_pure_noise_when_asked(key_env: str) -> None:
    plan = pm.plan(config(job={"allow_empty": True}))
    release = plan.release(pings(_rows(ts_scale=1000)))
    assert release.manifest["cells_released"] == release.table.height


def test_allow_empty_must_be_a_boolean() -> None:
    with pytest.raises(pm.ConfigError, match="allow_empty"):
        config(job={"allow_empty": "yes"})


def _job(tmp: Path, data: Path, *, allow_empty: bool) -> Path:
    key = tmp / "pseudonym.key"
    key.write_text(TEST_KEY)
    key.chmod(0o600)
    job = tmp / "job.toml"
    job.write_text(f"""
[job]
operator = "cdc-analyst-01"
input = "{data.as_posix()}"
output = "out/{{period}}"
period = "2026-11-26"
dataset = "city"
key_file = "pseudonym.key"
reports = false
allow_empty = {str(allow_empty).lower()}
[privacy]
epsilon = 1.0
[budget]
ledger = "state/ledger.sqlite"
epsilon_per_day = 2.0
""", encoding="utf-8")
    return job


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_cli_run_with_epoch_ms_exits_2_spends_nothing_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    # integers in Parquet are read as epoch seconds (so: out of period); text in CSV as
    # unparseable (beyond 1e12): both are refused, with a hint about milliseconds
    data = tmp_path / f"pings.{kind}"
    frame = pings(_rows(ts_scale=1000))
    frame.write_parquet(data) if kind == "parquet" else frame.write_csv(data)
    job = _job(tmp_path, data, allow_empty=False)
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "no usable rows" in err and "epoch milliseconds" in err and SECRET_ID not in err
    assert ("out_of_period" if kind == "parquet" else "ts_unparseable") in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    assert all(c["state"] == "cancelled" for c in ledger.charges())
    assert all(float(r.spent) == 0 for r in ledger.rows())

    # the same day, explicitly allowed: released and charged
    job = _job(tmp_path, data, allow_empty=True)
    assert main(["run", str(job)]) == 0
    assert any((tmp_path / "out").rglob("*"))
    assert sum(float(r.spent) for r in Ledger(tmp_path / "state" / "ledger.sqlite").rows()) == 1.0


def test_epoch_ms_hint_counts_rows_without_values() -> None:
    from privmob.backends import get_backend
    from privmob.stages.pseudonymise import Pseudonymiser

    exact = get_backend("polars").exact_cells(
        pings(_rows(ts_scale=1000)[:5] + _rows()[5:]), config(),
        Pseudonymiser(TEST_KEY.encode(), "p"), None)
    assert exact.rows_epoch_ms == 5
    assert exact.rows_by_status == {"ok": 7, "out_of_period": 5}
    assert isinstance(exact.counts, pl.DataFrame)
