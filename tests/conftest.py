"""Shared fixtures: a pseudonymisation key, hand-made ping frames, job configs, a signed demo release."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import privmob as pm

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data-samples"
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_KEY = "0123456789abcdef" * 4  # 64 chars; a test-only secret that outputs are scanned for
PERIOD = dt.date(2026, 11, 26)
#: 2026-11-26 00:00 in Asia/Shanghai, as epoch seconds.
PERIOD_START = int(dt.datetime(2026, 11, 26, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp())


@pytest.fixture(autouse=True, scope="session")
def _private_key_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the CLIs they start) never read or write the user's cache of public keys."""
    old = os.environ.get("PRIVMOB_CACHE_DIR")
    os.environ["PRIVMOB_CACHE_DIR"] = str(tmp_path_factory.mktemp("privmob-cache"))
    yield
    if old is None:
        del os.environ["PRIVMOB_CACHE_DIR"]
    else:
        os.environ["PRIVMOB_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _private_ledger(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Releases without [budget] charge a per-test ledger (never the user's own), and so do
    the CLIs tests start (they inherit os.environ)."""
    path = tmp_path_factory.mktemp("privmob-ledger") / "ledger.sqlite"
    monkeypatch.setenv("PRIVMOB_LEDGER", str(path))
    return path


@pytest.fixture(scope="session")
def signed_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A genuine demo release (``privmob demo``, signed with a throw-away key) and that key's
    fingerprint, made once per session: tests read it or copy it, never change it."""
    import contextlib
    import io
    import re

    from privmob.cli import main

    out = tmp_path_factory.mktemp("signed-demo") / "release"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["demo", "--out", str(out)]) == 0
    found = re.search(r"--fingerprint (SHA256:\S+)\)", text.getvalue())
    assert found, text.getvalue()
    return out, found.group(1)


@contextmanager
def fresh_ledger(epsilon_per_day: float | None = None) -> Iterator[Path]:
    """A new default ledger for one block: for tests (property tests) that release many
    times, each example as a first release of its own population. With ``epsilon_per_day``
    the ledger is made with one population declared at that cap (which a job without
    [budget] then charges)."""
    from privmob.governance.ledger import Ledger, budget_from

    with tempfile.TemporaryDirectory(prefix="privmob-ledger-") as tmp, \
            pytest.MonkeyPatch.context() as mp:
        path = Path(tmp) / "ledger.sqlite"
        mp.setenv("PRIVMOB_LEDGER", str(path))
        if epsilon_per_day is not None:
            Ledger(path).declare("test-population", budget_from(epsilon_per_day, 1e-6, None),
                                 operator="tests", reason="a test that releases at a high ε")
        yield path


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Put the test pseudonymisation key in the default environment variable."""
    monkeypatch.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
    yield TEST_KEY


def pings(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """A frame from (person_id, ts, lat, lng, group) tuples; ts as epoch seconds or text."""
    return pl.DataFrame(
        rows, schema=["person_id", "ts", "lat", "lng", "group"], orient="row"
    )


def config(**sections: dict[str, Any]) -> pm.JobConfig:
    """A valid JobConfig for the test period, with per-section overrides."""
    data: dict[str, dict[str, Any]] = {
        "job": {"operator": "tester", "period": PERIOD.isoformat()},
        "privacy": {},
        "grid": {},
        "scope": {},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return pm.JobConfig.from_dict(data)


@pytest.fixture
def make_config() -> Callable[..., pm.JobConfig]:
    return config


@pytest.fixture
def sample_boundary() -> Path:
    return SAMPLES / "beijing_boundary.geojson"


@pytest.fixture
def sample_pings() -> Path:
    return SAMPLES / "beijing_pings.parquet"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (tests that use ../shared/data need it)")
    return path
