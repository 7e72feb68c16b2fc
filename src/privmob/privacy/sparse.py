"""Stage 7b — sparse noise: noise-then-suppress without drawing noise for every empty key.

A release with public keys publishes ``{(i, x_i + Z_i) : x_i + Z_i ≥ τ}`` with ``Z_i`` iid
OpenDP noise. A city day at H3 res 8 has ~765k public keys, almost all with a true count
far below τ; noising each costs ~5 µs, more than indexing 10M pings. Keys with the same
true count ``c`` are exchangeable, so for them the release is fully described by *which*
keys clear τ (an iid Bernoulli(q_c) sequence, q_c = P(Z ≥ τ − c)) and *by how much* (iid
draws of Z given Z ≥ τ − c). This module samples exactly those two things:

* the positions by geometric skips, ``G = ⌊ln U / ln(1 − q_c)⌋`` failures before the next
  success — the textbook construction of a Bernoulli sequence from its gaps;
* each value by inversion of the conditional tail (for the discrete Laplace the tail is
  again geometric; for the discrete Gaussian the conditional CDF is walked).

Exactness, not floating point: ``U`` is a uniform real revealed lazily, 64 bits at a time,
from OpenDP's own sampler (randomized response on a bit vector with flip probability 1/2,
i.e. ``sample_bernoulli(1/2)`` per bit); every comparison is decided with Arb's rigorous
ball arithmetic (python-flint) and, when a ball straddles a boundary, U gets more bits and
the arithmetic more precision until it does not. The output distribution is therefore the
same as noising every key with OpenDP and suppressing (docs/adr/0005, tested in
tests/statistical/test_sparse.py) — so the privacy guarantee is the same, too.

The bits are only as fair as OpenDP's: 0.12–0.14 never flipped the last bit of a vector
(opendp/opendp#2707). So privmob requires OpenDP ≥ 0.15 and, the first time a process needs
bits, checks the source (:func:`check_bit_source`) and refuses to sample from an unfair one.

Classes where clearing τ is common (q_c above :data:`SPARSE_MAX_Q`) and counts ≥ τ are
noised key by key with :func:`privmob.privacy.mechanism.noise_counts`, as before.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from privmob.errors import PrivmobError
from privmob.privacy import mechanism

if TYPE_CHECKING:
    from privmob.privacy.mechanism import NoiseModel

__all__ = ["DESCRIPTION", "MIN_OPENDP", "SPARSE_MAX_Q", "BitSourceError", "check_bit_source",
           "exceed_probability", "noise_and_suppress"]

#: What the manifest says about how public keys were noised.
DESCRIPTION = (
    "OpenDP exact samplers; keys whose chance to clear the threshold is at most 1/32 are "
    "sampled by exact geometric skips and conditional tails (docs/adr/0005): the same "
    "distribution as noising every key, without a draw per empty key"
)

#: The sparse route costs ~65–130 µs per key that clears τ (skip + value, exact arithmetic);
#: per-key OpenDP noise ~5.6 µs (Laplace) to ~10 µs (Gaussian) a key. Break-even is near
#: q = 0.08–0.14; 1/32 keeps a margin of 2.5–5×. Any value gives the same distribution.
SPARSE_MAX_Q = 1 / 32

_START_PREC = 96  # bits of Arb precision for a first attempt; doubled on every refinement
_WORD = 64  # bits of U revealed per refinement


def noise_and_suppress(
    model: NoiseModel,
    counts: npt.NDArray[np.int64],
    threshold: int,
    *,
    max_q: float = SPARSE_MAX_Q,
    workers: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions (ascending) and noisy values of the keys whose noisy count is ≥ ``threshold``.

    Same output distribution as ``noisy = noise_counts(model, counts); keep = noisy ≥ τ``;
    ``max_q`` only chooses which keys take the sparse route (0 turns it off).
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sparse_idx: list[npt.NDArray[np.int64]] = []
    sparse_val: list[npt.NDArray[np.int64]] = []
    dense = np.ones(n, dtype=bool)
    sampler: _TailSampler | None = None
    for c, members in _classes(counts):
        t = threshold - c
        if t < 1 or max_q <= 0 or model.tail(t) > max_q:
            continue  # likely to clear τ: cheaper to noise key by key
        sampler = sampler or _TailSampler(model)
        picks = sampler.exceeding(members.size, t)
        dense[members] = False
        if picks:
            sparse_idx.append(members[np.array(picks, dtype=np.int64)])
            sparse_val.append(c + np.array([sampler.tail_value(t) for _ in picks], dtype=np.int64))
    dense_idx = np.flatnonzero(dense)
    noisy = mechanism.noise_counts(model, counts[dense_idx], workers=workers)
    keep = mechanism.suppress(noisy, threshold)
    idx = np.concatenate([dense_idx[keep], *sparse_idx]).astype(np.int64)
    val = np.concatenate([noisy[keep], *sparse_val]).astype(np.int64)
    by_pos = np.argsort(idx, kind="stable")
    return idx[by_pos], val[by_pos]


def _classes(counts: npt.NDArray[np.int64]) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    """(true count, its keys in ascending order) for every count present."""
    zero = counts == 0  # most public keys: found without sorting them
    if zero.any():
        yield 0, np.flatnonzero(zero)
    others = np.flatnonzero(~zero)
    if others.size == 0:
        return
    order = others[np.argsort(counts[others], kind="stable")]  # stable: ascending within a class
    values, starts = np.unique(counts[order], return_index=True)
    ends = np.append(starts[1:], order.size)
    for c, lo, hi in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True):
        yield c, order[lo:hi]


def exceed_probability(model: NoiseModel, t: int, prec: int = 128) -> Any:
    """P(Z ≥ t) for the model's noise Z, as an Arb ball (rigorous enclosure) at ``prec`` bits."""
    return _TailSampler(model).q(t, prec)


