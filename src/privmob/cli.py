"""``privmob`` on the command line: the scheduled job, the demo, and helpers.

Every command is a thin layer over the Python API (no option the API lacks). A
:class:`~privmob.errors.PrivmobError` prints one line ``error: ...`` on stderr and exits
with its code (2 configuration or input, 3 budget); anything else is a bug: exit 4, with
the traceback only under ``--debug``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import traceback
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from privmob import __version__
from privmob.config import JobConfig
from privmob.errors import ConfigError, PrivmobError
from privmob.plan import Plan
from privmob.plan import plan as make_plan

__all__ = ["app", "main"]

EXIT_INTERNAL = 4

app = typer.Typer(
    name="privmob",
    help="Person-level differentially private mobility releases for epidemic control.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Make and manage key files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
budget_app = typer.Typer(help="The privacy budget ledger.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

EXIT_VERIFY_FAILED = 1

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)
_state = {"debug": False}


def samples_dir() -> Path:
    """The bundled sample data: inside the installed package, or the repository's copy."""
    packaged = resources.files("privmob") / "_samples"
    if packaged.is_dir():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[2] / "data-samples"
    if repo.is_dir():
        return repo
    raise ConfigError("the bundled samples are missing from this installation; reinstall privmob")


def _load(job: Path, period: str | None) -> JobConfig:
    cfg = JobConfig.from_toml(job)
    if period is not None:
        cfg = cfg.with_overrides(job__period=period)
    return cfg


def _output_dir(cfg: JobConfig) -> Path:
    text = str(cfg.job.output)
    if "{period}" in text:
        assert cfg.job.period is not None
        text = text.replace("{period}", cfg.job.period.isoformat())
    return Path(text)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def version() -> None:
    """Print the privmob version."""
    _out.print(__version__)


@app.command()
def explain(
    job: Annotated[Path, typer.Argument(help="Job file (TOML).")],
    period: Annotated[str | None, typer.Option(help="Local day YYYY-MM-DD; overrides [job] period.")] = None,
) -> None:
    """Show what a job would release and what its numbers can bear. Reads no data."""
    _out.print(make_plan(_load(job, period)).explain(), markup=False)


