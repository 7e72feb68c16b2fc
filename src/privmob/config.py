"""The job configuration: one frozen, validated object that fixes every privacy parameter.

A typo in a privacy setting must never silently fall back to a default, so unknown keys
are errors (with a "did you mean" hint) and every value is range-checked here, once.
Relative paths in a job file are resolved against the file's own folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from privmob.errors import ConfigError

__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_MARKING",
    "BudgetConfig",
    "GridConfig",
    "JobConfig",
    "JobSection",
    "PrivacyConfig",
    "ScopeConfig",
    "StoreConfig",
    "parse_duration",
]

DEFAULT_GROUPS: tuple[str, ...] = ("confirmed", "suspected", "close_contact")
DEFAULT_MARKING = (
    "疫情防控内部信息 · 未经授权不得传播 / "
    "Epidemic-control internal information — do not distribute without authorisation"
)
DEFAULT_PURPOSES: tuple[str, ...] = ("epidemic-prevention",)

Mechanism = Literal["laplace", "gaussian"]
OnBadRows = Literal["quarantine", "fail"]
Backend = Literal["polars", "spark"]
#: Coordinate systems of pings and boundaries; everything is converted to WGS-84 (GPS)
#: before indexing. Chinese map data is often GCJ-02 (or Baidu's BD-09) without saying so.
CoordinateSystem = Literal["wgs84", "gcj02", "bd09"]


def _check_crs(where: str, value: str) -> None:
    if value not in ("wgs84", "gcj02", "bd09"):
        raise ConfigError(f"{where} = {value!r}; use 'wgs84', 'gcj02' or 'bd09'")

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Parse ``"15m"``, ``"1h"`` or ``"1d"`` into seconds.

    Examples
    --------
    >>> parse_duration("1h"), parse_duration("30m"), parse_duration("1d")
    (3600, 1800, 86400)
    """
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(
            f"window {text!r} is not a duration; write it like '15m', '1h' or '1d'"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _parse_date(value: object, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(f"{where} = {value!r} is not a date; write it as YYYY-MM-DD")


@dataclass(frozen=True, kw_only=True)
class JobSection:
    """Who runs the job, why, on what, and for which period.

    ``period`` is the first local day the release covers; ``period_days`` how many. The
    period, not the data, defines the time windows, so the set of released keys never
    depends on who is in the input.
    """

    purpose: str = "epidemic-prevention"
    operator: str = ""
    input: Path | str | None = None
    output: Path = Path("out/release")
    timezone: str = "Asia/Shanghai"
    period: dt.date | None = None
    period_days: int = 1
    dataset: str = ""
    key_file: Path | None = None
    key_env: str = "PRIVMOB_PSEUDONYM_KEY"
    on_bad_rows: OnBadRows = "quarantine"
    quarantine: Path | None = None
    backend: Backend = "polars"
    allowed_purposes: tuple[str, ...] = DEFAULT_PURPOSES
    marking: str = DEFAULT_MARKING
    linkage_days: int = 1
    signing_key: Path | None = None
    reports: bool = True
    crs: CoordinateSystem = "wgs84"
    #: Release even when no row is usable (all out of period, scope or boundary): pure
    #: noise that spends budget. Off by default, so a stale or mis-exported day is refused.
    allow_empty: bool = False
    #: How many key-group persons the operator expects in one period: a public figure
    #: (case-management totals), never read from the data. With a boundary, plan() picks
    #: the window, the adaptive partition and the mechanism from it for every setting the
    #: job leaves out (privmob.pipeline.defaults; explain() says what and why).
    expected_persons: int | None = None

    def __post_init__(self) -> None:
        _check_crs("[job] crs", self.crs)
        if not 1 <= self.linkage_days <= 366:
            raise ConfigError(
                "[job] linkage_days must be from 1 (pseudonyms never link across days) to 366"
            )
        if self.purpose not in self.allowed_purposes:
            raise ConfigError(
                f"[job] purpose = {self.purpose!r} is not allowed; data collected for "
                f"epidemic control may only be used for: {', '.join(self.allowed_purposes)}"
            )
        if not self.operator.strip():
            raise ConfigError(
                "[job] operator is required: whoever runs a release answers for it; "
                "set operator = \"<your accountable id>\""
            )
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ConfigError(
                f"[job] timezone = {self.timezone!r} is not an IANA time zone; "
                "use a name like 'Asia/Shanghai'"
            ) from exc
        if not 1 <= self.period_days <= 366:
            raise ConfigError("[job] period_days must be between 1 and 366")
        if self.on_bad_rows not in ("quarantine", "fail"):
            raise ConfigError(
                f"[job] on_bad_rows = {self.on_bad_rows!r}; use 'quarantine' or 'fail'"
            )
        if self.backend not in ("polars", "spark"):
            raise ConfigError(f"[job] backend = {self.backend!r}; use 'polars' or 'spark'")
        if not self.marking.strip():
            raise ConfigError("[job] marking must not be empty: internal information is marked")
        check_output_template(self.output)
        if self.expected_persons is not None and (
                not isinstance(self.expected_persons, int) or isinstance(self.expected_persons, bool)
                or not 1 <= self.expected_persons <= 10**9):
            raise ConfigError("[job] expected_persons must be a whole number of persons from 1 to 10⁹")

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def output_root(template: Path | str) -> Path:
    """The fixed folder above ``{period}`` in an output template (the template itself if none).

    Every release the job writes must stay inside it (``out/{period}`` → ``out``).
    """
    fixed: list[str] = []
    for part in Path(template).parts:
        if "{period}" in part:
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def check_output_template(template: Path | str) -> None:
    """Refuse an output template that could leave its folder: ``..`` at or after ``{period}``.

    ``out/{period}/../../etc`` would write a release (or let ``--force`` pick a sibling)
    outside the job's output root. ``..`` before ``{period}`` only says where that root is
    (``../out/{period}``) and is fine. The substituted path is checked again when a run
    writes (``privmob.cli._output_dir``).
    """
    text = str(template)
    parts = re.split(r"[\\/]", text)
    variable = next((i for i, part in enumerate(parts) if "{period}" in part), len(parts))
    if ".." in parts[variable:]:
        raise ConfigError(
            f"[job] output = {text!r} goes up a level ('..') after {{period}}, out of its own "
            "folder; name the release folder below it (e.g. output = \"out/{period}\")"
        )


@dataclass(frozen=True, kw_only=True)
class ScopeConfig:
    """Minimum scope: which key groups may be processed at all."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    assume_group: str | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            raise ConfigError("[scope] groups must name at least one key group")
        if self.assume_group is not None and self.assume_group not in self.groups:
            raise ConfigError(
                f"[scope] assume_group = {self.assume_group!r} is not one of the key groups "
                f"{list(self.groups)}"
            )


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """Where and when: H3 resolution, window length and the optional public-key boundary."""

    resolution: int = 8
    window: str = "1h"
    boundary: Path | None = None
    boundary_where: Mapping[str, str] = field(default_factory=dict)
    boundary_crs: CoordinateSystem = "wgs84"
    #: Coarser resolutions released as well (hierarchical release for sparse areas): each
    #: is its own table with its own ``parent_epsilon`` share of the budget.
    parent_resolutions: tuple[int, ...] = ()
    parent_epsilon: float = 0.5

    def __post_init__(self) -> None:
        _check_crs("[grid] boundary_crs", self.boundary_crs)
        for r in self.parent_resolutions:
            if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < self.resolution:
                raise ConfigError(
                    f"[grid] parent_resolutions: {r!r} must be a resolution coarser than "
                    f"{self.resolution} (an integer from 0 to {self.resolution - 1})"
                )
        if not _finite_positive(self.parent_epsilon) or self.parent_epsilon > 20:
            raise ConfigError("[grid] parent_epsilon must be a number in (0, 20]")
        if not isinstance(self.resolution, int) or not 0 <= self.resolution <= 15:
            raise ConfigError(
                f"[grid] resolution = {self.resolution!r}; H3 resolutions are 0 to 15 "
                "(7 ≈ 5 km², 8 ≈ 0.7 km², 9 ≈ 0.1 km²)"
            )
        seconds = parse_duration(self.window)
        if seconds < 60 or 86400 % seconds:
            raise ConfigError(
                f"[grid] window = {self.window!r} must be at least 1 minute and divide a "
                "day evenly (e.g. '15m', '1h', '6h', '1d')"
            )

    @property
    def window_seconds(self) -> int:
        return parse_duration(self.window)


@dataclass(frozen=True, kw_only=True)
class AdaptiveConfig:
    """Adaptive resolution: a PrivTree partition of the boundary over the H3 hierarchy.

    With an ``[adaptive]`` section, occupancy is released on cells of mixed resolution:
    the boundary's cells at ``min_resolution`` are split into their seven children, level
    by level down to ``[grid] resolution``, only where the (noisy, biased) number of
    persons supports it (Zhang et al., SIGMOD 2016; docs/adr/0007). Dense areas come out
    fine, sparse ones coarse, so a small key group still yields counts the noise does not
    drown. ``tree_share`` of ``[privacy] epsilon`` pays for the partition (pure ε, whatever
    its depth); the rest pays for the counts, where each person contributes at most
    ``max_pairs`` (cell, window) pairs per period (their longest stays), so L1 = max_pairs.
    The threshold keeps the expected number of spurious cells in the whole table at or
    below ``[privacy] max_spurious_cells``.
    """

    min_resolution: int = 4
    tree_share: float = 0.15
    cells_per_person: int = 1
    #: PrivTree's θ: a cell is split when its biased noisy count exceeds it; 0 = automatic
    #: (2.5 × the fanout × the release threshold: the seven children of a split cell then
    #: hold, on average, counts the release can publish; privmob.privacy.tablespec).
    split_threshold: int = 0
    max_pairs: int = 6

    def __post_init__(self) -> None:
        if not isinstance(self.min_resolution, int) or isinstance(self.min_resolution, bool) \
                or not 0 <= self.min_resolution <= 15:
            raise ConfigError("[adaptive] min_resolution must be an H3 resolution from 0 to 15")
        if not _finite_positive(self.tree_share) or not self.tree_share < 1:
            raise ConfigError("[adaptive] tree_share must be a number in (0, 1): the share of "
                              "epsilon spent on the partition (e.g. 0.15)")
        if not isinstance(self.cells_per_person, int) or not 1 <= self.cells_per_person <= 64:
            raise ConfigError("[adaptive] cells_per_person must be an integer from 1 to 64")
        if not isinstance(self.split_threshold, int) or not 0 <= self.split_threshold <= 10**9:
            raise ConfigError("[adaptive] split_threshold must be an integer ≥ 0 (0 = automatic)")
        if not isinstance(self.max_pairs, int) or not 1 <= self.max_pairs <= 10_000:
            raise ConfigError("[adaptive] max_pairs must be an integer from 1 to 10000")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """The privacy parameters. See README "Privacy model" and docs/adr/0001.

    ``min_count`` is the policy floor on published counts, and it holds under noise: the
    release threshold is high enough that a key whose true count is just under it
    (``min_count - 1`` persons) is published at most ``max_below_min_rate`` of the time
    (default 5%; 0.5 gives the bare floor), not whenever noise lifts it over ``min_count``.
    The threshold is also at least the one that keeps spurious cells (empty keys released
    by noise alone) rare: with public keys, at most ``max_spurious_cells`` expected in a
    whole table (a per-release target: a table of 12 million keys needs a far higher
    threshold than one of 500); with data-dependent keys, or when ``max_spurious_rate`` is
    set, at most that rate per key (default 1e-4). Each rule depends on the noise and the
    key count only, never on the data.
    """

    mechanism: Mechanism = "gaussian"
    epsilon: float = 1.0
    delta: float = 1e-7
    rho: float | None = None
    max_cells_per_window: int = 1
    max_windows: int = 24
    min_count: int = 10
    max_spurious_rate: float | None = None
    max_spurious_cells: float = 1.0
    max_below_min_rate: float = 0.05

    #: The per-key rate where there is no public key set to spread a per-table target over.
    DEFAULT_SPURIOUS_RATE: ClassVar[float] = 1e-4

    @property
    def spurious_rate(self) -> float:
        """The per-key rate for threshold keys (or the one the job set)."""
        return self.DEFAULT_SPURIOUS_RATE if self.max_spurious_rate is None else self.max_spurious_rate

    def __post_init__(self) -> None:
        if self.mechanism not in ("laplace", "gaussian"):
            raise ConfigError(
                f"[privacy] mechanism = {self.mechanism!r}; use 'laplace' or 'gaussian'"
            )
        if not _finite_positive(self.epsilon) or self.epsilon > 20:
            raise ConfigError(
                f"[privacy] epsilon = {self.epsilon!r} must be a number in (0, 20]; "
                "typical values are 0.1 to 2"
            )
        if not _finite_positive(self.delta) or self.delta >= 1e-3:
            raise ConfigError(
                f"[privacy] delta = {self.delta!r} must be in (0, 1e-3); use e.g. 1e-7"
            )
        if self.rho is not None:
            if self.mechanism != "gaussian":
                raise ConfigError("[privacy] rho applies to mechanism = 'gaussian' only")
            if not _finite_positive(self.rho) or self.rho > 10:
                raise ConfigError(f"[privacy] rho = {self.rho!r} must be in (0, 10]")
        if not isinstance(self.max_cells_per_window, int) or not 1 <= self.max_cells_per_window <= 64:
            raise ConfigError("[privacy] max_cells_per_window must be an integer from 1 to 64")
        if not isinstance(self.max_windows, int) or not 1 <= self.max_windows <= 10_000:
            raise ConfigError("[privacy] max_windows must be an integer from 1 to 10000")
        if not isinstance(self.min_count, int) or not 1 <= self.min_count <= 1_000_000_000:
            raise ConfigError(
                f"[privacy] min_count = {self.min_count!r} must be an integer from 1 to 10⁹ "
                "(0 would publish every noisy key, including empty ones)"
            )
        if self.max_spurious_rate is not None and not 0 < self.max_spurious_rate <= 0.5:
            raise ConfigError("[privacy] max_spurious_rate must be in (0, 0.5]")
        if not _finite_positive(self.max_spurious_cells) or self.max_spurious_cells > 1000:
            raise ConfigError("[privacy] max_spurious_cells must be a number in (0, 1000]: the "
                              "expected empty cells noise may publish in a table (e.g. 1)")
        if not _finite_positive(self.max_below_min_rate) or self.max_below_min_rate > 0.5:
            raise ConfigError("[privacy] max_below_min_rate must be a number in (0, 0.5]: how "
                              "often a key just under min_count may be published (e.g. 0.05)")


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """The persistent privacy budget: a ledger file and what each local day may spend.

    Set ``epsilon_per_day`` (releases compose by adding ε and δ) or ``rho_per_day``
    (zCDP: releases compose by adding ρ, Laplace ones counting ε²/2; ``delta_per_day``
    then bounds only the δ of key selection).
    """

    ledger: Path
    epsilon_per_day: float | None = None
    delta_per_day: float = 1e-6
    rho_per_day: float | None = None
    audit_log: Path | None = None

    def __post_init__(self) -> None:
        if (self.epsilon_per_day is None) == (self.rho_per_day is None):
            raise ConfigError("[budget] set exactly one of epsilon_per_day or rho_per_day")
        for name in ("epsilon_per_day", "rho_per_day"):
            value = getattr(self, name)
            if value is not None and (not _finite_positive(value) or value > 100):
                raise ConfigError(f"[budget] {name} = {value!r} must be a number in (0, 100]")
        if not _finite_positive(self.delta_per_day) or self.delta_per_day >= 1e-2:
            raise ConfigError(f"[budget] delta_per_day = {self.delta_per_day!r} must be in (0, 0.01)")

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.ledger.with_name(self.ledger.name + ".audit.jsonl")

    #: Caps a job without ``[budget]`` declares when it creates the default ledger.
    DEFAULT_EPSILON_PER_DAY: ClassVar[float] = 2.0
    DEFAULT_DELTA_PER_DAY: ClassVar[float] = 1e-6

    @staticmethod
    def default_ledger() -> Path:
        """The ledger that charges a job without ``[budget]`` (a Python release):
        ``$PRIVMOB_LEDGER``, else ``$XDG_STATE_HOME/privmob/ledger.sqlite`` (by default
        ``~/.local/state/privmob/ledger.sqlite``)."""
        explicit = os.environ.get("PRIVMOB_LEDGER")
        if explicit:
            return Path(explicit).expanduser()
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "privmob" / "ledger.sqlite"

    @classmethod
    def default(cls) -> BudgetConfig:
        """The budget of a job without ``[budget]``: the default ledger and default caps
        (which only seed a new ledger; an existing one's declared caps apply)."""
        return cls(ledger=cls.default_ledger(), epsilon_per_day=cls.DEFAULT_EPSILON_PER_DAY,
                   delta_per_day=cls.DEFAULT_DELTA_PER_DAY)


@dataclass(frozen=True, kw_only=True)
class FlowsConfig:
    """Origin–destination flows: distinct persons per (origin, destination, window).

    Trips run between consecutive stays (a person within ``stay_radius_m`` for at least
    ``stay_min_duration``). Units are H3 cells at ``resolution`` (keys then come from the
    data, through OpenDP's threshold mechanism) or the polygons of a boundary layer named
    by ``unit_property`` (public keys: every pair of units × every window). ``epsilon``
    (or ``rho``) is this table's own share of the budget; the ledger charges the sum.
    """

    units: Literal["cells", "boundary"] = "cells"
    resolution: int = 6
    boundary: Path | None = None
    boundary_crs: CoordinateSystem = "wgs84"
    unit_property: str = "adcode"
    window: str = "1d"
    epsilon: float = 1.0
    rho: float | None = None
    max_trips_per_window: int = 2
    max_windows: int = 1
    min_count: int | None = None
    stay_radius_m: float = 200.0
    stay_min_duration: str = "10m"
    stay_max_gap: str = "1h"

    def __post_init__(self) -> None:
        if self.units not in ("cells", "boundary"):
            raise ConfigError(f"[flows] units = {self.units!r}; use 'cells' or 'boundary'")
        if self.units == "boundary" and self.boundary is None:
            raise ConfigError("[flows] units = 'boundary' needs boundary = \"units.geojson\"")
        if not isinstance(self.resolution, int) or not 0 <= self.resolution <= 15:
            raise ConfigError(f"[flows] resolution = {self.resolution!r}; H3 resolutions are 0 to 15")
        seconds = parse_duration(self.window)
        if seconds < 60 or 86400 % seconds:
            raise ConfigError(f"[flows] window = {self.window!r} must divide a day evenly")
        if not _finite_positive(self.epsilon) or self.epsilon > 20:
            raise ConfigError(f"[flows] epsilon = {self.epsilon!r} must be a number in (0, 20]")
        if self.rho is not None and (not _finite_positive(self.rho) or self.rho > 10):
            raise ConfigError(f"[flows] rho = {self.rho!r} must be in (0, 10]")
        if not isinstance(self.max_trips_per_window, int) or not 1 <= self.max_trips_per_window <= 64:
            raise ConfigError("[flows] max_trips_per_window must be an integer from 1 to 64")
        if not isinstance(self.max_windows, int) or not 1 <= self.max_windows <= 10_000:
            raise ConfigError("[flows] max_windows must be an integer from 1 to 10000")
        if self.min_count is not None and (
                not isinstance(self.min_count, int) or not 1 <= self.min_count <= 1_000_000_000):
            raise ConfigError("[flows] min_count must be an integer from 1 to 10⁹")
        if not _finite_positive(self.stay_radius_m) or self.stay_radius_m > 5000:
            raise ConfigError("[flows] stay_radius_m must be in (0, 5000]")
        for name in ("stay_min_duration", "stay_max_gap"):
            parse_duration(getattr(self, name))

    @property
    def window_seconds(self) -> int:
        return parse_duration(self.window)


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """The optional working store of pseudonymised positions (see :mod:`privmob.governance.store`)."""

    path: Path
    key_file: Path
    retention_days: int = 14

    def __post_init__(self) -> None:
        if not isinstance(self.retention_days, int) or not 1 <= self.retention_days <= 366:
            raise ConfigError("[store] retention_days must be an integer from 1 to 366")


def _finite_positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


_SECTIONS: dict[str, type[Any]] = {
    "job": JobSection,
    "scope": ScopeConfig,
    "grid": GridConfig,
    "privacy": PrivacyConfig,
    "budget": BudgetConfig,
    "store": StoreConfig,
    "flows": FlowsConfig,
    "adaptive": AdaptiveConfig,
}
_OPTIONAL_SECTIONS = {"budget", "store", "flows", "adaptive"}
_PATH_FIELDS = {("job", "input"), ("job", "output"), ("job", "key_file"), ("job", "quarantine"),
                ("job", "signing_key"), ("grid", "boundary"), ("budget", "ledger"),
                ("budget", "audit_log"), ("store", "path"), ("store", "key_file"),
                ("flows", "boundary")}


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one release needs, validated.

    Examples
    --------
    >>> cfg = JobConfig.from_dict({"job": {"operator": "analyst-01", "period": "2026-11-26"}})
    >>> cfg.privacy.mechanism, cfg.grid.resolution
    ('gaussian', 8)
    """

    job: JobSection
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    budget: BudgetConfig | None = None
    store: StoreConfig | None = None
    flows: FlowsConfig | None = None
    adaptive: AdaptiveConfig | None = None
    source: Path | None = None
    #: The settings the job states itself ("grid.window", "adaptive", ...), as opposed to
    #: defaults: plan() chooses only what is not stated (privmob.pipeline.defaults).
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.store is not None and self.budget is None:
            raise ConfigError(
                "[store] needs a [budget] section: every store purge goes to its audit log"
            )
        a = self.adaptive
        if a is not None:
            if self.grid.boundary is None:
                raise ConfigError("[adaptive] needs [grid] boundary: the partition starts from the "
                                  "boundary's cells, which keeps every released cell public")
            if a.min_resolution >= self.grid.resolution:
                raise ConfigError(
                    f"[adaptive] min_resolution = {a.min_resolution} must be coarser than [grid] "
                    f"resolution = {self.grid.resolution} (the finest a cell may be split to)")
            finer = [r for r in self.grid.parent_resolutions if r > a.min_resolution]
            if finer:
                raise ConfigError(
                    f"[grid] parent_resolutions {sorted(finer)} are finer than [adaptive] "
                    f"min_resolution = {a.min_resolution}: an adaptive release's coarser totals are "
                    "sums of its leaves, and a leaf may be coarser than those cells. Use parent "
                    f"resolutions from 0 to {a.min_resolution}, or lower min_resolution")

    @classmethod
    def from_toml(cls, path: str | Path) -> JobConfig:
        """Read a job file; relative paths in it are relative to the file."""
        path = Path(path)
        try:
            text = read_small_file(path, "job file", limit=1 << 20).decode("utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"job file {path} does not exist") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"job file {path} is not UTF-8 text") from exc
        except OSError as exc:
            raise ConfigError(f"job file {path} cannot be read: {exc.strerror}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"job file {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir=path.resolve().parent, source=path)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        source: Path | None = None,
    ) -> JobConfig:
        """Build from nested mappings (the parsed TOML); unknown keys are errors."""
        _reject_unknown("top level", data.keys(), _SECTIONS.keys())
        if "job" not in data:
            raise ConfigError("the [job] section is required (at least operator and period)")
        sections: dict[str, Any] = {}
        given = {name for name in data} | {f"{name}.{key}" for name, raw in data.items()
                                            if isinstance(raw, Mapping) for key in raw}
        for name, klass in _SECTIONS.items():
            if name in _OPTIONAL_SECTIONS and name not in data:
                continue
            raw = data.get(name, {})
            if not isinstance(raw, Mapping):
                raise ConfigError(f"[{name}] must be a table")
            allowed = [f.name for f in dataclasses.fields(klass)]
            _reject_unknown(f"[{name}]", raw.keys(), allowed)
            kwargs = {k: _coerce(name, k, v, base_dir) for k, v in raw.items()}
            try:
                sections[name] = klass(**kwargs)
            except TypeError as exc:  # pragma: no cover - guarded by _reject_unknown
                raise ConfigError(f"[{name}]: {exc}") from exc
        return cls(**sections, source=source, given=frozenset(given))

    def with_overrides(self, **dotted: Any) -> JobConfig:
        """Return a copy with ``section__field`` values replaced (validated again).

        >>> cfg = JobConfig.from_dict({"job": {"operator": "a", "period": "2026-11-26"}})
        >>> cfg.with_overrides(privacy__epsilon=0.5).privacy.epsilon
        0.5
        """
        changes: dict[str, dict[str, Any]] = {}
        for key, value in dotted.items():
            section, _, name = key.partition("__")
            if section not in _SECTIONS or not name:
                raise ConfigError(f"unknown override {key!r}; use section__field")
            allowed = [f.name for f in dataclasses.fields(_SECTIONS[section])]
            _reject_unknown(f"[{section}]", [name], allowed)
            changes.setdefault(section, {})[name] = _coerce(section, name, value, None)
        # One replace per section, so the combined result is validated, not each step.
        updated: dict[str, Any] = {}
        for section, values in changes.items():
            current = getattr(self, section)
            if current is None:
                try:
                    updated[section] = _SECTIONS[section](**values)
                except TypeError as exc:
                    raise ConfigError(f"[{section}]: {exc}") from exc
            else:
                updated[section] = dataclasses.replace(current, **values)
        stated = {s for s in changes} | {f"{s}.{n}" for s, v in changes.items() for n in v}
        return dataclasses.replace(self, **updated, given=self.given | stated)

    @property
    def period_start(self) -> dt.datetime:
        """First instant of the release period (local midnight), as an aware datetime."""
        if self.job.period is None:
            raise ConfigError(
                "[job] period is not set: say which local day the release covers, "
                "e.g. period = \"2026-11-26\" (or pass --period on the command line)"
            )
        return dt.datetime.combine(self.job.period, dt.time(), tzinfo=self.job.tz)

    @property
    def period_end(self) -> dt.datetime:
        """First instant after the period (local midnight ``period_days`` later)."""
        start = self.period_start
        end_day = start.date() + dt.timedelta(days=self.job.period_days)
        return dt.datetime.combine(end_day, dt.time(), tzinfo=self.job.tz)

    @property
    def n_windows(self) -> int:
        span = self.period_end.astimezone(dt.UTC) - self.period_start.astimezone(dt.UTC)
        return math.ceil(span.total_seconds() / self.grid.window_seconds)

    @property
    def dataset(self) -> str:
        if self.job.dataset:
            return self.job.dataset
        if not self.job.input:
            return "dataframe"
        return Path(str(self.job.input).rstrip("/")).stem.split(".")[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (paths as strings), for manifests and digests."""

        def conv(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dt.date):
                return v.isoformat()
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            if isinstance(v, Mapping):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {
            name: {f.name: conv(getattr(getattr(self, name), f.name))
                   for f in dataclasses.fields(getattr(self, name))}
            for name in _SECTIONS
            if getattr(self, name) is not None
        }

    def sha256(self, *, ignore_output: bool = False) -> str:
        """Digest of the effective configuration (for the audit log and manifest).

        With ``ignore_output`` the output folder is left out: two runs that differ only in
        where they write are the same release (the ledger's double-release guard uses it).
        """
        import hashlib
        import json

        data = self.to_dict()
        if ignore_output:
            data["job"].pop("output", None)
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def read_small_file(path: Path, what: str, *, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes: a FIFO, a device (``/dev/zero``) or a
    huge file is refused instead of read forever."""
    import stat as stat_mod

    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    if not stat_mod.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if st.st_size > limit:
        raise ConfigError(f"{what} {path} is larger than {limit // (1 << 20) or 1} MB; is it the right file?")
    with path.open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{what} {path} grew while being read")
    return data


def _reject_unknown(where: str, keys: Any, allowed: Any) -> None:
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key {key!r}{suggestion}")


def _coerce(section: str, name: str, value: Any, base_dir: Path | None) -> Any:
    if (section, name) in _PATH_FIELDS:
        if value is None:
            return None
        if not isinstance(value, str | Path):
            raise ConfigError(f"[{section}] {name} must be a path string")
        if (section, name) == ("job", "input") and isinstance(value, str) and "://" in value:
            return value  # hdfs:// or s3a:// for the Spark backend: not a local path
        try:
            path = Path(value).expanduser()
        except RuntimeError as exc:
            raise ConfigError(f"[{section}] {name} = {value!r}: the home folder cannot be found") from exc
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return path
    if (section, name) == ("job", "period"):
        return None if value is None else _parse_date(value, "[job] period")
    if (section, name) == ("grid", "parent_resolutions"):
        if isinstance(value, str) or not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError("[grid] parent_resolutions must be a list of integers, e.g. [6]")
        return tuple(sorted(set(value), reverse=True))
    if name in ("groups", "allowed_purposes"):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"[{section}] {name} must be a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[{section}] {name} must be a list of strings")
        return tuple(value)
    if (section, name) == ("grid", "boundary_where"):
        if not isinstance(value, Mapping):
            raise ConfigError("[grid] boundary_where must be a table, e.g. { adcode = \"110000\" }")
        return {str(k): str(v) for k, v in value.items()}
    if name in ("epsilon", "delta", "rho", "max_spurious_rate", "epsilon_per_day", "delta_per_day",
                "rho_per_day", "stay_radius_m", "parent_epsilon", "tree_share",
                "max_spurious_cells", "max_below_min_rate") and isinstance(value, int) \
            and not isinstance(value, bool):
        return float(value)
    if value is None and (section, name) in _OPTIONAL:
        return None
    expected = _FIELD_TYPES.get((section, name))
    wrong_bool = isinstance(value, bool) and expected is not bool
    if expected is not None and (wrong_bool or not isinstance(value, expected)):
        raise ConfigError(
            f"[{section}] {name} = {value!r} has the wrong type; expected {expected.__name__}"
        )
    return value


_OPTIONAL = {("job", "expected_persons"), ("privacy", "rho"), ("privacy", "max_spurious_rate"),
             ("scope", "assume_group"),
             ("budget", "epsilon_per_day"), ("budget", "rho_per_day"), ("flows", "rho"),
             ("flows", "min_count")}
_FIELD_TYPES: dict[tuple[str, str], type] = {
    ("job", "purpose"): str,
    ("job", "operator"): str,
    ("job", "timezone"): str,
    ("job", "period_days"): int,
    ("job", "dataset"): str,
    ("job", "key_env"): str,
    ("job", "on_bad_rows"): str,
    ("job", "backend"): str,
    ("job", "marking"): str,
    ("scope", "assume_group"): str,
    ("grid", "resolution"): int,
    ("grid", "window"): str,
    ("privacy", "mechanism"): str,
    ("privacy", "epsilon"): float,
    ("privacy", "delta"): float,
    ("privacy", "rho"): float,
    ("privacy", "max_cells_per_window"): int,
    ("privacy", "max_windows"): int,
    ("privacy", "min_count"): int,
    ("privacy", "max_spurious_rate"): float,
    ("privacy", "max_spurious_cells"): float,
    ("privacy", "max_below_min_rate"): float,
    ("job", "linkage_days"): int,
    ("job", "reports"): bool,
    ("job", "allow_empty"): bool,
    ("job", "crs"): str,
    ("job", "expected_persons"): int,
    ("grid", "boundary_crs"): str,
    ("grid", "parent_epsilon"): float,
    ("flows", "boundary_crs"): str,
    ("store", "retention_days"): int,
    ("flows", "units"): str,
    ("flows", "resolution"): int,
    ("flows", "unit_property"): str,
    ("flows", "window"): str,
    ("flows", "epsilon"): float,
    ("flows", "rho"): float,
    ("flows", "max_trips_per_window"): int,
    ("flows", "max_windows"): int,
    ("flows", "min_count"): int,
    ("flows", "stay_radius_m"): float,
    ("flows", "stay_min_duration"): str,
    ("flows", "stay_max_gap"): str,
    ("budget", "epsilon_per_day"): float,
    ("budget", "delta_per_day"): float,
    ("budget", "rho_per_day"): float,
    ("adaptive", "min_resolution"): int,
    ("adaptive", "tree_share"): float,
    ("adaptive", "cells_per_person"): int,
    ("adaptive", "split_threshold"): int,
    ("adaptive", "max_pairs"): int,
}
