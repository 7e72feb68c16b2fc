"""The exceptions privmob raises.

Every error a person can cause (a bad config, a bad input, an exhausted budget) is a
:class:`PrivmobError`; each also subclasses the matching built-in so callers that already
catch ``ValueError`` or ``ImportError`` keep working. Messages say what is wrong and end
with what to do about it; they never contain a raw identifier or a secret.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "BackendUnavailableError",
    "BoundaryError",
    "BudgetExceededError",
    "ConfigError",
    "InputError",
    "KeyFileError",
    "LedgerIntegrityError",
    "MissingExtraError",
    "PrivmobError",
    "ReleaseExistsError",
    "ReleaseWriteError",
    "SchemaError",
    "import_extra",
]


class PrivmobError(Exception):
    """Base class of every error privmob raises on purpose.

    The CLI turns these into one line on stderr and a documented exit code; anything else
    is a bug and exits with the internal-error code.
    """

    exit_code: int = 2


class ConfigError(PrivmobError, ValueError):
    """A job configuration is invalid (unknown key, out-of-range value, missing file)."""


class SchemaError(PrivmobError, ValueError):
    """The input lacks required columns or has columns of an unusable type."""


class InputError(PrivmobError, ValueError):
    """Input rows are malformed and the job was told to fail on bad rows (or the file is unreadable)."""


class BoundaryError(PrivmobError, ValueError):
    """A boundary file cannot be used to derive public keys."""


class KeyFileError(PrivmobError, PermissionError):
    """The pseudonymisation key is missing, too short, or readable by others."""


class BudgetExceededError(PrivmobError):
    """A release would spend more privacy budget than is left; nothing was read or charged."""

    exit_code = 3


class ReleaseExistsError(PrivmobError, FileExistsError):
    """The output directory already holds a release; refusing to overwrite it silently."""


class ReleaseWriteError(PrivmobError, OSError):
    """A release could not be written (disk full, read-only directory); nothing was published."""


class BackendUnavailableError(PrivmobError, ImportError):
    """The configured backend's optional dependency is not installed."""


class LedgerIntegrityError(PrivmobError):
    """The budget ledger or its audit log was altered, removed or replaced.

    Raised before anything is read or charged: a budget that can be edited does not bind.
    """


class MissingExtraError(PrivmobError, ImportError):
    """An optional part of privmob was used without the extra that installs its dependency.

    ``pip install privmob`` installs what a release needs (and the demo, with its reports);
    forecasts, the utility metrics, GDAL boundary layers and Spark each come with an extra.
    The message names the exact ``pip install 'privmob[...]'`` line; ``extra`` holds its name.
    """

    def __init__(self, message: str, *, extra: str = "", package: str = "") -> None:
        super().__init__(message)
        self.extra = extra
        self.package = package


def import_extra(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module``, an optional dependency, or say which extra installs it.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"statsmodels.tsa.exponential_smoothing.ets"``.
    extra
        The privmob extra that installs it (``"forecast"``, ``"eval"``, ``"geo"``, ``"spark"``).
    purpose
        What needs it, as the start of a sentence: ``"privmob.forecast (ETS models)"``.
    package
        The distribution to name in the message; default the top-level module name.

    Raises
    ------
    MissingExtraError
        When the import fails; exit code 2 on the command line.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module.partition(".")[0]
        missing = getattr(exc, "name", None) or name
        raise MissingExtraError(
            f"{purpose} needs {name}, which is not installed (could not import {missing}); "
            f"install it with `pip install 'privmob[{extra}]'`",
            extra=extra,
            package=name,
        ) from exc
