"""privmob — privacy-preserving mobility analytics for epidemic control.

Raw movement records of key groups go in; a person-level differentially private table of
distinct-person counts per H3 cell and time window comes out, with a manifest that says
how it was made. See README.md for the privacy model.

>>> import privmob as pm
>>> cfg = pm.JobConfig.from_dict({"job": {"operator": "a", "period": "2026-11-26"}})
>>> print(pm.plan(cfg).explain().splitlines()[0])  # doctest: +ELLIPSIS
privmob ... release plan for 'dataframe', period 2026-11-26 (Asia/Shanghai)
"""

from typing import TYPE_CHECKING

from privmob._version import __version__
from privmob.config import (
    AdaptiveConfig,
    BudgetConfig,
    FlowsConfig,
    GridConfig,
    JobConfig,
    JobSection,
    PrivacyConfig,
    ScopeConfig,
    StoreConfig,
)
from privmob.errors import (
    BackendUnavailableError,
    BoundaryError,
    BudgetExceededError,
    ConfigError,
    InputError,
    KeyFileError,
    MissingExtraError,
    PrivmobError,
    ReleaseExistsError,
    ReleaseWriteError,
    SchemaError,
)
from privmob.pipeline.plan import Plan, plan
from privmob.pipeline.plan import release_flows as flows
from privmob.privacy.accountant import PrivacyCost
from privmob.release.table import ReleasedTable
from privmob.stages.ingest import Pings, read_pings

if TYPE_CHECKING:  # bound on first use by __getattr__ below
    from privmob.analysis.evaluate import evaluate
    from privmob.analysis.forecast import Forecast, forecast

#: Names bound on first use (name → module holding it): the analysis tools are not needed
#: to release, and ``privmob.report`` pulls in Matplotlib and fonts (the [report] extra).
_LAZY = {"evaluate": "privmob.analysis.evaluate", "forecast": "privmob.analysis.forecast",
         "Forecast": "privmob.analysis.forecast"}


def __getattr__(name: str) -> object:
    """Import what a lazy name needs on first use; ``privmob.report`` is the subpackage."""
    import importlib

    if name == "report":
        return importlib.import_module("privmob.report")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'privmob' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Not "report": dir() feeds help() and completions, which must not need the [report] extra.
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AdaptiveConfig",
    "BackendUnavailableError",
    "BoundaryError",
    "BudgetConfig",
    "BudgetExceededError",
    "ConfigError",
    "FlowsConfig",
    "Forecast",
    "GridConfig",
    "InputError",
    "JobConfig",
    "JobSection",
    "KeyFileError",
    "MissingExtraError",
    "Pings",
    "Plan",
    "PrivacyConfig",
    "PrivacyCost",
    "PrivmobError",
    "ReleaseExistsError",
    "ReleaseWriteError",
    "ReleasedTable",
    "SchemaError",
    "ScopeConfig",
    "StoreConfig",
    "__version__",
    "evaluate",
    "flows",
    "forecast",
    "plan",
    "read_pings",
]
