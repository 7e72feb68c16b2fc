"""privmob.privacy.sparse: exact enclosures, the routing between sparse and per-key noise, edge cases.

The distributional claim itself is tested in tests/statistical/test_sparse.py.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flint import arb
from scipy import stats

from privmob.privacy import mechanism, sparse
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.mechanism import NoiseModel, Sensitivity


def model(kind: str, scale: float) -> NoiseModel:
    return NoiseModel(kind, scale, Sensitivity(1, 24), PrivacyCost(Fraction(1)))


@pytest.mark.parametrize(("kind", "scale"), [("laplace", 0.7), ("laplace", 24.0), ("laplace", 900.0),
                                             ("gaussian", 0.8), ("gaussian", 24.38), ("gaussian", 600.0)])
@pytest.mark.parametrize("t_in_scales", [0.1, 1.0, 4.0])
def test_exceed_probability_encloses_the_pmf_tail(kind: str, scale: float, t_in_scales: float) -> None:
    m = model(kind, scale)
    t = max(1, round(t_in_scales * scale))
    ball = sparse.exceed_probability(m, t, prec=128)
    assert ball.rad() < arb(2) ** -100 * ball.mid()  # tight
    assert abs(float(ball.mid()) - m.tail(t)) <= 1e-12 * m.tail(t) + 1e-300


def test_gaussian_normaliser_matches_a_direct_sum() -> None:
    s = sparse._TailSampler(model("gaussian", 3.0))
    z = np.arange(-200, 201)
    direct = float(np.exp(-(z**2) / 18.0).sum())
    total = s._gauss_total(128)
    assert abs(float(total.mid()) - direct) < 1e-12 * direct
    # the tail from 1 and its mirror plus the centre is the whole
    tail1 = s._gauss_tail(1, 128)
    assert abs(float((1 + 2 * tail1 - total).mid())) < 1e-12


def test_bits_are_fresh_and_of_the_asked_width() -> None:
    bits = sparse._Bits()
    draws = [bits.take(64) for _ in range(200)]
    assert all(0 <= d < 2**64 for d in draws)
    assert len(set(draws)) == 200
    ones = sum(bin(d).count("1") for d in draws)
    assert stats.binomtest(ones, 64 * 200, 0.5).pvalue > 1e-4
    assert 0 <= bits.take(5000) < 2**5000  # more than one refill at once


def test_geometric_skip_has_the_geometric_law() -> None:
    s = sparse._TailSampler(model("laplace", 1.0))
    log_half = -arb(2).log()
    g = np.array([s._geometric(lambda prec: log_half) for _ in range(4000)])
    counts = np.bincount(np.minimum(g, 8), minlength=9)
    probs = np.array([0.5 ** (k + 1) for k in range(8)] + [0.5**8])
    assert stats.chisquare(counts, probs * g.size).pvalue > 1e-4


def test_refinement_terminates_and_keeps_the_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 4 bits of precision nearly every decision is ambiguous and must be refined."""
    monkeypatch.setattr(sparse, "_START_PREC", 4)
    m = model("gaussian", 2.0)
    s = sparse._TailSampler(m)
    draws = np.array([s.tail_value(3) for _ in range(1500)])
    assert draws.min() >= 3
    zs = np.arange(3, 12)
    probs = np.array([m.tail(int(z)) - m.tail(int(z) + 1) for z in zs]) / m.tail(3)
    observed = np.bincount(np.minimum(draws, 11) - 3, minlength=zs.size)
    probs[-1] = 1 - probs[:-1].sum()
    merged_o = [*observed[:4], observed[4:].sum()]
    merged_p = [*probs[:4], probs[4:].sum()]
    assert stats.chisquare(merged_o, np.array(merged_p) * draws.size).pvalue > 1e-4


def spy(monkeypatch: pytest.MonkeyPatch) -> list[npt.NDArray[np.int64]]:
    seen: list[npt.NDArray[np.int64]] = []
    real = mechanism.noise_counts

    def counting(m: NoiseModel, counts: npt.NDArray[np.int64], workers: int | None = None
                 ) -> npt.NDArray[np.int64]:
        seen.append(counts.copy())
        return real(m, counts, workers=workers)

    monkeypatch.setattr(mechanism, "noise_counts", counting)
    return seen


