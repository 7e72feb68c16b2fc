"""The HTML report's manifest card reads the manifest through ``ManifestView``, as the heatmap
does (issue 13: one typed manifest module read by both report modules)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

import polars as pl
import pytest

from privmob.release.manifest import ManifestView
from privmob.release.table import ReleasedTable
from privmob.report.html import html_report

START = dt.datetime(2026, 11, 25, 16, tzinfo=dt.UTC)  # 2026-11-26 00:00 in Beijing


def _release(**manifest: Any) -> ReleasedTable:
    table = pl.DataFrame(
        {"cell": ["8731aa09affffff", "8731aa09effffff"], "window_start": [START, START],
         "count": [80, 60], "ci_low": [52, 32], "ci_high": [108, 88], "near_threshold": [False, False]},
        schema_overrides={"window_start": pl.Datetime("us", "UTC")},
    )
    base = {"release_id": "r1", "timezone": "Asia/Shanghai", "period_start": "2026-11-26T00:00:00+08:00",
            "window": "3h", "windows": 8, "marking": "m", "purpose": "raw-purpose",
            "operator": "raw-operator", "epsilon": 1.0, "delta": 1e-7, "resolution": 7,
            "ci95_halfwidth": 28, "release_threshold": 53, "min_count": 10, "stages": ["ingest"],
            "budget": {"days_charged": ["2026-11-26"], "epsilon_per_day": 2.0}}
    return ReleasedTable(table=table, manifest={**base, **manifest})


def _card(page: str) -> str:
    """The card's tables (without the manifest as JSON below them)."""
    found = re.search(r'<section class="card manifest".*?<p class="hint">', page, re.S)
    assert found, "the page has no manifest card"
    return found.group(0)


def test_the_card_shows_what_the_view_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field of the card comes from the view: a view that says otherwise than the raw
    mapping is what the page shows (a raw read would show the raw value)."""
    shown: dict[str, Any] = {
        "purpose": "view-purpose", "operator": "view-operator", "dataset": "view-dataset",
        "release_id": "view-release-id", "privacy_unit": "view-unit", "privmob_version": "9.9.9",
        "epsilon": 0.123, "noise_std": 7.75, "spurious_rate": 0.00321, "cells_released": 4321,
        "cells_suppressed": 1234, "resolution": 9, "min_count": 77, "release_threshold": 66,
        "ci95_halfwidth": 31, "max_cells_per_window": 3, "max_windows": 5, "sensitivity": (5.0, 6.0),
        "bounding_rule": "view-rule", "scope_groups": ("view-group",), "stages": ("view-stage",),
        "pseudonymisation": ("view-method", "view-linkage"), "charged_days": ("view-day",),
        "epsilon_per_day": 4.5, "signature_fingerprint": "view-fingerprint",
        "signature_algorithm": "view-algorithm", "files": (("view-file", "view-digest"),),
    }
    real_of = ManifestView.of

    def altered(m: Any) -> ManifestView:
        return dataclasses.replace(real_of(m), **shown)

    monkeypatch.setattr(ManifestView, "of", staticmethod(altered))
    card = _card(html_report(_release()))
    for text in ("view-purpose", "view-operator", "view-dataset", "view-release-id", "view-unit",
                 "privmob 9.9.9", "ε = 0.123", "standard deviation 7.75", "probability 0.00321",
                 "4,321 cell-windows released, 1,234 withheld", "H3 resolution 9",
                 "noisy count ≥ 66 is published (min_count 77)", "shown count ± 31",
                 "≤ 3 cell(s) per person and window; ≤ 5 window(s) per person; sensitivity L1 = 5, L2 = 6",
                 "view-rule", "view-group", "<li>view-stage</li>",
                 "view-method; linkage period view-linkage", "charged to day(s) view-day; limit ε 4.5/day",
                 "view-algorithm · <code>view-fingerprint</code>", "view-file: <code>view-digest</code>"):
        assert text in card, text
    for raw in ("raw-purpose", "raw-operator", "ε = 1,", "H3 resolution 7", "± 28", "2026-11-26; limit"):
        assert raw not in card, raw


def test_an_odd_manifest_shows_in_the_card_as_in_the_heatmap() -> None:
    """A hand-edited or older manifest: values of the wrong JSON type are left out, and
    numbers are shown as the view types them, as the heatmap footer reads them too."""
    odd = _release(resolution=7.0, ci95_halfwidth=True, epsilon="1", min_count=10.0,
                   created_at=1764086400, stages="ingest")
    view = ManifestView.of(odd.manifest)
    assert (view.resolution, view.ci95_halfwidth, view.epsilon, view.min_count) == (7, None, None, 10)
    card = _card(html_report(odd))
    assert "H3 resolution 7</td>" in card and "7.0" not in card
    assert "shown count ±" not in card and "True" not in card  # a boolean is not a half-width
    assert "ε =" not in card and "δ = 1e-07" in card  # a text ε is not a number
    assert "(min_count 10)" in card
    assert "Created" not in card and "Stages applied" not in card