# -- exact arithmetic ---------------------------------------------------------------------


@contextmanager
def _precision(prec: int) -> Iterator[None]:
    from flint import ctx

    old = ctx.prec
    ctx.prec = prec
    try:
        yield
    finally:
        ctx.prec = old


#: The oldest OpenDP whose randomized response flips every bit: 0.12–0.14 sample only n − 1
#: of n bits (opendp/opendp#2707), so the last bit of every vector would stay 0 here.
MIN_OPENDP = (0, 15)
#: Vectors drawn by the self-check: every one of a vector's 4096 bit positions must take
#: both values across them; a fair source fails that with p ≤ 4096·2^(1−48) ≈ 3e-11.
_CHECK_DRAWS = 48
#: False-refusal probability of the ones-count check (Hoeffding bound, two-sided).
_CHECK_ALPHA = 1e-9


class BitSourceError(PrivmobError, RuntimeError):
    """OpenDP's bit source is not fair: sparse sampling would not have its stated law."""


def _opendp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opendp")
    except PackageNotFoundError:  # pragma: no cover - imported, so installed
        return "unknown"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_bit_source(draw: Callable[[bytes], bytes], version: str, n_bytes: int) -> None:
    """Refuse a bit source that is not fair before any key is sampled from it.

    ``draw`` is the randomized response used by :class:`_Bits` (all-zero input, so its
    output *is* the flips). Refused: an OpenDP older than :data:`MIN_OPENDP`; a bit
    position (within the vectors) that never changes over :data:`_CHECK_DRAWS` vectors —
    the signature of OpenDP 0.12–0.14, whose last bit is never flipped; a ones-count
    outside the Hoeffding band at α = 1e-9. A fair source passes except with p < 1e-9.
    """
    fix = "install opendp >= 0.15 (pip install -U 'opendp>=0.15'), as privmob requires"
    if _version_tuple(version) < MIN_OPENDP:
        raise BitSourceError(f"OpenDP {version} is too old for exact sparse sampling (its "
                             f"randomized response leaves one bit per vector unflipped); {fix}")
    width = 8 * n_bytes
    seen_one = seen_zero = 0
    ones = 0
    for _ in range(_CHECK_DRAWS):
        out = draw(bytes(n_bytes))
        word = int.from_bytes(out, "big")
        if len(out) != n_bytes:
            raise BitSourceError(f"OpenDP {version} returned {len(out)} bytes for {n_bytes}; {fix}")
        seen_one |= word
        seen_zero |= ~word & ((1 << width) - 1)
        ones += word.bit_count()
    constant = width - (seen_one & seen_zero).bit_count()
    if constant:
        raise BitSourceError(
            f"OpenDP {version}'s random bits are not fair: {constant} bit position(s) of "
            f"{width} never changed over {_CHECK_DRAWS} draws; {fix}")
    n = _CHECK_DRAWS * width
    band = math.sqrt(n * math.log(2 / _CHECK_ALPHA) / 2)
    if abs(ones - n / 2) > band:
        raise BitSourceError(
            f"OpenDP {version}'s random bits are not fair: {ones} ones in {n} bits; {fix}")


