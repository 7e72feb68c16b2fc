"""Stage 9 — release: what may leave the package, and how it is written.

The tables arrive noised and suppressed (:func:`privmob.privacy.noising.noise_table`; suppression,
:func:`privmob.privacy.mechanism.suppress`, compares the *noisy* count with the threshold — never the
exact one, which would leak "fewer than N" through an absence). Here they get their public
form (H3 cell strings, window start times, unit coordinates) and are written as data files;
reports are drawn by :func:`privmob.pipeline.publish.publish`, one stage above.

A release is written atomically: every file goes into a hidden temporary folder beside
the target, is flushed to disk, and the folder is renamed into place. A crash leaves either
no release or a whole one, never part of one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob.errors import ReleaseExistsError, ReleaseWriteError
from privmob.privacy.mechanism import suppress  # public here too, as before (in __all__)

if TYPE_CHECKING:
    from privmob.privacy.mechanism import NoiseModel

__all__ = ["FLOWS_FILES", "RELEASE_FILES", "ReleasedTable", "build_table", "cell_table", "flows_table",
           "read_operator_record", "suppress", "write_operator_record"]

#: The files every release directory holds (signatures and reports add to it later).
RELEASE_FILES = ("release.parquet", "release.csv", "release.geojson", "manifest.json")
#: Added when the release has origin–destination flows.
FLOWS_FILES = ("flows.parquet", "flows.csv", "flows.geojson")

#: Draws files from a release into a folder being written, returning their names.
ExtraFiles = Callable[["ReleasedTable", Path], list[str]]

_SCHEMA = {
    "cell": pl.String,
    "window_start": pl.Datetime("us", "UTC"),
    "count": pl.Int64,
    "ci_low": pl.Int64,
    "ci_high": pl.Int64,
    "near_threshold": pl.Boolean,
}


def release_zone(manifest: Mapping[str, Any]) -> tuple[dt.tzinfo, str]:
    """The release's local time zone and its name; UTC when the manifest names none or one
    this machine does not know, so a report of any release still draws."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = str(manifest.get("timezone") or "UTC")
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC, "UTC"


def local_csv(frame: pl.DataFrame, manifest: Mapping[str, Any]) -> str:
    """``frame`` as CSV text, every time column in the release's local zone with its offset.

    ISO 8601 with the offset (``2026-11-26T00:00:00+08:00``): a reader in Beijing sees the
    local day the window belongs to (in UTC the first windows show the day before), and the
    offset keeps the instant exact. Parquet keeps tz-aware UTC timestamps. A naive column
    is UTC, as the release writes them.
    """
    _, zone = release_zone(manifest)
    try:
        return _csv_in_zone(frame, zone)
    except pl.exceptions.PolarsError:  # a zone Python knows and Polars does not: UTC
        return _csv_in_zone(frame, "UTC")


def _csv_in_zone(frame: pl.DataFrame, zone: str) -> str:
    formatted = [
        (pl.col(name) if dtype.time_zone else pl.col(name).dt.replace_time_zone("UTC"))
        .dt.convert_time_zone(zone).dt.strftime("%Y-%m-%dT%H:%M:%S%:z")
        for name, dtype in frame.schema.items() if isinstance(dtype, pl.Datetime)
    ]
    return frame.with_columns(formatted).write_csv()


def build_table(
    cells: npt.NDArray[np.uint64],
    windows: npt.NDArray[np.int32],
    noisy: npt.NDArray[np.int64],
    *,
    period_start: dt.datetime,
    window_seconds: int,
    noise: NoiseModel,
    threshold: int,
) -> pl.DataFrame:
    """The public table of released (cell, window, noisy count) triples: H3 cell string,
    window start (UTC), count, its selection-aware 95% interval and whether it is near the
    threshold (:func:`privmob.privacy.noising.annotate`; all of it post-processing).

    The release path builds the same from a :class:`~privmob.privacy.noising.NoisyTable` with
    :func:`cell_table`; this is the form for counts already noised elsewhere.
    """
    from privmob.privacy.noising import annotate

    noisy = np.asarray(noisy, dtype=np.int64)
    ci_low, ci_high, near = annotate(noise, threshold, noisy)
    frame = pl.DataFrame(
        {
            "cell": pl.Series(cells, dtype=pl.UInt64),
            "window": pl.Series(windows, dtype=pl.Int64),
            "count": pl.Series(noisy, dtype=pl.Int64),
            "ci_low": pl.Series(ci_low, dtype=pl.Int64),
            "ci_high": pl.Series(ci_high, dtype=pl.Int64),
            "near_threshold": pl.Series(near, dtype=pl.Boolean),
        }
    )
    return cell_table(frame, period_start=period_start, window_seconds=window_seconds)