class _Reporter:
    """Stage progress for humans (a spinner on a terminal) or machines (JSON lines)."""

    def __init__(self, log_format: str, quiet: bool) -> None:
        self.json = log_format == "json"
        self.quiet = quiet
        self.live = None
        if not quiet and not self.json and _err.is_terminal:
            self.live = _err.status("starting", spinner="dots")
            self.live.start()

    def emit(self, event: str, **fields: object) -> None:
        if self.quiet:
            return
        if self.json:
            import json

            line = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "event": event, **fields}
            sys.stderr.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        elif self.live is not None:
            self.live.update(f"{event}: {fields.get('stage', '')}".rstrip(": "))
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            _err.print(f"{dt.datetime.now().astimezone():%H:%M:%S} {event} {extra}".rstrip(), markup=False)

    def stage(self, name: str) -> None:
        self.emit("stage", stage=name)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _next_free(out: Path) -> Path:
    n = 2
    while True:
        candidate = out.with_name(f"{out.name}.{n}")
        if not candidate.exists():
            return candidate
        n += 1


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="Job file (TOML).")],
    period: Annotated[str | None, typer.Option(help="Local day YYYY-MM-DD; overrides [job] period.")] = None,
    from_store: Annotated[bool, typer.Option(
        "--from-store", help="Start from the working store's positions instead of [job] input.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run",
        help="Check config, input schema, keys and budget; print the plan; release nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Release a period again (spends budget again; recorded in the audit log).")] = False,
    log_format: Annotated[str, typer.Option(help="Progress on stderr: 'text' or 'json' lines.")] = "text",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Run a release job: read the input, release, write the output folder.

    This is what cron or a systemd timer calls (see README "Scheduling").
    """
    if log_format not in ("text", "json"):
        raise ConfigError("--log-format must be 'text' or 'json'")
    cfg = _load(job, period)
    if cfg.job.input is None and not from_store:
        raise ConfigError("[job] input is not set: name the pings file to release from")
    if cfg.budget is None:
        raise ConfigError(
            "a scheduled release must be accounted: add a [budget] section with ledger = "
            "\"...sqlite\" and epsilon_per_day (or rho_per_day)"
        )
    p = make_plan(cfg)
    if dry_run:
        _dry_run(p, from_store)
        return
    out = _output_dir(cfg)
    if force and out.exists():
        out = _next_free(out)
    reporter = _Reporter(log_format, quiet)
    try:
        reporter.emit("start", job=str(job), dataset=cfg.dataset, period=p.key_period,
                      operator=cfg.job.operator)
        source = p.stored_pings() if from_store else cfg.job.input
        release = p.release(source, write_to=out, store=not from_store, force=force,
                            progress=reporter.stage)
    except PrivmobError as exc:
        if reporter.json:  # text mode: the one `error:` line main() prints says it
            reporter.emit("refused" if exc.exit_code == 3 else "failed", reason=str(exc))
        raise
    finally:
        reporter.close()
    m = release.manifest
    signed = m.get("signature", {}).get("fingerprint")
    reporter.emit("released", release_id=m["release_id"], cells=m["cells_released"],
                  epsilon=m["epsilon"], output=str(out), signed_by=signed or "UNSIGNED")
    if not quiet and log_format == "text":
        _err.print(
            f"released {m['cells_released']} cells ({m['mechanism']}, ε={m['epsilon']:g}) → {out}"
            + (f"; signed by {signed}" if signed else "; UNSIGNED"),
            markup=False,
        )


def _dry_run(p: Plan, from_store: bool) -> None:
    """Everything `run` checks before reading data, and the input's schema; spends nothing."""
    from privmob.ingest import read_pings, require_columns
    from privmob.pseudonymise import load_key
    from privmob.signing import fingerprint, load_private_key

    cfg = p.config
    _out.print(p.explain(), markup=False)
    load_key(cfg.job.key_file, cfg.job.key_env)
    lines = ["dry run — nothing read beyond the input's schema, nothing charged:",
             "  pseudonymisation key: ok"]
    if cfg.job.signing_key is not None:
        lines.append(f"  signing key: ok ({fingerprint(load_private_key(cfg.job.signing_key))})")
    else:
        lines.append("  signing key: none — the release will be UNSIGNED")
    if from_store:
        store = p.working_store()
        assert store is not None
        names = [f"{e.dataset}/{e.period}" for e in store.entries()]
        present = f"{cfg.dataset}/{p.key_period}" in names
        has = "has" if present else "does NOT have"
        lines.append(f"  working store: {has} {cfg.dataset}/{p.key_period}")
    else:
        assert cfg.job.input is not None
        schema = read_pings(cfg.job.input).schema()
        require_columns(schema, group_optional=cfg.scope.assume_group is not None)
        lines.append(f"  input schema: ok ({', '.join(f'{k}: {v}' for k, v in schema.items())})")
    ledger, budget = p.ledger(), p.budget()
    assert ledger is not None
    assert budget is not None
    fits = ledger.check(dataset=cfg.dataset, days=p.days, cost=p.cost, budget=budget)
    name = "ρ" if budget.mode == "rho" else "ε"
    need = budget.charge_of(p.cost)[0]
    for day, left, _left_delta, ok in fits:
        lines.append(f"  budget {day}: needs {name} {float(need):g}, {float(left):g} left → "
                     + ("would be released" if ok else "WOULD BE REFUSED"))
    _out.print("\n".join(lines), markup=False)
    if not all(ok for *_, ok in fits):
        raise typer.Exit(3)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo release.")] = Path("out/demo"),
) -> None:
    """Run the whole path on the bundled synthetic Beijing sample."""
    samples = samples_dir()
    cfg = JobConfig.from_toml(samples / "demo.toml")
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="privmob-demo-") as tmp:
        from privmob.pseudonymise import new_key
        from privmob.signing import generate_keypair

        key_file = Path(tmp) / "demo.key"
        key_file.write_bytes(new_key())
        key_file.chmod(0o600)
        signing_key = Path(tmp) / "demo-signing.pem"
        demo_fingerprint = generate_keypair(signing_key)
        cfg = cfg.with_overrides(job__key_file=str(key_file), job__signing_key=str(signing_key))
        p = make_plan(cfg)
        _out.print(p.explain(), markup=False)
        release = p.release(samples / "beijing_pings.parquet", write_to=staging)
    if out.exists():  # the demo's own previous output: replace it whole
        shutil.rmtree(out)
    os.replace(staging, out)
    _out.print("\n" + release.explain(), markup=False)
    _out.print(f"\nsigned with a throw-away demo key {demo_fingerprint} "
               f"(check: privmob verify {out} --fingerprint {demo_fingerprint})", markup=False)
    _out.print(f"written to {out}:", markup=False)
    for name in sorted(p.name for p in out.iterdir()):
        _out.print(f"  {out / name}", markup=False)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output file (.parquet, .csv or .csv.gz).")],
    persons: Annotated[int, typer.Option(min=1, help="Number of persons.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Number of days.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (synthetic data only).")] = 0,
    start: Annotated[str, typer.Option(help="First local day, YYYY-MM-DD.")] = "2026-11-26",
    city: Annotated[str, typer.Option(help="City name known to privmob.synth.")] = "beijing",
    bad_fraction: Annotated[float, typer.Option(min=0.0, max=0.5, help="Share of malformed rows.")] = 0.0,
) -> None:
    """Generate a synthetic city's pings (for trials, tests and benchmarks)."""
    from privmob import synth as synth_mod

    try:
        day = dt.date.fromisoformat(start)
    except ValueError as exc:
        raise ConfigError(f"--start {start!r} is not a date; write YYYY-MM-DD") from exc
    if out.suffix == ".parquet" and bad_fraction == 0.0:
        synth_mod.generate_to_parquet(out, persons, days, seed=seed, start=day, city=city)
    else:
        frame = synth_mod.generate(persons, days, seed=seed, start=day, city=city,
                                   bad_fraction=bad_fraction)
        synth_mod.write(frame, out)
    _err.print(f"wrote {out}", markup=False)


