"""The typed manifest: one writer (sections per table) and one reader for the reports."""

from __future__ import annotations

from pathlib import Path

import pytest

import privmob as pm
from privmob.pipeline.publish import publish
from privmob.release.manifest import ManifestView
from privmob.release.table import ReleasedTable
from tests.conftest import SAMPLES, config


def test_view_reads_typed_fields_and_tolerates_old_or_odd_manifests() -> None:
    v = ManifestView.of({"release_id": "r1", "windows": 8, "resolution": 7.0, "release_threshold": 12,
                         "ci95_halfwidth": True, "keys": "public:abc", "epsilon": 1, "window": 3,
                         "signature": {"fingerprint": "ab12"},
                         "flows": {"window": "1d", "ci95_halfwidth": 9, "stays": "x"}})
    assert (v.release_id, v.windows, v.resolution, v.release_threshold) == ("r1", 8, 7, 12)
    assert v.ci95_halfwidth is None  # a boolean is not a number
    assert v.window is None  # only a duration text is a window
    assert v.public_keys and v.epsilon == 1.0 and v.signature_fingerprint == "ab12"
    assert v.flows is not None and (v.flows.window, v.flows.ci95_halfwidth, v.flows.stays) == ("1d", 9, None)
    empty = ManifestView.of({})
    assert (empty.keys, empty.public_keys, empty.flows, empty.windows) == ("", False, None, None)


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> ReleasedTable:
    mp = pytest.MonkeyPatch()
    from tests.conftest import TEST_KEY

    mp.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
    mp.setenv("PRIVMOB_LEDGER", str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite"))
    cfg = config(grid={"resolution": 7, "window": "3h", "boundary": str(SAMPLES / "beijing_boundary.geojson"),
                       "parent_resolutions": [6], "parent_epsilon": 0.5},
                 privacy={"max_windows": 8, "epsilon": 1.0},
                 flows={"units": "boundary", "boundary": str(SAMPLES / "beijing_districts.geojson"),
                        "epsilon": 0.5})
    try:
        return pm.plan(cfg).release(SAMPLES / "beijing_pings.parquet")
    finally:
        mp.undo()


def test_one_writer_with_a_section_per_table(released: ReleasedTable) -> None:
    m = released.manifest
    v = ManifestView.of(m)
    assert v.release_threshold == m["release_threshold"] and v.n_keys == m["n_keys"]
    assert m["cells_released"] == released.table.height
    assert [lv["resolution"] for lv in m["levels"]] == [6]
    assert m["levels"][0]["cells_released"] == released.levels[6].height
    assert v.flows is not None and v.flows.flows_released == m["flows"]["flows_released"]
    assert released.flows is not None and v.flows.flows_released == released.flows.height
    assert "rows_in" not in m and "rows_in" in released.operator_record  # exact figures stay out


def test_write_writes_data_files_and_publish_adds_the_reports(released: ReleasedTable,
                                                             tmp_path: Path) -> None:
    """ReleasedTable.write never draws (release does not import report); publish draws the
    reports into the same folder, listed and digested in the manifest before signing."""
    plain = released.write(tmp_path / "data-only")
    assert not any(p.suffix in (".png", ".pdf", ".html") for p in plain.iterdir())
    folder = publish(released, tmp_path / "published", reports=True)
    files = ReleasedTable.read(folder).manifest["files"]
    assert {"heatmap.png", "heatmap.pdf", "report.html"} <= set(files)
    assert (folder / "report.html").is_file()