def _window_start(period_start: dt.datetime, window_seconds: int) -> pl.Expr:
    start_us = int(period_start.timestamp()) * 1_000_000
    return ((pl.lit(start_us) + pl.col("window").cast(pl.Int64) * (window_seconds * 1_000_000))
            .cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("window_start"))


def cell_table(frame: pl.DataFrame, *, period_start: dt.datetime, window_seconds: int,
               mixed: bool = False) -> pl.DataFrame:
    """Released cell counts (``cell`` UInt64, ``window``, ``count``, ``ci_low``, ``ci_high``,
    ``near_threshold``) as the public table: H3 cell strings and window start times (UTC).

    With ``mixed`` (an adaptive release, cells of several resolutions) each row also
    carries its cell's ``resolution`` (Int8), right after the cell."""
    cell = pl.col("cell").cast(pl.UInt64)
    resolution = [plh3.get_resolution(cell).cast(pl.Int8).alias("resolution")] if mixed else []
    schema = {"cell": pl.String, **({"resolution": pl.Int8} if mixed else {}), **_SCHEMA}
    return (
        frame.select(
            plh3.int_to_str(cell).alias("cell"),
            *resolution,
            _window_start(period_start, window_seconds),
            "count",
            "ci_low",
            "ci_high",
            "near_threshold",
        )
        .sort("window_start", "cell")
        .cast(schema)  # type: ignore[arg-type]
    )


def flows_table(frame: pl.DataFrame, coordinates: Mapping[str, tuple[float, float]], *,
                period_start: dt.datetime, window_seconds: int) -> pl.DataFrame:
    """Released OD counts (``origin``, ``destination``, ``window`` and the value columns) as
    the public flows table: window start times and each unit's (lat, lng) for drawing."""
    lat = {k: v[0] for k, v in coordinates.items()}
    lng = {k: v[1] for k, v in coordinates.items()}
    return frame.select(
        pl.col("origin").cast(pl.String), pl.col("destination").cast(pl.String),
        _window_start(period_start, window_seconds), "count", "ci_low", "ci_high", "near_threshold",
    ).with_columns(
        pl.col("origin").replace_strict(lat, return_dtype=pl.Float64).alias("origin_lat"),
        pl.col("origin").replace_strict(lng, return_dtype=pl.Float64).alias("origin_lng"),
        pl.col("destination").replace_strict(lat, return_dtype=pl.Float64).alias("dest_lat"),
        pl.col("destination").replace_strict(lng, return_dtype=pl.Float64).alias("dest_lng"),
    ).sort("window_start", "origin", "destination")


def write_marked_parquet(frame: pl.DataFrame, path: Path, meta: Mapping[str, str]) -> None:
    """Write ``frame`` as Parquet carrying ``meta`` (the marking, the release id) inside the file.

    Written by Polars, so a release needs no pyarrow (168 MiB). ``meta`` goes both into the
    file's key-value metadata and into the Arrow schema Polars embeds (built with the 3 MiB
    nanoarrow), so ``pyarrow.parquet.read_schema(path).metadata`` and
    ``polars.read_parquet_metadata(path)`` both show it, as when pyarrow wrote the file.
    """
    import nanoarrow

    schema = nanoarrow.c_schema(frame.schema).modify(metadata=dict(meta))
    frame.write_parquet(path, metadata=dict(meta), arrow_schema=schema)