_CHECKED: dict[str, bool] = {}


class _Bits:
    """Uniform random bits from OpenDP: randomized response with f = 1 flips each bit of
    the input with probability exactly 1/2 (OpenDP's exact Bernoulli sampler).

    The first source made in a process is checked (:func:`check_bit_source`) before any
    bit of it is used; the result is kept for the process.
    """

    _BYTES = 512

    def __init__(self) -> None:
        self._meas = _bit_source()
        if not _CHECKED.get("ok"):
            check_bit_source(self._meas, _opendp_version(), self._BYTES)
            _CHECKED["ok"] = True
        self._pool = 0
        self._have = 0

    def take(self, k: int) -> int:
        while self._have < k:
            fresh = int.from_bytes(self._meas(bytes(self._BYTES)), "big")
            self._pool = (self._pool << (8 * self._BYTES)) | fresh
            self._have += 8 * self._BYTES
        self._have -= k
        out = self._pool >> self._have
        self._pool &= (1 << self._have) - 1
        return out


def _bit_source() -> Callable[[bytes], bytes]:
    """OpenDP's randomized response on a bit vector with f = 1: each bit flips w.p. 1/2."""
    dp = mechanism.opendp()
    meas: Callable[[bytes], bytes] = dp.m.make_randomized_response_bitvec(
        dp.bitvector_domain(max_weight=1), dp.discrete_distance(), f=1.0)
    return meas


class _Uniform:
    """A uniform real U in (0, 1) of which only the first ``bits`` binary digits are known."""

    def __init__(self, source: _Bits) -> None:
        self._source = source
        self.num = source.take(_WORD)
        self.bits = _WORD

    def refine(self) -> None:
        self.num = (self.num << _WORD) | self._source.take(_WORD)
        self.bits += _WORD

    def ball(self) -> Any:
        """An Arb ball containing [num/2^bits, (num+1)/2^bits], the interval U is in."""
        from flint import arb

        return (arb(2 * self.num + 1) + arb(0, 1)) / arb(2) ** (self.bits + 1)