@keys_app.command("pseudonym")
def keys_pseudonym(
    path: Annotated[Path, typer.Argument(help="Where to create the key file (mode 0600).")],
) -> None:
    """Create a new random pseudonymisation key file, readable by its owner only."""
    from privmob.pseudonymise import new_key

    if path.exists():
        raise ConfigError(f"{path} exists; a key file is never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(new_key() + b"\n")
    _err.print(f"created {path} (mode 0600); keep it apart from the data and the releases",
               markup=False)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A release folder.")],
    out: Annotated[Path | None, typer.Option(help="Where to draw (default: DIR-report).")] = None,
    boundary: Annotated[Path | None, typer.Option(help="Boundary GeoJSON to outline and to show "
                                                  "withheld public-key cells.")] = None,
    window: Annotated[int | None, typer.Option(help="Window index for the single heatmap.")] = None,
) -> None:
    """Draw heatmaps (PNG, PDF) and the offline HTML report from an existing release.

    The pictures go to a folder of their own: the release folder stays exactly as signed.
    """
    from privmob.report import heatmap, small_multiples
    from privmob.report.html import write_html_report

    target = out or directory.with_name(directory.name + "-report")
    target.mkdir(parents=True, exist_ok=True)
    written = [heatmap(directory, boundary=boundary, window=window).save(target / "heatmap.png"),
               heatmap(directory, boundary=boundary, window=window).save(target / "heatmap.pdf"),
               small_multiples(directory, boundary=boundary).save(target / "heatmap-windows.png"),
               write_html_report(directory, target / "report.html", boundary=boundary)]
    for path in written:
        _out.print(str(path), markup=False)


@keys_app.command("init")
def keys_init(
    path: Annotated[Path, typer.Argument(help="Private signing key file to create (mode 0600).")],
) -> None:
    """Create an Ed25519 signing key pair for releases (PATH and PATH.pub)."""
    from privmob.signing import generate_keypair

    fp = generate_keypair(path)
    _out.print(f"created {path} (private, mode 0600) and {path.with_suffix('.pub')}", markup=False)
    _out.print(f"public key fingerprint: {fp}", markup=False)
    _out.print("publish this fingerprint so others can check releases with "
               "`privmob verify DIR --fingerprint ...`", markup=False)


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="A release folder.")],
    public_key: Annotated[Path | None, typer.Option(help="The publisher's public key file.")] = None,
    fingerprint: Annotated[str | None, typer.Option(help="The publisher's key fingerprint.")] = None,
) -> None:
    """Check a release's signature and every file's digest; say exactly what differs."""
    from privmob.signing import verify_release

    result = verify_release(directory, public_key=public_key, fingerprint=fingerprint)
    _out.print(result.summary(), markup=False)
    if not result.ok:
        raise typer.Exit(EXIT_VERIFY_FAILED)


def _ledger_path(ledger: Path | None, job: Path | None) -> Path:
    if ledger is not None:
        return ledger
    if job is not None:
        cfg = JobConfig.from_toml(job)
        if cfg.budget is not None:
            return cfg.budget.ledger
        raise ConfigError(f"{job} has no [budget] section")
    raise ConfigError("name the ledger: --ledger PATH or --job JOB.toml")


