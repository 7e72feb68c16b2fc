"""Defaults chosen from public parameters only (privmob.pipeline.defaults, ADR 0008)."""

from __future__ import annotations

import pytest

import privmob as pm
from privmob.pipeline.defaults import choose, max_pairs_for, window_for
from tests.conftest import PERIOD, SAMPLES

BOUNDARY = str(SAMPLES / "beijing_boundary.geojson")


def job(**sections: dict[str, object]) -> pm.JobConfig:
    data: dict[str, dict[str, object]] = {"job": {"operator": "t", "period": PERIOD.isoformat()},
                                          "grid": {"boundary": BOUNDARY}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return pm.JobConfig.from_dict(data)


@pytest.mark.parametrize(("persons", "window"), [(300, "1d"), (1_555, "1d"), (3_999, "1d"), (4_000, "6h"),
                                                 (20_000, "3h"), (60_000, "1h")])
def test_the_window_grows_finer_with_the_declared_population(persons: int, window: str) -> None:
    assert window_for(persons) == window
    assert pm.plan(job(job={"expected_persons": persons})).config.grid.window == window


def test_a_small_group_gets_an_adaptive_daily_laplace_release_and_explain_says_why() -> None:
    p = pm.plan(job(job={"expected_persons": 1_555}))
    cfg = p.config
    assert cfg.adaptive is not None
    assert cfg.adaptive.max_pairs == max_pairs_for(1) == 6
    assert cfg.privacy.mechanism == "laplace"
    assert [c.setting for c in p.choices] == ["window", "adaptive", "max_pairs", "mechanism"]
    text = p.explain()
    assert "chosen from public parameters" in text
    assert "window = 1d: 1,555 expected persons" in text
    assert "mechanism = laplace: release threshold" in text


def test_what_the_job_states_is_never_overridden() -> None:
    p = pm.plan(job(job={"expected_persons": 1_555}, grid={"window": "3h"},
                    privacy={"mechanism": "gaussian"}, adaptive={"max_pairs": 9}))
    assert p.config.grid.window == "3h"
    assert p.config.privacy.mechanism == "gaussian"
    assert p.config.adaptive is not None
    assert p.config.adaptive.max_pairs == 9
    assert p.choices == ()


def test_without_a_declared_population_nothing_is_chosen_and_explain_says_how() -> None:
    p = pm.plan(job())
    assert p.choices == ()
    assert p.config.adaptive is None
    assert p.config.grid.window == "1h"
    assert "declare [job] expected_persons" in p.explain()


def test_choices_depend_on_public_parameters_only() -> None:
    """The same job gives the same choices whatever data it will meet: choose() is given no
    data at all, only the config and the boundary's root count."""
    cfg = job(job={"expected_persons": 8_000})
    a, choices_a = choose(cfg, 26)
    b, choices_b = choose(cfg, 26)
    assert a == b
    assert choices_a == choices_b
    assert a.given == cfg.given  # the job's own statements, not what plan chose


def test_a_large_population_with_many_windows_may_prefer_gaussian() -> None:
    p = pm.plan(job(job={"expected_persons": 100_000}))
    (mech,) = [c for c in p.choices if c.setting == "mechanism"]
    lap, gau = (int(x) for x in mech.reason.split("threshold ")[1].replace(" (Laplace) vs", "")
                .split(" (Gaussian)")[0].split())
    assert mech.value == ("laplace" if lap <= gau else "gaussian")


def test_expected_persons_is_validated() -> None:
    with pytest.raises(pm.ConfigError, match="expected_persons"):
        job(job={"expected_persons": 0})
    with pytest.raises(pm.ConfigError, match="expected_persons"):
        job(job={"expected_persons": "many"})
