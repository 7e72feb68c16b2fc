"""``min_count`` holds under noise (ADR 0002): a key with ``min_count - 1`` persons is
published at most ``max_below_min_rate`` of the time, by the samplers a release uses.

OpenDP's samplers cannot be seeded, so the test compares the published share of many
such keys with the rate the threshold was set for (a binomial test at ALPHA); a control
with the bare floor shows the same keys are published far more often without the rule.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from privmob.config import PrivacyConfig
from privmob.privacy.mechanism import Sensitivity
from privmob.privacy.noising import noise_table
from privmob.privacy.tablespec import PublicKeys, min_count_floor, spec

ALPHA = 1e-4
N_KEYS = 40_000
MIN_COUNT = 10


def _published_share(privacy: PrivacyConfig) -> tuple[float, float, int]:
    """(published share, the share the spec's noise model predicts, threshold) for N_KEYS
    public keys that all hold ``min_count - 1`` persons."""
    cells = np.arange(N_KEYS, dtype=np.uint64)
    keys = PublicKeys((("cell", cells), ("window", np.zeros(1, dtype=np.int64))), "test")
    s = spec("occupancy", privacy, Sensitivity(2, 2), keys)
    exact = pl.DataFrame({"cell": cells, "window": np.zeros(N_KEYS, dtype=np.int64),
                          "count": np.full(N_KEYS, MIN_COUNT - 1, dtype=np.int64)})
    released = noise_table(s, exact).frame.height
    return released / N_KEYS, s.noise.tail(s.threshold - (MIN_COUNT - 1)), s.threshold


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_a_key_just_under_min_count_is_published_at_most_the_stated_rate(mechanism: str) -> None:
    privacy = PrivacyConfig(mechanism=mechanism, min_count=MIN_COUNT, max_spurious_rate=0.5)
    share, predicted, threshold = _published_share(privacy)
    assert predicted <= privacy.max_below_min_rate
    assert threshold > MIN_COUNT  # the rule binds here: the noise alone would allow 10
    k = round(share * N_KEYS)
    assert stats.binomtest(k, N_KEYS, predicted).pvalue > ALPHA
    assert share < privacy.max_below_min_rate


def test_control_the_bare_floor_publishes_such_keys_far_more_often() -> None:
    bare = PrivacyConfig(mechanism="laplace", min_count=MIN_COUNT, max_spurious_rate=0.5,
                         max_below_min_rate=0.5)
    share, _, threshold = _published_share(bare)
    assert threshold == MIN_COUNT
    assert share > 0.2


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_the_floor_is_the_lowest_that_meets_the_rate(rate: float) -> None:
    privacy = PrivacyConfig(mechanism="laplace", min_count=MIN_COUNT, max_below_min_rate=rate)
    s = spec("t", privacy, Sensitivity(3, 3),
             PublicKeys((("cell", np.arange(5, dtype=np.uint64)),), "test"))
    floor = min_count_floor(s.noise, privacy)
    below = MIN_COUNT - 1
    assert s.noise.tail(floor - below) <= rate < s.noise.tail(floor - 1 - below)
    assert s.threshold >= floor