@budget_app.command("show")
def budget_show(
    ledger: Annotated[Path | None, typer.Option(help="Ledger file (SQLite).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the ledger from this job file.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Spent, pending and remaining budget per dataset and day."""
    import json

    from rich.table import Table

    from privmob.ledger import Ledger

    path = _ledger_path(ledger, job)
    if not path.exists():
        raise ConfigError(f"budget ledger {path} does not exist")
    rows = Ledger(path).rows()
    if json_out:
        _out.print(json.dumps([r.as_dict() for r in rows], indent=2), markup=False)
        return
    table = Table(title=f"privacy budget — {path}")
    for col in ("dataset", "day", "budget", "spent", "pending", "remaining", "δ spent", "releases"):
        table.add_column(col, justify="left" if col in ("dataset", "day") else "right")
    for r in rows:
        name = "ρ" if r.mode == "rho" else "ε"
        table.add_row(r.dataset, r.day, f"{name} {float(r.limit or 0):g}", f"{float(r.spent):g}",
                      f"{float(r.pending):g}",
                      "?" if r.remaining is None else f"{float(r.remaining):g}",
                      f"{float(r.delta_spent):.3g}", str(r.releases))
    _out.print(table)
    if any(r.mode == "rho" for r in rows):
        _out.print("ρ budgets: spent ρ as (ε, δ) by OpenDP's conversion — "
                   + ", ".join(f"{r.day}: ε ≈ {r.epsilon_equivalent():.3g}" for r in rows
                               if r.mode == "rho"), markup=False)


@budget_app.command("recover")
def budget_recover(
    ledger: Annotated[Path | None, typer.Option(help="Ledger file (SQLite).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the ledger from this job file.")] = None,
) -> None:
    """Settle reservations of crashed runs as spent (never refunded)."""
    from privmob.audit import AuditLog
    from privmob.ledger import Ledger

    path = _ledger_path(ledger, job)
    led = Ledger(path)
    settled = led.recover()
    audit_path = path.with_name(path.name + ".audit.jsonl")
    if job is not None:
        cfg = JobConfig.from_toml(job)
        if cfg.budget is not None:
            audit_path = cfg.budget.audit_path
    if settled:
        AuditLog(audit_path, anchor=led).append("recovered", release_ids=settled,
                                                reason="reservations of ended processes settled as spent")
    _out.print(f"settled {len(settled)} reservation(s) as spent", markup=False)


@audit_app.command("verify")
def audit_verify(
    log: Annotated[Path | None, typer.Option(help="Audit log (JSON lines).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the log and ledger from this job file.")] = None,
    ledger: Annotated[Path | None, typer.Option(help="Ledger holding the log's anchor.")] = None,
) -> None:
    """Check the audit log's hash chain; report every edited, removed or missing entry."""
    from privmob.audit import AuditLog
    from privmob.ledger import Ledger

    if job is not None:
        cfg = JobConfig.from_toml(job)
        if cfg.budget is None:
            raise ConfigError(f"{job} has no [budget] section")
        log, ledger = cfg.budget.audit_path, cfg.budget.ledger
    if log is None:
        raise ConfigError("name the log: --log PATH or --job JOB.toml")
    if not log.exists():
        raise ConfigError(f"audit log {log} does not exist")
    anchor = Ledger(ledger) if ledger is not None and ledger.exists() else None
    audit = AuditLog(log, anchor=anchor)
    problems = audit.verify()
    if problems:
        for p in problems:
            _out.print(str(p), markup=False)
        _out.print(f"audit log {log}: {len(problems)} problem(s)", markup=False)
        raise typer.Exit(EXIT_VERIFY_FAILED)
    _out.print(f"audit log {log}: {len(audit.entries())} entries, chain intact"
               + ("" if anchor else " (no ledger anchor checked)"), markup=False)


@app.command()
def purge(
    job: Annotated[Path, typer.Argument(help="Job file (TOML) with a [store] section.")],
    today: Annotated[str | None, typer.Option(help="Treat this date (YYYY-MM-DD) as today.")] = None,
) -> None:
    """Delete working-store data older than its retention period (logged in the audit log)."""
    from privmob.audit import AuditLog
    from privmob.ledger import Ledger

    cfg = JobConfig.from_toml(job)
    if cfg.store is None:
        raise ConfigError(f"{job} has no [store] section: nothing to purge")
    store = make_plan(cfg).working_store()
    assert store is not None
    try:
        day = dt.date.fromisoformat(today) if today else dt.datetime.now(cfg.job.tz).date()
    except ValueError as exc:
        raise ConfigError(f"--today {today!r} is not a date; write YYYY-MM-DD") from exc
    gone = store.purge(day)
    if cfg.budget is not None:
        AuditLog(cfg.budget.audit_path, anchor=Ledger(cfg.budget.ledger)).append(
            "purged", operator=cfg.job.operator, store=str(cfg.store.path), today=day.isoformat(),
            retention_days=cfg.store.retention_days,
            removed=[f"{e.dataset}/{e.period}" for e in gone],
        )
    _out.print(f"purged {len(gone)} stored period(s) older than {cfg.store.retention_days} days",
               markup=False)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    try:
        # Standalone mode: Typer prints usage errors itself and exits 2.
        app(args=argv, prog_name="privmob")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except PrivmobError as exc:
        if _state["debug"]:
            traceback.print_exc()
        _err.print(f"error: {exc}", markup=False)
        return exc.exit_code
    except Exception as exc:
        if _state["debug"]:
            traceback.print_exc()
        # The message of an unexpected exception may quote input data: only with --debug.
        detail = f": {exc}" if _state["debug"] else ""
        _err.print(
            f"internal error: {type(exc).__name__}{detail} (rerun with --debug for details; "
            "please report it)", markup=False,
        )
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
