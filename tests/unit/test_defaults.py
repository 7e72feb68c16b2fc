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


@pytest.mark.parametrize(("persons", "pairs"), [(220, 3), (999, 3), (1_000, 6), (1_555, 6), (None, 6)])
def test_a_declared_group_of_a_few_hundred_gets_fewer_pairs(persons: int | None, pairs: int) -> None:
    """Under 1,000 declared persons a daily release caps a person at 3 pairs (less noise in a
    coarse partition); undeclared jobs are taken as the larger kind (ADR 0008)."""
    p = pm.plan(job(job={} if persons is None else {"expected_persons": persons}))
    assert p.config.adaptive is not None
    assert p.config.adaptive.max_pairs == pairs == max_pairs_for(1, persons)
    assert p.sensitivity.l1 == pairs
    (choice,) = [c for c in p.choices if c.setting == "max_pairs"]
    assert ("under 1,000 persons" in choice.reason) == (pairs == 3)
    assert max_pairs_for(8, persons) == pairs + 3  # one more per two further windows


def test_what_the_job_states_is_never_overridden() -> None:
    p = pm.plan(job(job={"expected_persons": 1_555}, grid={"window": "3h"},
                    privacy={"mechanism": "gaussian"}, adaptive={"max_pairs": 9}))
    assert p.config.grid.window == "3h"
    assert p.config.privacy.mechanism == "gaussian"
    assert p.config.adaptive is not None
    assert p.config.adaptive.max_pairs == 9
    assert p.choices == ()


def test_only_epsilon_and_a_boundary_get_the_small_group_defaults() -> None:
    """A job that states only ε and the boundary is taken as a key group under 4,000 persons
    (ADR 0008): the same release as declaring one, and explain() says it assumed so."""
    p = pm.plan(job(privacy={"epsilon": 1.0}))
    declared = pm.plan(job(privacy={"epsilon": 1.0}, job={"expected_persons": 1_555}))
    assert p.config.grid.window == "1d"
    assert p.config.adaptive == declared.config.adaptive == pm.AdaptiveConfig(max_pairs=6)
    assert p.config.privacy == declared.config.privacy
    assert [c.setting for c in p.choices] == [c.setting for c in declared.choices]
    assert p.config.job.expected_persons is None  # nothing is made up in the job itself
    (mech,) = [c for c in p.choices if c.setting == "mechanism"]
    assert f"release threshold {p.release_threshold} (Laplace)" in mech.reason  # the one it uses
    text = p.explain()
    assert "window = 1d: no [job] expected_persons declared" in text
    assert "fewer than 4,000 persons" in text


@pytest.mark.parametrize("grid", [{"resolution": 7}, {"window": "3h"}, {"parent_resolutions": [5]}])
def test_a_grid_shaped_by_hand_without_a_population_is_kept_and_explain_says_how(
        grid: dict[str, object]) -> None:
    p = pm.plan(job(grid=grid))
    assert p.choices == ()
    assert p.config.adaptive is None
    assert p.config.privacy.mechanism == "gaussian"
    assert "declare [job] expected_persons" in p.explain()


def test_a_config_built_in_python_keeps_the_settings_it_sets() -> None:
    """No job file, so no ``given``: settings that differ from their defaults count as
    stated, and a hand-built 3 h grid is not turned into a daily one."""
    base = job()
    cfg = pm.JobConfig(job=base.job, grid=pm.GridConfig(window="3h", boundary=base.grid.boundary))
    assert cfg.given == frozenset()
    p = pm.plan(cfg)
    assert p.choices == ()
    assert p.config.grid.window == "3h"
    bare = pm.plan(pm.JobConfig(job=base.job, grid=pm.GridConfig(boundary=base.grid.boundary)))
    assert bare.config.grid.window == "1d"
    assert bare.config.adaptive is not None


def test_without_a_boundary_nothing_is_chosen() -> None:
    """No boundary, no public roots for a partition: the fixed path, as before."""
    p = pm.plan(pm.JobConfig.from_dict({"job": {"operator": "t", "period": PERIOD.isoformat(),
                                                "expected_persons": 500}}))
    assert p.choices == ()
    assert p.config.adaptive is None


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