@dataclass(frozen=True, eq=False)
class ReleasedTable:
    """A differentially private release: the only kind of result privmob hands out.

    Attributes
    ----------
    table
        Polars frame ``cell, window_start, count, ci_low, ci_high``; every ``count`` is a
        noisy distinct-person count at or above the release threshold.
    manifest
        The public manifest: what the release is, its parameters and released numbers
        (purpose, operator, unit of privacy, budget spent, noise, keys, threshold). It holds
        no exact figure of the input (see :mod:`privmob.pipeline.plan`).
    operator_record
        The exact figures of the run (row and person counts, bounding tallies, digests,
        timings), for the operator only: in memory, never written into the release folder
        and never shown by ``repr``. Store it with :func:`write_operator_record`.
    """

    table: pl.DataFrame
    manifest: Mapping[str, Any] = field(default_factory=dict)
    #: Origin–destination flows (``origin, destination, window_start, count, ci_low,
    #: ci_high`` and unit coordinates) when the job has a ``[flows]`` section.
    flows: pl.DataFrame | None = None
    #: The boundary the keys came from (for drawing reports; not part of the data).
    boundary: Path | None = None
    #: The same table at coarser resolutions (hierarchical release), keyed by resolution.
    levels: Mapping[int, pl.DataFrame] = field(default_factory=dict)
    #: Exact, non-DP figures for the operator (empty for a release read from a folder).
    operator_record: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"ReleasedTable({self.table.height} cells released, "
            f"{m.get('cells_suppressed', '?')} suppressed, ε={m.get('epsilon')}, "
            f"mechanism={m.get('mechanism')!r})"
        )

    @classmethod
    def read(cls, folder: str | Path) -> ReleasedTable:
        """Load a release folder written by :meth:`write` (tables, flows, levels, manifest).

        Reading does not check the signature: use :func:`privmob.governance.signing.verify_release`.
        """
        from privmob.errors import InputError

        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        table_path, manifest_path = folder / "release.parquet", folder / "manifest.json"
        for needed in (table_path, manifest_path):
            if not needed.is_file():
                raise InputError(
                    f"{folder} is not a release folder: {needed.name} is missing (pass the folder "
                    "that `privmob run` or ReleasedTable.write produced)"
                )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            table = pl.read_parquet(table_path)
            flows_path = folder / "flows.parquet"
            flows = pl.read_parquet(flows_path) if flows_path.is_file() else None
            levels = {int(p.stem.removeprefix("release-res")): pl.read_parquet(p)
                      for p in folder.glob("release-res*.parquet")
                      if p.stem.removeprefix("release-res").isdigit()}
        except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
            raise InputError(f"cannot read the release in {folder}: {exc}") from exc
        if not isinstance(manifest, dict):
            raise InputError(f"{manifest_path} is not a release manifest (expected a JSON object)")
        carried = folder / "boundary.geojson"  # keys.BOUNDARY_FILE: the keys' own boundary
        return cls(table=table, manifest=manifest, flows=flows, levels=levels,
                   boundary=carried if carried.is_file() else None)

    def explain(self) -> str:
        """What this release holds and what was lost on the way (bounding, suppression).

        The input line and the bounding tallies are exact and come from the operator record,
        so they appear only in the process that made the release; a release read from a
        folder explains its public numbers only.
        """
        m, op = self.manifest, self.operator_record
        lines = [f"release {m.get('release_id')} of {m.get('dataset')!r}, period {m.get('key_period')}"]
        if op:
            b = op.get("bounding", {})
            bad = op.get("rows_bad", {})
            lines += [
                "  operator only (exact, not differentially private; not in the release):",
                f"    input: {op.get('rows_in', 0):,} rows; bad {sum(bad.values()):,}"
                + (f" ({', '.join(f'{k} {v}' for k, v in bad.items())})" if bad else "")
                + f"; out of scope {op.get('rows_out_of_scope', 0):,}; out of period "
                f"{op.get('rows_out_of_period', 0):,}; outside boundary "
                f"{op.get('rows_outside_boundary', 0):,}; {op.get('persons', 0):,} persons",
                f"    bounding: dropped {b.get('person_cell_windows_dropped_share', 0):.1%} of "
                f"person-cell-windows, kept {b.get('dwell_minutes_kept_share', 1):.1%} of dwell minutes",
            ]
        lines += [
            f"  released {m.get('cells_released')} cell-windows"
            + (f" of {m['n_keys']:,} public keys" if m.get("n_keys") else " (threshold keys)")
            + f"; threshold {m.get('release_threshold')}; each count ± {m.get('ci95_halfwidth')} (95%)",
            f"  {m.get('mechanism')} noise, ε = {m.get('epsilon')}, δ = {m.get('delta')}"
            + (f"; unit of privacy: {m['privacy_unit']}" if m.get("privacy_unit") else ""),
        ]
        return "\n".join(lines)

    def to_geojson(self) -> dict[str, Any]:
        """Hexagon polygons with their counts, as a GeoJSON FeatureCollection.

        Every feature carries its cell's H3 ``resolution``: an adaptive release mixes them
        (the table's ``resolution`` column when it has one). Cells are H3 strings here even
        when the table holds them as UInt64 (JSON numbers above 2**53 lose digits).
        """
        features = []
        for row in self.table.iter_rows(named=True):
            cell = row["cell"] if isinstance(row["cell"], str) else h3.int_to_str(int(row["cell"]))
            ring = [[lng, lat] for lat, lng in h3.cell_to_boundary(cell)]
            ring.append(ring[0])
            resolution = row.get("resolution")
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {
                        "cell": cell,
                        "resolution": int(resolution if resolution is not None else h3.get_resolution(cell)),
                        "window_start": row["window_start"].isoformat(),
                        "count": row["count"],
                        "ci_low": row["ci_low"],
                        "ci_high": row["ci_high"],
                        "near_threshold": row.get("near_threshold"),
                        "marking": self.manifest.get("marking"),
                    },
                }
            )
        return {
            "type": "FeatureCollection",
            "privmob": {
                "release_id": self.manifest.get("release_id"),
                "marking": self.manifest.get("marking"),
            },
            "features": features,
        }

    def write(self, directory: str | Path, *, signing_key: Any | None = None,
              extra_files: ExtraFiles | None = None) -> Path:
        """Write ``release.parquet``, ``release.csv``, ``release.geojson`` and
        ``manifest.json`` into ``directory``, atomically; with an Ed25519 ``signing_key``
        also ``manifest.sig`` and ``signing_key.pub`` (see :mod:`privmob.governance.signing`).

        Data files only: ``extra_files(release, folder)`` may add files drawn from the
        release (it returns their names) before the manifest lists every file's digest and
        the signature covers them — :func:`privmob.pipeline.publish.publish` draws the reports so.
        The directory must not already hold a release. Returns its path.
        """
        target = Path(directory)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ReleaseExistsError(
                f"{target} already exists and is not empty; a release is never overwritten "
                "silently — choose a new output folder or move the old release away"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_partials(target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-",
                                        dir=target.parent))
        except OSError as exc:
            raise ReleaseWriteError(
                f"cannot create the release folder beside {target}: {exc.strerror}; "
                "nothing was published"
            ) from exc
        try:
            self._write_files(tmp, extra_files=extra_files)
            if signing_key is not None:
                from privmob.governance.signing import write_signature

                write_signature(tmp, signing_key)
            _fsync_dir(tmp)
            if target.exists():
                target.rmdir()
            os.rename(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, FileExistsError) or getattr(exc, "errno", None) == 39:
                raise ReleaseExistsError(f"{target} was created by another run meanwhile") from exc
            raise ReleaseWriteError(
                f"writing the release to {target} failed ({exc.strerror or exc}); "
                "nothing was published"
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write_files(self, folder: Path, *, extra_files: ExtraFiles | None = None) -> None:
        marking = str(self.manifest.get("marking", ""))
        release_id = str(self.manifest.get("release_id", ""))
        meta = {"privmob.marking": marking, "privmob.release_id": release_id}
        write_marked_parquet(self.table, folder / "release.parquet", meta)
        csv_text = local_csv(self.table, self.manifest)
        # The marking travels with the file: one comment line (read it back with
        # polars.read_csv(..., comment_prefix="#") or pandas' comment="#").
        header = f"# {marking} · privmob release {release_id}\n"
        (folder / "release.csv").write_text(header + csv_text, encoding="utf-8")
        (folder / "release.geojson").write_text(
            json.dumps(self.to_geojson(), ensure_ascii=False), encoding="utf-8"
        )
        names = [n for n in RELEASE_FILES if n != "manifest.json"]
        names += self._write_boundary(folder)
        if self.flows is not None:
            self._write_flows(folder, marking, release_id)
            names += list(FLOWS_FILES)
        for res, level in sorted(self.levels.items()):
            write_marked_parquet(level, folder / f"release-res{res}.parquet", meta)
            level_csv = local_csv(level, self.manifest)
            (folder / f"release-res{res}.csv").write_text(header + level_csv, encoding="utf-8")
            names += [f"release-res{res}.parquet", f"release-res{res}.csv"]
        if extra_files is not None:
            names += extra_files(self, folder)
        files = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}
        manifest = {**self.manifest, "files": files}
        (folder / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=False) + "\n",
            encoding="utf-8",
        )
        for name in [*names, "manifest.json"]:
            with (folder / name).open("rb") as fh:
                os.fsync(fh.fileno())

    def _write_boundary(self, folder: Path) -> list[str]:
        """Carry the public boundary of public keys (``boundary.geojson``, in the signed file
        list), so reports of the folder draw it without being told where it is."""
        from privmob.privacy.keys import BOUNDARY_FILE, boundary_document

        keys = str(self.manifest.get("keys") or "")
        if self.boundary is None or not keys.startswith("public:"):
            return []
        data = boundary_document(Path(self.boundary), keys)
        if data is None:
            return []
        (folder / BOUNDARY_FILE).write_bytes(data)
        return [BOUNDARY_FILE]

    def _write_flows(self, folder: Path, marking: str, release_id: str) -> None:
        flows = self.flows
        assert flows is not None
        meta = {"privmob.marking": marking, "privmob.release_id": release_id}
        write_marked_parquet(flows, folder / "flows.parquet", meta)
        text = local_csv(flows, self.manifest)
        (folder / "flows.csv").write_text(f"# {marking} · privmob release {release_id}\n" + text,
                                          encoding="utf-8")
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [
                    [row["origin_lng"], row["origin_lat"]], [row["dest_lng"], row["dest_lat"]]]},
                "properties": {
                    "origin": row["origin"], "destination": row["destination"],
                    "window_start": row["window_start"].isoformat(), "count": row["count"],
                    "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                    "near_threshold": row.get("near_threshold"), "marking": marking,
                },
            }
            for row in flows.iter_rows(named=True)
        ]
        (folder / "flows.geojson").write_text(json.dumps(
            {"type": "FeatureCollection", "privmob": {"release_id": release_id, "marking": marking},
             "features": features}, ensure_ascii=False), encoding="utf-8")


