"""Stage — account: a release is charged to the budget ledger around its run.

The ledger is opened and checked before anything else (a deleted or replaced ledger is
refused: releases beside the output anchored to another ledger give it away), the cost is
reserved before any data is read, and it is committed only once the release is out —
with the operator record (exact figures) stored 0600 beside the ledger — or cancelled if
the run fails. Every refusal and failure is appended to the audit log.
:meth:`privmob.pipeline.plan.Plan.release` runs these steps in that order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privmob.config import BudgetConfig
from privmob.errors import BudgetExceededError, LedgerIntegrityError, PrivmobError, ReleaseExistsError
from privmob.governance.audit import AuditLog
from privmob.governance.ledger import Budget, Charge, Ledger, foreign_releases
from privmob.privacy.accountant import PrivacyCost
from privmob.release.table import ReleasedTable, write_operator_record
from privmob.stages.ingest import first_line

if TYPE_CHECKING:
    from privmob.pipeline.plan import Plan

__all__ = ["audit_refusal", "cancel", "open_ledger", "refuse_existing", "refuse_foreign_releases",
           "reserve", "settle"]


def refuse_foreign_releases(out: Path | None, ledger_id: str | None, ledger_path: Path) -> None:
    """Refuse when releases beside ``out`` were charged to a ledger other than this one
    (``ledger_id`` None: the ledger does not exist yet) — a ledger deleted together with its
    audit log must not hand out a fresh budget."""
    if out is None:
        return
    foreign = foreign_releases(out.parent, (), ledger_id)
    if foreign:
        what = "does not exist" if ledger_id is None else f"is ledger {ledger_id}"
        raise LedgerIntegrityError(
            f"{foreign[0]}" + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
            + " was charged to another budget ledger, "
            f"but {ledger_path} {what}: the ledger was deleted or replaced. Nothing was read or "
            "charged; restore the original ledger and its audit log from backup"
        )


def open_ledger(budget: BudgetConfig, out: Path | None) -> Ledger:
    """The ledger, after checking it was not deleted or replaced under the releases it
    charged: a release folder beside ``out`` anchored to another ledger is refused."""
    existed = budget.ledger.exists()
    if not existed:
        refuse_foreign_releases(out, None, budget.ledger)
    ledger = Ledger(budget.ledger, budget.audit_path)
    if existed:
        refuse_foreign_releases(out, ledger.ledger_id, budget.ledger)
    ledger.require_integrity()  # before its caps or datasets are trusted for anything
    return ledger


def refuse_existing(out: Path | None) -> None:
    """A period is released once: an output folder that already holds a release is refused
    before anything is reserved."""
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseExistsError(
            f"{out} already holds a release; a period is released once — move it away "
            "first if you really mean to release again (that spends budget again)"
        )


def reserve(plan: Plan, ledger: Ledger, record: Mapping[str, Any], dataset: str, caps: Budget, *,
            out: Path | None, force: bool) -> Charge:
    """Reserve the plan's whole cost on every day it covers, before any data is read."""
    cfg = plan.config
    return ledger.reserve(
        release_id=record["release_id"], dataset=dataset, days=plan.days, cost=plan.cost,
        budget=caps, purpose=cfg.job.purpose, operator=cfg.job.operator,
        mechanism=plan.noise.mechanism, config_sha256=cfg.sha256(ignore_output=True),
        force=force, output="" if out is None else str(out.resolve()),
        audit_fields={"key_period": plan.key_period, "config_sha256": record["config_sha256"]},
    )


def cancel(ledger: Ledger, charge: Charge, exc: BaseException, record: Mapping[str, Any]) -> None:
    """Return a reserved charge after a failed run. Our own messages never quote data;
    anything else is reduced to its type and first line."""
    detail = str(exc) if isinstance(exc, PrivmobError) else first_line(exc)
    ledger.cancel(charge, f"{type(exc).__name__}: {detail}", **record)


def audit_refusal(audit: AuditLog | None, exc: PrivmobError, record: Mapping[str, Any]) -> None:
    """Log a release refused (budget, existing output) or failed before its reservation; a
    broken ledger is not written to, and an unwritable log leaves the error to say so."""
    if audit is None or isinstance(exc, LedgerIntegrityError):
        return
    refused = isinstance(exc, BudgetExceededError | ReleaseExistsError)
    with contextlib.suppress(PrivmobError):
        audit.append("refused" if refused else "failed", **record, reason=f"{type(exc).__name__}: {exc}")


def settle(ledger: Ledger, charge: Charge, released: ReleasedTable, record: Mapping[str, Any], *,
           cost: PrivacyCost, days: Sequence[str], stored: bool,
           step: Callable[[str], None] = lambda _s: None) -> None:
    """Commit a reserved charge for a release that is out, then store its operator record
    (exact figures, 0600) under ``records/`` beside the ledger."""
    m = released.manifest
    ledger.commit(charge, **record, input_sha256=released.operator_record.get("input_sha256"),
                  cells_released=m["cells_released"],
                  cost={k: v for k, v in cost.as_dict().items() if k.endswith("_exact")},
                  days=list(days), signed_by=m.get("signature", {}).get("fingerprint"),
                  stored=stored)
    step("store operator record")
    write_operator_record(ledger.path.parent / "records" / f"{record['release_id']}.json",
                          {**released.operator_record, "release_id": record["release_id"],
                           "output": record["output"]})
