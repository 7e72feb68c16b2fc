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

__all__ = ["Backend", "get_backend", "keyed_fixes", "stored_positions"]


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


# -- shared driver-side steps: both engines bring usable fixes to the driver, then this -----


def keyed_fixes(frame: pl.DataFrame, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
    """Distinct fixes (``person_id``, ``t``, ``lat``, ``lng``) keyed by the Int64 pseudonym
    ``pid`` instead of the raw id; each distinct id is hashed once."""
    import polars as pl

    ids = frame["person_id"].unique()
    mapping = pl.DataFrame({"person_id": ids, "pid": pseudonymiser.pseudonyms(ids)})
    return frame.join(mapping, on="person_id", how="inner").select("pid", "t", "lat", "lng")


def stored_positions(fixes: pl.DataFrame, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
    """What the working store keeps: the hex pseudonym as ``person_id``, ``ts`` (epoch
    seconds), ``lat``, ``lng``, ``group``, sorted by person and time."""
    import polars as pl

    ids = fixes["person_id"].unique()
    mapping = pl.DataFrame({"person_id": ids, "pseudonym": pseudonymiser.hex(ids)})
    return (
        fixes.join(mapping, on="person_id", how="inner")
        .select(pl.col("pseudonym").alias("person_id"), pl.col("t").alias("ts"), "lat", "lng", "group")
        .sort("person_id", "ts")
    )
