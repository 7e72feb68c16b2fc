"""Engines that compute the exact, bounded aggregate.

Everything up to the exact aggregate runs on a backend (Polars by default, Spark for data
that outgrows one machine); everything after it — noise, suppression, release — runs
once, backend-neutral, on the small aggregated table. The seam is deliberately narrow:
an engine reads, validates, reduces and bounds; the steps around it that need no engine
are written once, in their stage's module (:func:`privmob.stages.scope.check_schema`,
:func:`privmob.stages.scope.rows_by_status`, :func:`privmob.stages.pii.findings`,
:func:`privmob.movement.stays.person_trips`), and both engines call them.

The engines themselves are imported only when asked for (``get_backend``, or the names
``PolarsBackend``, ``SparkBackend`` and ``local_session`` from this package), so Spark
is needed only by who uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from privmob.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import polars as pl

    from privmob.backends._polars import PolarsBackend
    from privmob.backends._spark import SparkBackend, local_session
    from privmob.config import JobConfig
    from privmob.movement.stays import StayParams
    from privmob.stages.aggregate import ExactCounts
    from privmob.stages.pseudonymise import Pseudonymiser

__all__ = ["Backend", "PolarsBackend", "SparkBackend", "get_backend", "local_session"]


class Backend(Protocol):
    """What an engine must do for the release path."""

    name: str

    def columns(self, source: Any) -> list[str]:
        """Column names of the source, reading only its schema."""
        ...

    def exact_cells(
        self,
        source: Any,
        config: JobConfig,
        pseudonymiser: Pseudonymiser,
        key_cells: npt.NDArray[np.uint64] | None,
        partition: Callable[[pl.DataFrame], npt.NDArray[np.uint64]] | None = None,
    ) -> ExactCounts:
        """Ingest → scope → pseudonymise → index → bound → aggregate, in one pass.

        With ``partition`` (an adaptive release), the engine hands it the exact tree counts
        (:func:`privmob.stages.hierarchy.tree_counts`) and gets back the public leaves the
        privacy layer drew from them; the dwell rows are then moved to those leaves and
        bounded per period (:func:`~privmob.stages.hierarchy.bound_pairs`). The person-level
        rows never leave the engine; only the two aggregates cross the seam.
        """
        ...

    def bad_rows(
        self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser, limit: int | None
    ) -> pl.DataFrame:
        """Bad rows with row number, reason and pseudonymised id (never the raw id)."""
        ...

    def fixes(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
        """Validated, in-scope, in-period fixes keyed by pseudonym: ``pid`` (Int64), ``t``,
        ``lat``, ``lng``, all of them on the driver (for a look at small inputs; flows use
        :meth:`trips`, which leaves the fixes on the engine)."""
        ...

    def trips(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser,
              params: StayParams | None = None) -> pl.DataFrame:
        """Trips between the stays of each person, found where the fixes are.

        The fixes are those of :meth:`fixes`; stays and trips are
        :func:`privmob.movement.stays.person_trips` per person (``params``, default the job's
        ``[flows]`` stay settings), run on the engine, so only the trips reach the driver:
        :data:`~privmob.movement.stays.TRIP_SCHEMA`, sorted by ``pid``, ``trip_id``.
        """
        ...

    def positions(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
        """Validated, in-scope, in-period fixes (exact duplicates dropped), ids pseudonymised
        (``person_id`` = hex pseudonym, ``ts`` epoch seconds, ``lat``, ``lng``, ``group``):
        what the working store keeps."""
        ...


def get_backend(name: str) -> Backend:
    """The backend called ``name``; optional engines are imported only when asked for."""
    if name == "polars":
        return __getattr__("PolarsBackend")()  # type: ignore[no-any-return]
    if name == "spark":
        return __getattr__("SparkBackend")()  # type: ignore[no-any-return]
    raise ConfigError(f"unknown backend {name!r}; use 'polars' or 'spark'")


def __getattr__(name: str) -> Any:
    """The engine classes, imported on first use (Spark's only if it is asked for)."""
    if name == "PolarsBackend":
        from privmob.backends._polars import PolarsBackend

        return PolarsBackend
    if name in ("SparkBackend", "local_session"):
        try:
            from privmob.backends import _spark
        except ImportError as exc:
            raise BackendUnavailableError(
                "backend 'spark' needs PySpark (and a Java runtime to run); install it with "
                "`pip install 'privmob[spark]'`"
            ) from exc
        return getattr(_spark, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
