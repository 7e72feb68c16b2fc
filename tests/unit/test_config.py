"""Behaviour of the job configuration (privmob.config)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from privmob.config import JobConfig, parse_duration
from privmob.errors import ConfigError, PrivmobError
from tests.conftest import config

MINIMAL_TOML = """
[job]
operator = "tester"
period = "2026-11-26"
"""


def _write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _from(**sections: dict[str, Any]) -> JobConfig:
    """from_dict with a valid [job] plus the given sections (no defaults merged in)."""
    data: dict[str, Any] = {"job": {"operator": "tester", "period": "2026-11-26"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return JobConfig.from_dict(data)


# --- the error type ------------------------------------------------------------------


def test_config_error_is_a_value_error_and_a_privmob_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, PrivmobError)
    with pytest.raises(ValueError, match="epsilon"):
        _from(privacy={"epsilon": -1.0})


# --- reading files, relative paths ---------------------------------------------------


def test_from_toml_reads_a_minimal_job(tmp_path: Path) -> None:
    cfg = JobConfig.from_toml(_write(tmp_path, MINIMAL_TOML))
    assert cfg.job.operator == "tester"
    assert cfg.job.period == dt.date(2026, 11, 26)
    assert cfg.source == tmp_path / "job.toml"


def test_relative_paths_are_resolved_against_the_job_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "jobs" / "daily"
    folder.mkdir(parents=True)
    path = _write(folder, MINIMAL_TOML.replace(
        '[job]\n',
        '[job]\ninput = "data/pings.parquet"\noutput = "../out/release"\n'
        'key_file = "secret.key"\nquarantine = "q/bad.parquet"\n',
    ) + '[grid]\nboundary = "city.geojson"\n')
    # The working directory must not matter.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = JobConfig.from_toml(path)
    base = folder.resolve()
    assert cfg.job.input == base / "data" / "pings.parquet"
    assert cfg.job.output == base / ".." / "out" / "release"
    assert cfg.job.key_file == base / "secret.key"
    assert cfg.job.quarantine == base / "q" / "bad.parquet"
    assert cfg.grid.boundary == base / "city.geojson"


def test_relative_path_given_to_from_toml_still_resolves_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", MINIMAL_TOML.replace("[job]\n", '[job]\ninput = "p.csv"\n'))
    monkeypatch.chdir(tmp_path)
    cfg = JobConfig.from_toml("sub/job.toml")
    assert cfg.job.input is not None
    assert cfg.job.input.is_absolute()
    assert cfg.job.input == (tmp_path / "sub" / "p.csv").resolve()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "pings.parquet"
    path = _write(tmp_path, MINIMAL_TOML.replace("[job]\n", f'[job]\ninput = "{target.as_posix()}"\n'))
    assert JobConfig.from_toml(path).job.input == target


def test_from_toml_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        JobConfig.from_toml(tmp_path / "nope.toml")


def test_from_toml_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        JobConfig.from_toml(_write(tmp_path, "[job\noperator = 'x'"))


def test_from_toml_non_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b'[job]\noperator = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        JobConfig.from_toml(path)


def test_the_job_section_is_required() -> None:
    with pytest.raises(ConfigError, match=r"\[job\]"):
        JobConfig.from_dict({"privacy": {"epsilon": 1.0}})


def test_a_section_that_is_not_a_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"\[privacy\] must be a table"):
        JobConfig.from_dict({"job": {"operator": "a"}, "privacy": 1})


# --- unknown keys ---------------------------------------------------------------------


def test_unknown_key_in_a_section_gets_a_did_you_mean_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL_TOML + "[privacy]\nepsilom = 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'epsilom'.*did you mean 'epsilon'"):
        JobConfig.from_toml(path)


def test_unknown_top_level_section_gets_a_did_you_mean_hint() -> None:
    with pytest.raises(ConfigError, match=r"top level.*'privcy'.*did you mean 'privacy'"):
        JobConfig.from_dict({"job": {"operator": "a"}, "privcy": {"epsilon": 1.0}})


def test_unknown_key_without_a_near_match_lists_the_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"'zzzzzz'.*known keys:.*resolution.*window") as info:
        _from(grid={"zzzzzz": 1})
    assert "did you mean" not in str(info.value)


def test_unknown_key_in_job_section() -> None:
    with pytest.raises(ConfigError, match=r"\[job\].*'operater'.*did you mean 'operator'"):
        JobConfig.from_dict({"job": {"operater": "a"}})


# --- wrong types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("privacy", "epsilon", "1"),
        ("privacy", "epsilon", True),
        ("privacy", "delta", "1e-7"),
        ("privacy", "min_count", 10.0),
        ("privacy", "max_windows", "24"),
        ("grid", "resolution", 8.5),
        ("grid", "resolution", "8"),
        ("grid", "resolution", True),
        ("grid", "window", 3600),
        ("scope", "groups", "confirmed"),
        ("scope", "groups", ["confirmed", 3]),
        ("job", "period_days", "2"),
        ("job", "timezone", 8),
        ("grid", "boundary_where", "adcode=110000"),
        ("job", "input", 5),
    ],
)
def test_wrong_types_are_config_errors(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        _from(**{section: {key: value}})


def test_wrong_type_in_toml_file(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL_TOML + '[privacy]\nepsilon = "1"\n')
    with pytest.raises(ConfigError, match=r"epsilon.*wrong type"):
        JobConfig.from_toml(path)


def test_integer_epsilon_is_accepted_as_a_float() -> None:
    cfg = _from(privacy={"epsilon": 2, "mechanism": "laplace"})
    assert cfg.privacy.epsilon == 2.0
    assert isinstance(cfg.privacy.epsilon, float)


def test_groups_list_becomes_a_tuple() -> None:
    cfg = _from(scope={"groups": ["confirmed"]})
    assert cfg.scope.groups == ("confirmed",)


# --- ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, -1.0, 0, float("inf"), float("-inf"), float("nan"), 20.5])
def test_epsilon_out_of_range(epsilon: float) -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        _from(privacy={"epsilon": epsilon})


def test_inf_epsilon_in_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        JobConfig.from_toml(_write(tmp_path, MINIMAL_TOML + "[privacy]\nepsilon = inf\n"))


@pytest.mark.parametrize("epsilon", [0.01, 1, 20])
def test_epsilon_in_range_is_accepted(epsilon: float) -> None:
    assert _from(privacy={"epsilon": epsilon}).privacy.epsilon == epsilon


@pytest.mark.parametrize("delta", [0.0, -1e-7, 1e-3, 0.5, 1.0, float("nan"), float("inf")])
def test_delta_out_of_range(delta: float) -> None:
    with pytest.raises(ConfigError, match="delta"):
        _from(privacy={"delta": delta})


def test_delta_just_below_the_limit_is_accepted() -> None:
    assert _from(privacy={"delta": 9.99e-4}).privacy.delta == pytest.approx(9.99e-4)


@pytest.mark.parametrize("min_count", [0, -5])
def test_min_count_must_be_at_least_one(min_count: int) -> None:
    with pytest.raises(ConfigError, match="min_count"):
        _from(privacy={"min_count": min_count})


def test_min_count_one_is_accepted() -> None:
    assert _from(privacy={"min_count": 1}).privacy.min_count == 1


@pytest.mark.parametrize("resolution", [16, -1, 100])
def test_resolution_out_of_range(resolution: int) -> None:
    with pytest.raises(ConfigError, match="resolution"):
        _from(grid={"resolution": resolution})


@pytest.mark.parametrize("resolution", [0, 15])
def test_resolution_limits_are_accepted(resolution: int) -> None:
    assert _from(grid={"resolution": resolution}).grid.resolution == resolution


@pytest.mark.parametrize("window", ["7m", "abc", "30s", "0m", "1h30", "", "2d", "-1h"])
def test_bad_windows(window: str) -> None:
    with pytest.raises(ConfigError, match="window"):
        _from(grid={"window": window})


@pytest.mark.parametrize(
    ("window", "seconds"),
    [("1m", 60), ("15m", 900), ("15min", 900), ("90m", 5400), ("1h", 3600), ("6h", 21600),
     ("1d", 86400), ("3600s", 3600)],
)
def test_good_windows(window: str, seconds: int) -> None:
    assert _from(grid={"window": window}).grid.window_seconds == seconds
    assert parse_duration(window) == seconds


@pytest.mark.parametrize(("key", "value"), [("max_cells_per_window", 0), ("max_cells_per_window", 65),
                                            ("max_windows", 0), ("max_spurious_rate", 0.0),
                                            ("max_spurious_rate", 0.6)])
def test_other_privacy_ranges(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        _from(privacy={key: value})


def test_unknown_mechanism_is_refused() -> None:
    with pytest.raises(ConfigError, match="mechanism"):
        _from(privacy={"mechanism": "exponential"})


def test_rho_with_laplace_is_refused() -> None:
    with pytest.raises(ConfigError, match="rho"):
        _from(privacy={"mechanism": "laplace", "rho": 0.1})


def test_rho_with_gaussian_is_accepted_and_range_checked() -> None:
    assert _from(privacy={"mechanism": "gaussian", "rho": 0.1}).privacy.rho == 0.1
    with pytest.raises(ConfigError, match="rho"):
        _from(privacy={"mechanism": "gaussian", "rho": 0.0})
    with pytest.raises(ConfigError, match="rho"):
        _from(privacy={"mechanism": "gaussian", "rho": 11.0})


# --- the job section ---------------------------------------------------------------------


def test_purpose_outside_the_allow_list_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"purpose = 'marketing' is not allowed.*epidemic-prevention"):
        JobConfig.from_dict({"job": {"operator": "a", "purpose": "marketing"}})


def test_purpose_in_a_custom_allow_list_is_accepted() -> None:
    cfg = JobConfig.from_dict({"job": {"operator": "a", "purpose": "contact-tracing",
                                       "allowed_purposes": ["contact-tracing"]}})
    assert cfg.job.purpose == "contact-tracing"


@pytest.mark.parametrize("operator", ["", "   ", "\t"])
def test_empty_operator_is_refused(operator: str) -> None:
    with pytest.raises(ConfigError, match="operator"):
        JobConfig.from_dict({"job": {"operator": operator}})


def test_missing_operator_is_refused() -> None:
    with pytest.raises(ConfigError, match="operator"):
        JobConfig.from_dict({"job": {"period": "2026-11-26"}})


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "UTC+8", "../../etc/passwd"])
def test_bad_timezone_is_refused(tz: str) -> None:
    with pytest.raises(ConfigError, match="timezone"):
        JobConfig.from_dict({"job": {"operator": "a", "timezone": tz}})


def test_bad_period_is_refused() -> None:
    with pytest.raises(ConfigError, match="period"):
        JobConfig.from_dict({"job": {"operator": "a", "period": "26/11/2026"}})


def test_toml_date_literal_is_accepted_as_period(tmp_path: Path) -> None:
    path = _write(tmp_path, '[job]\noperator = "a"\nperiod = 2026-11-26\n')
    assert JobConfig.from_toml(path).job.period == dt.date(2026, 11, 26)


@pytest.mark.parametrize("days", [0, 367])
def test_period_days_range(days: int) -> None:
    with pytest.raises(ConfigError, match="period_days"):
        _from(job={"period_days": days})


def test_empty_marking_is_refused() -> None:
    with pytest.raises(ConfigError, match="marking"):
        _from(job={"marking": "  "})


def test_on_bad_rows_value_is_checked() -> None:
    with pytest.raises(ConfigError, match="on_bad_rows"):
        _from(job={"on_bad_rows": "ignore"})


# --- scope ------------------------------------------------------------------------------


def test_assume_group_not_in_groups_is_refused() -> None:
    with pytest.raises(ConfigError, match="assume_group"):
        _from(scope={"groups": ["confirmed"], "assume_group": "close_contact"})


def test_assume_group_in_groups_is_accepted() -> None:
    cfg = _from(scope={"assume_group": "close_contact"})
    assert cfg.scope.assume_group == "close_contact"


def test_empty_groups_is_refused() -> None:
    with pytest.raises(ConfigError, match="groups"):
        _from(scope={"groups": []})


# --- with_overrides ------------------------------------------------------------------------


def test_with_overrides_replaces_and_keeps_the_original() -> None:
    cfg = config()
    new = cfg.with_overrides(privacy__epsilon=0.5, grid__resolution=7)
    assert (new.privacy.epsilon, new.grid.resolution) == (0.5, 7)
    assert (cfg.privacy.epsilon, cfg.grid.resolution) == (1.0, 8)


@pytest.mark.parametrize(
    "override",
    [{"privacy__epsilon": -1.0}, {"privacy__epsilon": "1"}, {"grid__window": "7m"},
     {"grid__resolution": 16}, {"job__operator": ""}, {"job__timezone": "Nowhere/Here"},
     {"scope__assume_group": "bystander"}, {"privacy__min_count": 0}],
)
def test_with_overrides_revalidates(override: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        config().with_overrides(**override)


def test_with_overrides_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="did you mean 'epsilon'"):
        config().with_overrides(privacy__epsilom=0.5)
    with pytest.raises(ConfigError, match="section__field"):
        config().with_overrides(epsilon=0.5)


def test_with_overrides_parses_period_text() -> None:
    cfg = JobConfig.from_dict({"job": {"operator": "a"}})
    assert cfg.with_overrides(job__period="2026-12-01").job.period == dt.date(2026, 12, 1)


def test_with_overrides_validates_the_combined_result_not_each_step() -> None:
    """Switching a Laplace job to Gaussian with a ρ is valid whatever order the kwargs are in."""
    cfg = config(privacy={"mechanism": "laplace"})
    a = cfg.with_overrides(privacy__mechanism="gaussian", privacy__rho=0.1)
    assert (a.privacy.mechanism, a.privacy.rho) == ("gaussian", 0.1)
    b = cfg.with_overrides(privacy__rho=0.1, privacy__mechanism="gaussian")
    assert (b.privacy.mechanism, b.privacy.rho) == ("gaussian", 0.1)


def test_config_is_frozen() -> None:
    cfg = config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.privacy.epsilon = 5.0  # type: ignore[misc]


# --- period and windows ----------------------------------------------------------------------


def test_n_windows_one_day_hourly_is_24() -> None:
    assert config(grid={"window": "1h"}).n_windows == 24


def test_n_windows_two_days_hourly_is_48() -> None:
    assert config(job={"period_days": 2}, grid={"window": "1h"}).n_windows == 48


def test_n_windows_quarter_hours_and_whole_day() -> None:
    assert config(grid={"window": "15m"}).n_windows == 96
    assert config(grid={"window": "1d"}).n_windows == 1


def test_n_windows_on_a_spring_forward_day_is_23() -> None:
    cfg = config(job={"timezone": "Europe/Berlin", "period": "2026-03-29"}, grid={"window": "1h"})
    assert cfg.n_windows == 23
    assert (cfg.period_end - cfg.period_start) == dt.timedelta(days=1)  # wall clock
    assert cfg.period_end.timestamp() - cfg.period_start.timestamp() == 23 * 3600


def test_n_windows_on_a_fall_back_day_is_25() -> None:
    cfg = config(job={"timezone": "Europe/Berlin", "period": "2026-10-25"}, grid={"window": "1h"})
    assert cfg.n_windows == 25


def test_period_start_is_local_midnight() -> None:
    cfg = config()
    start = cfg.period_start
    assert start.utcoffset() == dt.timedelta(hours=8)
    assert (start.hour, start.minute) == (0, 0)
    assert int(start.timestamp()) == int(
        dt.datetime(2026, 11, 25, 16, tzinfo=dt.UTC).timestamp()
    )
    assert int(cfg.period_end.timestamp()) - int(start.timestamp()) == 86400


def test_missing_period_is_fine_until_the_period_is_needed() -> None:
    cfg = JobConfig.from_dict({"job": {"operator": "a"}})
    assert cfg.job.period is None
    with pytest.raises(ConfigError, match="period"):
        _ = cfg.period_start


@pytest.mark.parametrize("attr", ["period_end", "n_windows"])
def test_period_end_and_n_windows_without_period_raise_config_error(attr: str) -> None:
    """Both need the period start, so they must fail like period_start does (not assert)."""
    cfg = JobConfig.from_dict({"job": {"operator": "a"}})
    with pytest.raises(ConfigError, match="period"):
        getattr(cfg, attr)


# --- misc -----------------------------------------------------------------------------------


def test_dataset_name_defaults_to_input_stem(tmp_path: Path) -> None:
    cfg = _from(job={"input": str(tmp_path / "pings.csv.gz")})
    assert cfg.dataset == "pings"
    assert _from().dataset == "dataframe"
    assert _from(job={"dataset": "beijing"}).dataset == "beijing"
