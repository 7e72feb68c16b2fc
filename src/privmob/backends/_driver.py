"""Driver-side steps both engines share: what happens to usable fixes on the driver.

The engines differ in where rows are read and reduced; once a (small) result is on the
driver, what is done with it is defined here, once. Scope's row accounting and the PII
findings live with their stages (:func:`privmob.stages.scope.rows_by_status`,
:func:`privmob.stages.pii.findings`); the steps here are the ones that touch the pseudonymiser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from privmob.movement.stays import TRIP_SCHEMA

if TYPE_CHECKING:
    from privmob.stages.pseudonymise import Pseudonymiser

__all__ = ["keyed_fixes", "keyed_trips", "stored_positions"]


def keyed_fixes(frame: pl.DataFrame, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
    """Distinct fixes (``person_id``, ``t``, ``lat``, ``lng``) keyed by the Int64 pseudonym
    ``pid`` instead of the raw id; each distinct id is hashed once."""
    ids = frame["person_id"].unique()
    mapping = pl.DataFrame({"person_id": ids, "pid": pseudonymiser.pseudonyms(ids)})
    return frame.join(mapping, on="person_id", how="inner").select("pid", "t", "lat", "lng")


def keyed_trips(trip_frame: pl.DataFrame, mapping: pl.DataFrame) -> pl.DataFrame:
    """Trips found per raw ``person_id`` (on an engine), keyed by pseudonym instead:
    :data:`~privmob.movement.stays.TRIP_SCHEMA`, sorted by ``pid``, ``trip_id``, as
    :func:`privmob.movement.stays.person_trips` returns them.

    ``mapping`` holds (``person_id``, ``pid``) for every person, one pseudonym each and
    no two alike (else the persons must be merged before their stays are found).
    """
    return (
        trip_frame.join(mapping, on="person_id", how="inner")
        .select([pl.col(c).cast(t) for c, t in TRIP_SCHEMA.items()])
        .sort("pid", "trip_id")
    )


def stored_positions(fixes: pl.DataFrame, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
    """What the working store keeps: the hex pseudonym as ``person_id``, ``ts`` (epoch
    seconds), ``lat``, ``lng``, ``group``, sorted by person and time."""
    ids = fixes["person_id"].unique()
    mapping = pl.DataFrame({"person_id": ids, "pseudonym": pseudonymiser.hex(ids)})
    return (
        fixes.join(mapping, on="person_id", how="inner")
        .select(pl.col("pseudonym").alias("person_id"), pl.col("t").alias("ts"), "lat", "lng", "group")
        .sort("person_id", "ts")
    )
