"""The sparse noise path has the output distribution of noising every key and suppressing.

``privmob.privacy.sparse`` never draws noise for most sub-threshold public keys; ADR 0005 argues it
releases exactly what per-key noising + suppression would. These tests check that claim
where it could break, at a false-alarm rate ALPHA per check, on small noise scales so every
class clears τ often enough to give the tests power:

* how many keys of each true count clear τ — against Binomial(n·R, q_c), q_c from the
  model's pmf computed independently (numpy, not Arb);
* the released values of each class — against the exact conditional pmf of c + Z | Z ≥ τ − c;
* which keys — every key of a class equally often (dispersion), and neighbours independently;
* the whole output, class by class — against per-key OpenDP noising, as a two-sample test;
* controls: a wrong scale and a skip that never picks two neighbours are both rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from privmob.privacy import sparse
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.mechanism import NoiseModel, Sensitivity
from tests.statistical.test_noise import merged_chisquare

#: Per check. 22 checks per mechanism plus the two-sample tables: at 1e-6 a false alarm
#: anywhere in this file is ~1 in 20,000 runs; both controls still fail with p ≈ 0.
ALPHA = 1e-6
RUNS = 120

# (mechanism, scale, τ, {true count: keys}); the last class is above τ (noised per key).
CASES = {
    "laplace": ("laplace", 4.0, 12, {0: 3000, 2: 800, 5: 800, 9: 400, 11: 400, 20: 150}),
    "gaussian": ("gaussian", 4.0, 10, {0: 3000, 3: 800, 6: 800, 8: 400, 9: 400, 16: 150}),
}


def model_of(mechanism: str, scale: float) -> NoiseModel:
    return NoiseModel(mechanism, scale, Sensitivity(1, 1), PrivacyCost(Fraction(1)))


@dataclass
class Runs:
    model: NoiseModel
    threshold: int
    counts: npt.NDArray[np.int64]
    released: npt.NDArray[np.int64]  # (RUNS, keys): how often each key was released
    values: dict[int, npt.NDArray[np.int64]]  # true count → all released values of that class
    adjacent_both: dict[int, int]  # true count → pairs of class neighbours released together


def layout(classes: dict[int, int]) -> npt.NDArray[np.int64]:
    # Classes interleaved over the key vector, as true counts are in a city (fixed seed:
    # this only places counts; it is not privacy noise).
    counts = np.repeat(np.array(list(classes), dtype=np.int64), list(classes.values()))
    return np.random.default_rng(11).permutation(counts)


def run(model: NoiseModel, threshold: int, counts: npt.NDArray[np.int64], runs: int, *,
        max_q: float) -> Runs:
    released = np.zeros((runs, counts.size), dtype=bool)
    values: dict[int, list[npt.NDArray[np.int64]]] = {int(c): [] for c in np.unique(counts)}
    adjacent = dict.fromkeys(values, 0)
    members = {c: np.flatnonzero(counts == c) for c in values}
    for r in range(runs):
        idx, val = sparse.noise_and_suppress(model, counts, threshold, max_q=max_q)
        assert np.all(np.diff(idx) > 0), "positions come sorted and unique"
        assert np.all(val >= threshold), "nothing below τ is released"
        released[r, idx] = True
        for c in values:
            values[c].append(val[counts[idx] == c])
            hit = released[r, members[c]]
            adjacent[c] += int((hit[1:] & hit[:-1]).sum())
    return Runs(model, threshold, counts, released.astype(np.int64),
                {c: np.concatenate(v) for c, v in values.items()}, adjacent)


def pmf(model: NoiseModel) -> Callable[[int], float]:
    """P(Z = z), from the model's own float pmf — independent of the Arb code under test."""
    return lambda z: model.tail(z) - model.tail(z + 1)


def binomial_p(k: int, n: int, p: float) -> float:
    return float(stats.binomtest(k, n, p).pvalue)


def gof_p(observed: npt.NDArray[np.int64], probs: npt.NDArray[np.float64]) -> float:
    return merged_chisquare(observed, probs / probs.sum() * observed.sum())


def value_p(runs: Runs, c: int, truth: NoiseModel) -> float:
    t = runs.threshold - c
    zs = np.arange(t, t + int(truth.quantile(1 - 1e-12)) + 20)
    probs = np.array([pmf(truth)(int(z)) for z in zs])
    got = runs.values[c] - c
    observed = np.bincount(np.clip(got - t, 0, zs.size - 1), minlength=zs.size)
    probs[-1] += truth.tail(int(zs[-1]) + 1)
    return gof_p(observed, probs)