def write_operator_record(path: Path, record: Mapping[str, Any]) -> Path:
    """Write a release's operator record (exact figures) as JSON, atomically, mode 0600.

    The record is private: it goes beside the ledger, never into a release folder. A
    missing parent folder is created with mode 0700. Returns ``path``.
    """
    from privmob.errors import ReleaseWriteError

    path = Path(path)
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ReleaseWriteError(
            f"cannot create the operator record in {path.parent}: {exc.strerror or exc}"
        ) from exc
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(dict(record), fh, ensure_ascii=False, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ReleaseWriteError(
            f"writing the operator record {path} failed ({exc.strerror or exc})"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_operator_record(path: Path) -> dict[str, Any]:
    """Read an operator record written by :func:`write_operator_record`."""
    from privmob.errors import InputError

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the operator record {path}: {exc}") from exc
    if not isinstance(record, dict):
        raise InputError(f"{path} is not an operator record (expected a JSON object)")
    return record


def _remove_stale_partials(target: Path) -> None:
    """Delete hidden half-written folders of runs that died before their rename.

    A run killed between writing and renaming leaves ``.NAME.partial-PID-*``; it was never
    published (its budget is settled as spent by the ledger), and must not be mistaken for a
    release later. Folders of live processes are left alone.
    """
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        pid_text = stale.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid() or False
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
