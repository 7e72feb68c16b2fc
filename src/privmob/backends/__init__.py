"""Engines that compute the exact, bounded aggregate.

Everything up to the exact aggregate runs on a backend (Polars by default, Spark for data
that outgrows one machine); everything after it — noise, suppression, release — runs
once, backend-neutral, on the small aggregated table. The seam is deliberately narrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from privmob.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import polars as pl

    from privmob.aggregate import ExactCounts
    from privmob.config import JobConfig
    from privmob.pseudonymise import Pseudonymiser

__all__ = ["Backend", "get_backend"]


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
    ) -> ExactCounts:
        """Ingest → scope → pseudonymise → index → bound → aggregate, in one pass."""
        ...

    def bad_rows(
        self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser, limit: int | None
    ) -> pl.DataFrame:
        """Bad rows with row number, reason and pseudonymised id (never the raw id)."""
        ...

    def fixes(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
        """Validated, in-scope, in-period fixes keyed by pseudonym: ``pid`` (Int64), ``t``,
        ``lat``, ``lng`` — the input of stay and trip detection for flows."""
        ...

    def positions(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
        """Validated, in-scope, in-period fixes (exact duplicates dropped), ids pseudonymised
        (``person_id`` = hex pseudonym, ``ts`` epoch seconds, ``lat``, ``lng``, ``group``):
        what the working store keeps."""
        ...


def get_backend(name: str) -> Backend:
    """The backend called ``name``; optional engines are imported only when asked for."""
    if name == "polars":
        from privmob.backends._polars import PolarsBackend

        return PolarsBackend()
    if name == "spark":
        try:
            from privmob.backends._spark import SparkBackend
        except ImportError as exc:
            raise BackendUnavailableError(
                "backend 'spark' needs PySpark and a Java runtime: pip install 'privmob[spark]'"
            ) from exc
        return SparkBackend()
    raise ConfigError(f"unknown backend {name!r}; use 'polars' or 'spark'")