def checks(runs: Runs, truth: NoiseModel) -> dict[str, float]:
    """The p-value of every check, by name; the truth is per-key noising with ``truth``."""
    out: dict[str, float] = {}
    for c in np.unique(runs.counts).tolist():
        members = np.flatnonzero(runs.counts == c)
        q = truth.tail(runs.threshold - c)
        hits = runs.released[:, members]
        k, n = int(hits.sum()), hits.size
        out[f"count c={c}"] = binomial_p(k, n, q)
        if runs.values[c].size >= 40:
            out[f"values c={c}"] = value_p(runs, c, truth)
        if c < runs.threshold and 0.002 < q < 0.98:
            per_key = hits.sum(axis=0)
            var = hits.shape[0] * q * (1 - q)
            stat = float(((per_key - hits.shape[0] * q) ** 2 / var).sum())
            out[f"dispersion c={c}"] = float(2 * min(stats.chi2.sf(stat, members.size),
                                                     stats.chi2.cdf(stat, members.size)))
            pairs = hits.shape[0] * (members.size - 1)
            if pairs * q * q >= 20:
                out[f"neighbours c={c}"] = binomial_p(runs.adjacent_both[c], pairs, q * q)
    return out


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[NoiseModel, int, npt.NDArray[np.int64], Runs]:
    mechanism, scale, tau, classes = CASES[request.param]
    model = model_of(mechanism, scale)
    counts = layout(classes)
    return model, tau, counts, run(model, tau, counts, RUNS, max_q=1.0)


@pytest.mark.slow
def test_sparse_path_matches_exact_theory(case: tuple[NoiseModel, int, npt.NDArray[np.int64], Runs]) -> None:
    model, tau, counts, runs = case
    # Every sub-threshold class took the sparse route (max_q = 1), so this tests it alone.
    assert all(model.tail(tau - c) <= 1.0 for c in np.unique(counts) if c < tau)
    p = checks(runs, model)
    assert {k.split()[0] for k in p} == {"count", "values", "dispersion", "neighbours"}
    failed = {k: v for k, v in p.items() if v <= ALPHA}
    assert not failed, f"sparse output differs from per-key noising: {failed}"


@pytest.mark.slow
def test_sparse_path_matches_per_key_opendp_noising(
    case: tuple[NoiseModel, int, npt.NDArray[np.int64], Runs],
) -> None:
    """Two samples — sparse, and every key noised by OpenDP — with one outcome table per class."""
    model, tau, counts, sparse_runs = case
    dense_runs = run(model, tau, counts, RUNS, max_q=0.0)
    for c in np.unique(counts).tolist():
        n_keys = int((counts == c).sum()) * RUNS
        table = []
        for r in (sparse_runs, dense_runs):
            v = r.values[c]
            bins = np.bincount(np.clip(v - tau, 0, 30), minlength=31)  # released value, τ … τ+30+
            table.append([n_keys - v.size, *bins.tolist()])
        arr = np.array(table)
        arr = arr[:, arr.sum(axis=0) >= 10]
        if arr.shape[1] >= 2:
            assert stats.chi2_contingency(arr).pvalue > ALPHA, f"class {c}: {arr.tolist()}"


@pytest.mark.slow
def test_checks_reject_a_wrong_scale(case: tuple[NoiseModel, int, npt.NDArray[np.int64], Runs]) -> None:
    """Control: sparse output at a 15% larger scale fails the same checks against the truth."""
    model, tau, counts, _ = case
    wider = model_of(model.mechanism, model.scale * 1.15)
    p = checks(run(wider, tau, counts, RUNS, max_q=1.0), model)
    assert min(p.values()) < ALPHA


@pytest.mark.slow
def test_checks_reject_positions_that_are_not_independent(
    case: tuple[NoiseModel, int, npt.NDArray[np.int64], Runs], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: a skip that can never pick two neighbours (G + 2) is caught."""
    model, tau, counts, _ = case
    original = sparse._TailSampler._geometric

    def one_more(self: sparse._TailSampler, log_r: object) -> int:
        return original(self, log_r) + 1

    def exceeding(self: sparse._TailSampler, n: int, t: int) -> list[int]:
        out, pos = [], -1
        while True:
            pos += 1 + one_more(self, lambda prec: (-self.q(t, prec)).log1p())
            if pos >= n:
                return out
            out.append(pos)

    monkeypatch.setattr(sparse._TailSampler, "exceeding", exceeding)
    p = checks(run(model, tau, counts, RUNS, max_q=1.0), model)
    assert min(p.values()) < ALPHA