class _TailSampler:
    """Exact skips and conditional tail draws for one noise model."""

    def __init__(self, model: NoiseModel) -> None:
        if model.mechanism not in ("laplace", "gaussian"):  # pragma: no cover - config validates
            raise ValueError(f"no exact tail for mechanism {model.mechanism!r}")
        self.model = model
        self._tails: dict[int, dict[int, Any]] = {}  # prec → t → Σ_{z≥t} w_z

    @functools.cached_property
    def bits(self) -> _Bits:
        """The bit source, made (and so checked) only when a draw first needs it."""
        return _Bits()

    # P(Z ≥ t), t ≥ 1, as a rigorous ball ---------------------------------------------------
    @functools.cache  # noqa: B019 - one sampler per release, few (t, prec)
    def q(self, t: int, prec: int) -> Any:
        from flint import arb

        with _precision(prec + 16):
            s = arb(self.model.scale)  # the float is a dyadic rational: exact in Arb
            if self.model.mechanism == "laplace":
                # p(z) = (1−b)/(1+b)·b^|z|, b = e^{−1/s}  ⇒  P(Z ≥ t) = b^t / (1 + b)
                b = (-1 / s).exp()
                return (-t / s).exp() / (1 + b)
            return self._gauss_tail(t, prec) / self._gauss_total(prec)

    @functools.cache  # noqa: B019
    def _gauss_total(self, prec: int) -> Any:
        """Σ_z e^{−z²/2σ²} = σ√(2π)·(1 + 2Σ_{j≥1} e^{−2π²σ²j²}) (Poisson summation)."""
        from flint import arb

        with _precision(prec + 16):
            s = arb(self.model.scale)
            r = (-2 * arb.pi() ** 2 * s**2).exp()  # < e^{-19.7} for σ ≥ 1: few terms
            series, j, tiny = arb(0), 1, arb(2) ** (-prec - 8)
            while True:
                term = r ** (j * j)
                series += term
                j += 1
                if term < tiny:
                    break
            rest = r ** (j * j) / (1 - r)  # ≥ Σ_{i≥j} r^{i²}
            series += rest / 2 + arb(0, 1) * rest / 2
            return s * (2 * arb.pi()).sqrt() * (1 + 2 * series)

    def _gauss_tail(self, t: int, prec: int) -> Any:
        """Σ_{z≥t} e^{−z²/2σ²}: summed until the terms are negligible, plus a bound on the rest.

        Classes are visited with falling t, so a tail already known for some u > t is reused:
        S(t) = S(u) + Σ_{t≤z<u} w_z — a handful of terms instead of a whole sum per class.
        """
        from flint import arb

        known = self._tails.setdefault(prec, {})
        if t in known:
            return known[t]
        with _precision(prec + 32):
            above = [u for u in known if u > t]
            if above:
                u = min(above)
                total, _ = self._gauss_terms(t, stop=lambda k, term, acc: k >= u)
                known[t] = total + known[u]
                return known[t]
            tiny = arb(2) ** (-prec - 8)
            total, (k, term) = self._gauss_terms(t, stop=lambda k, term, acc: term < tiny * acc)
            # Σ_{z≥k} e^{−z²/2σ²} ≤ term_k · Σ_j e^{−jk/σ²} = term_k / (1 − e^{−k/σ²})
            rest = term / (1 - (-arb(k) / arb(self.model.scale) ** 2).exp())
            known[t] = total + rest / 2 + arb(0, 1) * rest / 2
            return known[t]

    def _gauss_terms(self, t: int, stop: Any) -> tuple[Any, tuple[int, Any]]:
        """Σ_{t≤z<k} e^{−z²/2σ²} for the first k where ``stop(k, w_k, sum)``; also (k, w_k)."""
        from flint import arb

        s2 = arb(self.model.scale) ** 2
        term = (-arb(t) ** 2 / (2 * s2)).exp()
        ratio = (-(2 * arb(t) + 1) / (2 * s2)).exp()  # w_{k+1} / w_k
        step = (-1 / s2).exp()  # ratio_{k+1} / ratio_k
        total, k = arb(0), t
        while not stop(k, term, total):
            total += term
            k += 1
            term *= ratio
            ratio *= step
        return total, (k, term)

    # sampling -----------------------------------------------------------------------------
    def exceeding(self, n: int, t: int) -> list[int]:
        """Indices in ``range(n)`` of the keys whose noise clears ``t``: iid Bernoulli(q)."""
        out: list[int] = []
        pos = -1
        while True:
            pos += 1 + self._geometric(lambda prec: (-self.q(t, prec)).log1p())
            if pos >= n:
                return out
            out.append(pos)

    def tail_value(self, t: int) -> int:
        """One draw of Z given Z ≥ t (t ≥ 1)."""
        if self.model.mechanism == "laplace":
            # given Z ≥ t ≥ 0, Z − t is geometric: P(Z − t ≥ k) = e^{−k/s}
            from flint import arb

            scale = self.model.scale
            return t + self._geometric(lambda prec: -1 / arb(scale))
        return self._gauss_tail_value(t)

    def _geometric(self, log_r: Any) -> int:
        """⌊ln U / ln r⌋, i.e. G with P(G ≥ k) = r^k; ``log_r(prec)`` encloses ln r < 0."""
        u = _Uniform(self.bits)
        prec = _START_PREC
        while True:
            with _precision(prec):
                g = (u.ball().log() / log_r(prec)).floor().unique_fmpz()
            if g is not None:
                return int(g)
            u.refine()
            prec *= 2

    def _gauss_tail_value(self, t: int) -> int:
        """Invert the CDF of Z | Z ≥ t: the k with A_k ≤ U·S < A_{k+1}, A_k = Σ_{t≤z<k} w_z."""
        u = _Uniform(self.bits)
        prec = _START_PREC
        while True:
            with _precision(prec + 32):
                target = u.ball() * self._gauss_tail(t, prec)
                # walk while U·S is certainly past A_{k+1}; stop when below it, or undecided
                total, (k, term) = self._gauss_terms(t, stop=lambda k, w, acc, x=target: not x >= acc + w)
                if target < total + term:
                    return k
            u.refine()
            prec *= 2