def test_empty_public_keys_are_not_noised_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy(monkeypatch)
    m = model("gaussian", 24.38)
    counts = np.zeros(500_000, dtype=np.int64)
    counts[:50] = 1000  # crowded: per-key
    counts[50:100] = 80  # P(clear 92) ≈ 0.3: per-key
    idx, val = sparse.noise_and_suppress(m, counts, 92)
    assert len(seen) == 1 and sorted(seen[0].tolist()) == [80] * 50 + [1000] * 50
    assert set(range(50)) <= set(idx.tolist())  # crowded keys always clear τ
    assert np.all(val >= 92) and np.all(np.diff(idx) > 0)
    # ≈ 500,000 × 8.7e-5 ≈ 44 empty keys clear τ; far from 0 and far from all.
    assert 5 < int((idx >= 100).sum()) < 150


def test_max_q_zero_is_plain_noise_and_suppress(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy(monkeypatch)
    counts = np.array([0, 5, 300, 0, 7], dtype=np.int64)
    idx, val = sparse.noise_and_suppress(model("laplace", 2.0), counts, 40, max_q=0)
    assert len(seen) == 1 and seen[0].tolist() == counts.tolist()
    assert idx.tolist() == [2] and 200 < val[0] < 400


def test_edges() -> None:
    m = model("laplace", 3.0)
    idx, val = sparse.noise_and_suppress(m, np.zeros(0, dtype=np.int64), 10)
    assert idx.size == val.size == 0 and idx.dtype == val.dtype == np.int64
    # threshold ≤ 0 or all counts ≥ τ: nothing sparse, nothing lost
    idx, val = sparse.noise_and_suppress(m, np.full(10, 100, dtype=np.int64), 10)
    assert idx.tolist() == list(range(10)) and np.all(np.abs(val - 100) < 60)
    idx, _ = sparse.noise_and_suppress(m, np.zeros(20, dtype=np.int64), -60)
    assert idx.tolist() == list(range(20))


# --- the bit source's self-check (issue 11) -----------------------------------------------


def _real_source() -> Any:
    return sparse._bit_source()


def _last_bit_never_flips(draw: Any) -> Any:
    """OpenDP 0.12–0.14's randomized response: bits 0..n-2 flipped, the last one never."""
    def faulty(data: bytes) -> bytes:
        out = bytearray(draw(data))
        out[-1] &= 0xFE  # the vector's last bit stays as the all-zero input had it
        return bytes(out)
    return faulty


def test_self_check_passes_the_installed_opendp() -> None:
    sparse.check_bit_source(_real_source(), sparse._opendp_version(), 512)


@pytest.mark.parametrize("faulty", [
    _last_bit_never_flips,
    lambda draw: (lambda data: bytes(b & 0x7F for b in draw(data))),  # a bit in every byte
    lambda draw: (lambda data: bytes(len(data))),  # nothing flips at all
])
def test_self_check_refuses_a_source_with_a_constant_bit(faulty: Any) -> None:
    with pytest.raises(sparse.BitSourceError, match=r"never changed.*opendp >= 0.15"):
        sparse.check_bit_source(faulty(_real_source()), "0.16.0", 512)


def test_self_check_refuses_biased_bits_and_old_versions() -> None:
    import os

    def biased(data: bytes) -> bytes:  # every position varies, but 3 ones in 4
        a, b = os.urandom(len(data)), os.urandom(len(data))
        return bytes(x | y for x, y in zip(a, b, strict=True))

    with pytest.raises(sparse.BitSourceError, match="ones in"):
        sparse.check_bit_source(biased, "0.16.0", 512)
    with pytest.raises(sparse.BitSourceError, match=r"OpenDP 0.14.0 is too old.*>= 0.15"):
        sparse.check_bit_source(_real_source(), "0.14.0", 512)
    sparse.check_bit_source(_real_source(), "0.15.0rc1", 512)


def test_sparse_sampling_refuses_before_using_a_faulty_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs the first time sparse sampling needs bits; a release then fails with
    a PrivmobError (exit 2) instead of publishing keys sampled from unfair bits."""
    from privmob.errors import PrivmobError

    monkeypatch.setattr(sparse, "_CHECKED", {})
    real = sparse._bit_source
    monkeypatch.setattr(sparse, "_bit_source", lambda: _last_bit_never_flips(real()))
    counts = np.zeros(10_000, dtype=np.int64)
    with pytest.raises(PrivmobError, match="not fair"):
        sparse.noise_and_suppress(model("laplace", 2.0), counts, 40)
    monkeypatch.setattr(sparse, "_bit_source", real)
    idx, _ = sparse.noise_and_suppress(model("laplace", 2.0), counts, 40)  # checked: fine
    assert sparse._CHECKED == {"ok": True}
    assert idx.size < 10
