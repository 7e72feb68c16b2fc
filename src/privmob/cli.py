"""``privmob`` on the command line: the scheduled job, the demo, and helpers.

Every command is a thin layer over the Python API (no option the API lacks). A
:class:`~privmob.errors.PrivmobError` prints one line ``error: ...`` on stderr and exits
with its code (2 configuration or input, 3 budget); anything else is a bug: exit 4, with
the traceback only under ``--debug``. ``verify`` exits 1 when a release fails its check and
5 when it is intact but no trusted key was given to check who signed it.
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
from privmob.config import JobConfig, check_output_template, output_root
from privmob.errors import ConfigError, KeyFileError, PrivmobError
from privmob.governance.ledger import Budget, Ledger
from privmob.pipeline.plan import Plan
from privmob.pipeline.plan import plan as make_plan
from privmob.pipeline.publish import check_reports, reports_installed

__all__ = ["app", "main"]

EXIT_INTERNAL = 4
#: How the pictures (heatmaps, HTML report) are installed; the demo names it when they are missing.
REPORT_INSTALL = "pip install 'privmob[report]'"

app = typer.Typer(
    name="privmob",
    help="Person-level differentially private mobility releases for epidemic control.\n\n"
    "Exit codes: 0 done; 1 verification failed (verify, audit verify); 2 configuration or "
    "input error; 3 budget refused; 4 internal error (a bug); 5 verify: the files are "
    "intact but no trusted key was given, so who signed them is unknown.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: "[job] period" and "[budget]" name TOML sections, and Rich markup
    # would swallow them as style tags.
    rich_markup_mode=None,
)
keys_app = typer.Typer(help="Make and manage key files.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
budget_app = typer.Typer(help="The privacy budget ledger.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(budget_app, name="budget")
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(audit_app, name="audit")

EXIT_VERIFY_FAILED = 1
#: ``verify`` without a pinned key: the files are intact, but anyone could have signed them.
EXIT_AUTHOR_UNVERIFIED = 5

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
    """The job's release folder: its output template with ``{period}`` filled in.

    The result must lie inside the template's fixed folder (``out`` for
    ``out/{period}``), whatever the period or the template: a release never lands
    elsewhere, and ``--force`` never picks a folder outside it.
    """
    template = str(cfg.job.output)
    check_output_template(template)
    if "{period}" not in template:
        return Path(template)
    assert cfg.job.period is not None
    out = Path(template.replace("{period}", cfg.job.period.isoformat()))
    root = output_root(template).resolve()
    resolved = out.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ConfigError(
            f"[job] output = {template!r} gives {out}, which is not inside {root}; a release "
            "folder must stay inside the template's own folder"
        )
    return out


def _print_version(value: bool) -> None:
    """``--version``: print the version and stop before any command runs."""
    if value:
        _out.print(__version__, markup=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the privmob version and exit.", callback=_print_version,
        is_eager=True)] = False,
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
    key_file: Annotated[Path | None, typer.Option(
        help="Pseudonymisation key file (mode 0600; `privmob keys pseudonym FILE` makes one); "
             "overrides [job] key_file.")] = None,
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

    This is what cron or a systemd timer calls (see README "Scheduling"). The release is
    charged to the job's [budget] ledger; a job without [budget] charges the default ledger
    ($PRIVMOB_LEDGER), as a Python release does, and says so.
    """
    if log_format not in ("text", "json"):
        raise ConfigError("--log-format must be 'text' or 'json'")
    cfg = _load(job, period)
    if key_file is not None:
        cfg = cfg.with_overrides(job__key_file=str(key_file))
    if cfg.job.input is None and not from_store:
        raise ConfigError("[job] input is not set: name the pings file to release from")
    _require_key(cfg, job)
    p = make_plan(cfg)
    if dry_run:
        _dry_run(p, from_store)
        return
    out = _output_dir(cfg)
    check_reports(out, cfg.job.reports)  # before --from-store reads the working store
    if force and out.exists():
        out = _next_free(out)
    reporter = _Reporter(log_format, quiet)
    try:
        reporter.emit("start", job=str(job), dataset=cfg.dataset, period=p.key_period,
                      operator=cfg.job.operator, ledger=str(p.budget_config().ledger)
                      + ("" if cfg.budget is not None else " (default: no [budget] in the job)"))
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
            f"released {m['cells_released']} cells ({m['mechanism']}, ε={m['epsilon']:g}) → {_shown(out)}"
            + (f"; signed by {signed}" if signed else "; UNSIGNED")
            + ("" if cfg.budget is not None
               else f"; charged to the default ledger {p.budget_config().ledger} (no [budget])"),
            markup=False,
        )


def _shown(path: Path) -> str:
    """``path`` as a person would type it here: relative to the working folder when inside
    it, with ``..`` folded away (job-file paths are joined onto the job's folder)."""
    plain = os.path.normpath(path)
    try:
        inside = Path(plain).resolve().is_relative_to(Path.cwd().resolve())
    except OSError:
        inside = False
    return os.path.relpath(plain) if inside else plain


#: Where the key of a job that names none is suggested to go (``secrets/`` is git-ignored).
SUGGESTED_KEY_FILE = Path("secrets") / "pseudonym.key"


def _require_key(cfg: JobConfig, job: Path) -> None:
    """A job without a usable key is told the exact commands that give it one, before any
    ledger or data is touched: the missing file it names, or (naming none, with no
    environment key) a new file passed with ``--key-file``."""
    key = cfg.job.key_file
    if key is not None and not key.exists() and not key.is_symlink():
        raise KeyFileError(
            f"pseudonymisation key file {_shown(key)} does not exist; create it (once) with "
            f"`privmob keys pseudonym {_shown(key)}`"
        )
    if key is None and not os.environ.get(cfg.job.key_env):
        new = SUGGESTED_KEY_FILE
        raise KeyFileError(
            f"no pseudonymisation key: {_shown(job)} names no [job] key_file and {cfg.job.key_env} "
            f"is not set; create one (once) with `privmob keys pseudonym {new}` and run "
            f"`privmob run {_shown(job)} --key-file {new}` (or name it in [job] key_file)"
        )


def _dry_run(p: Plan, from_store: bool) -> None:
    """Everything `run` checks before reading data, and the input's schema; spends nothing."""
    from privmob.governance.signing import fingerprint, load_private_key
    from privmob.stages.ingest import REQUIRED_COLUMNS, read_pings
    from privmob.stages.pseudonymise import load_key
    from privmob.stages.scope import check_schema

    cfg = p.config
    _out.print(p.explain(), markup=False)
    check_reports(cfg.job.output, cfg.job.reports)  # refused as the run would be: no [report] extra
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
        # The very check every engine makes on the schema it reads: the dry run refuses
        # exactly the inputs the run refuses, with the same message (a Boolean ts fails
        # here, not after the charge).
        check_schema(schema, cfg)
        job_columns = {c: schema[c] for c in REQUIRED_COLUMNS if c in schema}
        others = len(schema) - len(job_columns)
        # Other headers are input (a headerless file's first row is data): counted, not named.
        lines.append(f"  input schema: ok ({', '.join(f'{k}: {v}' for k, v in job_columns.items())}"
                     + (f"; and {others} other column(s), not read" if others else "") + ")")
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
    """Run the whole path on the bundled synthetic Beijing sample.

    OUT must be new, empty, or hold an earlier demo release (which is replaced); any
    other folder is left alone and the demo refuses. Without the [report] extra the
    release is written without its heatmaps and HTML report, and the demo says so.
    """
    samples = samples_dir()
    cfg = JobConfig.from_toml(samples / "demo.toml")
    drawn = reports_installed()
    if not drawn:  # a plain `pip install privmob`: the release, without its pictures
        cfg = cfg.with_overrides(job__reports=False)
    _check_demo_target(out, cfg.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh hidden staging folder beside OUT: nothing that exists is ever reused or wiped.
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.privmob-demo-", dir=out.parent))
    staging = work / "release"
    try:
        with tempfile.TemporaryDirectory(prefix="privmob-demo-") as tmp:
            from privmob.governance.signing import generate_keypair
            from privmob.stages.pseudonymise import new_key

            key_file = Path(tmp) / "demo.key"
            key_file.write_bytes(new_key())
            key_file.chmod(0o600)
            signing_key = Path(tmp) / "demo-signing.pem"
            demo_fingerprint = generate_keypair(signing_key)
            cfg = cfg.with_overrides(job__key_file=str(key_file), job__signing_key=str(signing_key))
            # Synthetic data: charged to a throw-away ledger, never the operator's own.
            saved = os.environ.get("PRIVMOB_LEDGER")
            os.environ["PRIVMOB_LEDGER"] = str(Path(tmp) / "demo-ledger.sqlite")
            try:
                p = make_plan(cfg)
                _out.print(p.explain(), markup=False)
                release = p.release(samples / "beijing_pings.parquet", write_to=staging)
            finally:
                if saved is None:
                    os.environ.pop("PRIVMOB_LEDGER", None)
                else:
                    os.environ["PRIVMOB_LEDGER"] = saved
        _check_demo_target(out, cfg.dataset)  # still ours to replace after the run
        if out.exists():  # an earlier demo release, checked above: set aside, then removed
            os.replace(out, work / "previous")
        os.replace(staging, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the staging folder this run made
    _out.print("\n" + release.explain(), markup=False)
    _out.print(f"\nsigned with a throw-away demo key {demo_fingerprint} "
               f"(check: privmob verify {out} --fingerprint {demo_fingerprint})", markup=False)
    _out.print(f"written to {out}:", markup=False)
    for name in sorted(p.name for p in out.iterdir()):
        _out.print(f"  {out / name}", markup=False)
    if not drawn:
        _out.print(f"reports skipped: the heatmaps and the HTML report need the [report] extra; "
                   f"install it with `{REPORT_INSTALL}` and run the demo again", markup=False)


def _check_demo_target(out: Path, dataset: str) -> None:
    """Refuse an OUT the demo may not replace: anything but nothing, an empty folder, or
    an intact earlier demo release (its signature and digests hold, nothing else is in
    it, and its manifest names the demo's dataset)."""
    import json

    from privmob.governance.signing import MANIFEST_FILE, verify_release

    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return
        if verify_release(out).ok:
            try:
                manifest = json.loads((out / MANIFEST_FILE).read_bytes())
            except ValueError:
                manifest = None
            if isinstance(manifest, dict) and manifest.get("dataset") == dataset:
                return
    raise ConfigError(
        f"--out {out} exists and is not an earlier privmob demo release; the demo replaces "
        "only its own output and never deletes anything else — name a new folder"
    )


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


def _make_key_folder(path: Path) -> None:
    """Create the missing folders above a new key file, each private to its owner (0700).

    Both ``keys`` commands do this, so a key can be made in a fresh folder; a folder that
    exists is left as it is, and one that cannot be made is a clear error, not a crash.
    """
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()][::-1]
    for folder in missing:
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise KeyFileError(f"cannot create the folder {folder} for key file {path}: "
                               f"{exc.strerror or exc}") from None
    if not path.parent.is_dir():
        raise KeyFileError(f"cannot create key file {path}: {path.parent} is not a folder")


@keys_app.command("pseudonym")
def keys_pseudonym(
    path: Annotated[Path, typer.Argument(help="Where to create the key file (mode 0600).")],
) -> None:
    """Create a new random pseudonymisation key file, readable by its owner only."""
    from privmob.stages.pseudonymise import new_key

    if path.exists() or path.is_symlink():
        raise ConfigError(f"{path} exists; a key file is never overwritten")
    _make_key_folder(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(new_key() + b"\n")
    _err.print(f"created {path} (mode 0600); keep it apart from the data and the releases",
               markup=False)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A release folder.")],
    out: Annotated[Path | None, typer.Option(help="Where to draw (default: DIR-report).")] = None,
    boundary: Annotated[Path | None, typer.Option(help="Boundary GeoJSON to outline and to show "
                                                  "withheld public-key cells (default: the "
                                                  "release's own boundary.geojson).")] = None,
    window: Annotated[int | None, typer.Option(help="Window index for the single heatmap.")] = None,
) -> None:
    """Draw heatmaps (PNG, PDF) and the offline HTML report from an existing release.

    The pictures go to a folder of their own: the release folder stays exactly as signed.
    Needs the [report] extra (exit 2 without it).
    """
    from privmob.report import heatmap, small_multiples
    from privmob.report.html import write_html_report

    target = out or directory.with_name(directory.name + "-report")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target} exists and is not a folder; the report is a folder "
                          "of pictures and report.html — name a new or existing folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the report folder {target}: {exc.strerror or exc}") from None
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
    from privmob.governance.signing import generate_keypair

    _make_key_folder(path)
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
    trusted_keys: Annotated[Path | None, typer.Option(
        help="File of trusted key fingerprints, one per line (default: $PRIVMOB_TRUSTED_KEYS).")] = None,
) -> None:
    """Check a release's signature and every file's digest; say exactly what differs.

    Exit 0: unchanged and signed by a pinned key (--public-key, --fingerprint or one in
    --trusted-keys). Exit 1: something differs, or the signer is not the pinned key.
    Exit 5: the files match the signature, but no key was pinned, so who signed is
    unknown (a key shipped in the folder proves nothing: anyone can re-sign).
    """
    from privmob.governance.signing import TRUSTED_KEYS_ENV, load_trusted_fingerprints, verify_release

    if trusted_keys is None and os.environ.get(TRUSTED_KEYS_ENV):
        trusted_keys = Path(os.environ[TRUSTED_KEYS_ENV])
    trusted = None if trusted_keys is None else load_trusted_fingerprints(trusted_keys)
    result = verify_release(directory, public_key=public_key, fingerprint=fingerprint,
                            trusted_fingerprints=trusted)
    _out.print(result.summary(), markup=False)
    if not result.ok:
        raise typer.Exit(EXIT_VERIFY_FAILED)
    if not result.trusted:
        _out.print(
            f"authorship NOT verified (exit {EXIT_AUTHOR_UNVERIFIED}): pin the publisher's key with "
            f"--fingerprint SHA256:…, --public-key FILE, or --trusted-keys FILE (or "
            f"{TRUSTED_KEYS_ENV}=FILE) listing trusted fingerprints, one per line", markup=False)
        raise typer.Exit(EXIT_AUTHOR_UNVERIFIED)


def _ledger_path(ledger: Path | None, job: Path | None) -> Path:
    """The ledger named by --ledger, or the one a job charges (its [budget], or the default
    ledger of jobs without one)."""
    return _ledger_paths(ledger, job)[0]


def _ledger_paths(ledger: Path | None, job: Path | None) -> tuple[Path, Path]:
    from privmob.config import BudgetConfig

    if ledger is not None:
        return ledger, ledger.with_name(ledger.name + ".audit.jsonl")
    if job is not None:
        b = JobConfig.from_toml(job).budget or BudgetConfig.default()
        return b.ledger, b.audit_path
    raise ConfigError("name the ledger: --ledger PATH or --job JOB.toml")


def _open_ledger(ledger: Path | None, job: Path | None, *, create: bool = False) -> Ledger:
    from privmob.governance.ledger import Ledger

    path, audit = _ledger_paths(ledger, job)
    return Ledger(path, audit, create=create)


def _caps(ledger: Path, epsilon: float | None, rho: float | None, delta: float) -> Budget:
    """Caps from the command line, checked like a job's [budget]."""
    from privmob.config import BudgetConfig
    from privmob.governance.ledger import budget_from

    b = BudgetConfig(ledger=ledger, epsilon_per_day=epsilon, rho_per_day=rho, delta_per_day=delta)
    return budget_from(b.epsilon_per_day, b.delta_per_day, b.rho_per_day)


def _job_dataset(job: Path | None, dataset: str | None, led: Ledger) -> str:
    """--dataset, else the dataset the job charges (its [job] dataset, or the ledger's only
    declared one, or the id it derives)."""
    if dataset:
        return dataset
    if job is None:
        raise ConfigError("name the dataset: --dataset ID (or --job JOB.toml)")
    cfg = JobConfig.from_toml(job)
    if cfg.job.dataset:
        return cfg.job.dataset
    declared = led.datasets()
    return next(iter(declared)) if len(declared) == 1 else cfg.dataset


_EPS_OPT = typer.Option("--epsilon-per-day", help="ε a local day may spend (basic composition).")
_RHO_OPT = typer.Option("--rho-per-day", help="ρ a local day may spend (zCDP), instead of ε.")
_DELTA_OPT = typer.Option("--delta-per-day", help="δ a local day may spend.")
_OPERATOR_OPT = typer.Option(help="Who makes this change (audited).")
_REASON_OPT = typer.Option(help="Why (audited).")


@budget_app.command("declare")
def budget_declare(
    operator: Annotated[str, _OPERATOR_OPT],
    reason: Annotated[str, _REASON_OPT],
    ledger: Annotated[Path | None, typer.Option(help="Ledger file (SQLite).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the ledger, dataset and caps from this job.")] = None,
    dataset: Annotated[str | None, typer.Option(help="The population id to declare.")] = None,
    epsilon_per_day: Annotated[float | None, _EPS_OPT] = None,
    rho_per_day: Annotated[float | None, _RHO_OPT] = None,
    delta_per_day: Annotated[float | None, _DELTA_OPT] = None,
) -> None:
    """Declare a dataset (a population) in a ledger, with the per-day caps bound to it.

    A new ledger declares the first job's dataset itself; every further dataset is
    declared here, once (audited). Caps default to the job's [budget].
    """
    led = _open_ledger(ledger, job, create=True)
    name = _job_dataset(job, dataset, led) if dataset or job else ""
    if epsilon_per_day is None and rho_per_day is None:
        b = JobConfig.from_toml(job).budget if job is not None else None
        if b is None:
            raise ConfigError("give the caps: --epsilon-per-day E (or --rho-per-day R)")
        epsilon_per_day, rho_per_day = b.epsilon_per_day, b.rho_per_day
        delta_per_day = b.delta_per_day if delta_per_day is None else delta_per_day
    caps = _caps(led.path, epsilon_per_day, rho_per_day, 1e-6 if delta_per_day is None else delta_per_day)
    if not name:
        raise ConfigError("name the dataset: --dataset ID (or --job JOB.toml)")
    led.declare(name, caps, operator=operator, reason=reason)
    _out.print(f"declared {name!r} in {led.path}: {caps.describe()} (audited)", markup=False)


@budget_app.command("set")
def budget_set(
    operator: Annotated[str, _OPERATOR_OPT],
    reason: Annotated[str, _REASON_OPT],
    ledger: Annotated[Path | None, typer.Option(help="Ledger file (SQLite).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the ledger and dataset from this job.")] = None,
    dataset: Annotated[str | None, typer.Option(help="The declared dataset whose caps change.")] = None,
    epsilon_per_day: Annotated[float | None, _EPS_OPT] = None,
    rho_per_day: Annotated[float | None, _RHO_OPT] = None,
    delta_per_day: Annotated[float | None, _DELTA_OPT] = None,
) -> None:
    """Change a declared dataset's per-day caps — the only way to raise (or lower) them.

    The audit log records the old and new caps, who and why. Jobs naming caps in [budget]
    must then say the new ones too.
    """
    led = _open_ledger(ledger, job)
    name = _job_dataset(job, dataset, led)
    old = led.datasets().get(name)
    if old is None:
        raise ConfigError(f"dataset {name!r} is not declared in {led.path}; use `privmob budget declare`")
    if epsilon_per_day is None and rho_per_day is None:
        raise ConfigError("give the new cap: --epsilon-per-day E (or --rho-per-day R)")
    delta = float(old.budget.delta) if delta_per_day is None else delta_per_day
    caps = _caps(led.path, epsilon_per_day, rho_per_day, delta)
    led.set_caps(name, caps, operator=operator, reason=reason)
    _out.print(f"{name!r} in {led.path}: {old.budget.describe()} → {caps.describe()} (audited)",
               markup=False)
    if job is not None and JobConfig.from_toml(job).budget is not None:
        _out.print(f"set the same caps in {job} [budget]; until then the job is refused", markup=False)


@budget_app.command("show")
def budget_show(
    ledger: Annotated[Path | None, typer.Option(help="Ledger file (SQLite).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the ledger from this job file.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Spent, pending and remaining budget per dataset and day."""
    import json

    from rich import box
    from rich.table import Table

    led = _open_ledger(ledger, job)
    path = led.path
    rows = led.rows()
    if json_out:
        _out.print(json.dumps([r.as_dict() for r in rows], indent=2), markup=False)
        return
    _out.print(f"privacy budget — {path}", markup=False)
    for dataset in dict.fromkeys(r.dataset for r in rows):
        # One table per dataset, its name on a line of its own: a long name (or path) wraps
        # instead of squeezing the numbers, so nothing is cut at 80 columns.
        _out.print(f"\ndataset {dataset}", markup=False)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for col in ("day", "budget", "spent", "pending", "remaining", "δ spent", "releases"):
            # "fold": a value wider than the terminal breaks onto the next line, never "…".
            table.add_column(col, justify="left" if col == "day" else "right", overflow="fold")
        for r in rows:
            if r.dataset != dataset:
                continue
            name = "ρ" if r.mode == "rho" else "ε"
            table.add_row(r.day, f"{name} {float(r.limit or 0):g}", f"{float(r.spent):g}",
                          f"{float(r.pending):g}",
                          "?" if r.remaining is None else f"{float(r.remaining):g}",
                          f"{float(r.delta_spent):.3g}", str(r.releases))
        _out.print(table)
    if any(r.mode == "rho" for r in rows):
        _out.print("ρ budgets: spent ρ as (ε, δ) by OpenDP's conversion — "
                   + ", ".join(f"{r.day}: ε ≈ {r.epsilon_equivalent():.3g}" for r in rows
                               if r.mode == "rho"), markup=False)
    declared = led.datasets()
    for d in declared.values():
        _out.print(f"{d.dataset}: {d.budget.describe()} (declared by {d.declared_by} "
                   f"{d.declared_at}; last set by {d.updated_by} {d.updated_at})", markup=False)


@budget_app.command("recover")
def budget_recover(
    ledger: Annotated[Path | None, typer.Option(help="Ledger file (SQLite).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the ledger from this job file.")] = None,
) -> None:
    """Settle reservations of crashed runs as spent (never refunded; audited)."""
    settled = _open_ledger(ledger, job).recover()
    _out.print(f"settled {len(settled)} reservation(s) as spent", markup=False)


@audit_app.command("verify")
def audit_verify(
    log: Annotated[Path | None, typer.Option(help="Audit log (JSON lines).")] = None,
    job: Annotated[Path | None, typer.Option(help="Take the log and ledger from this job file.")] = None,
    ledger: Annotated[Path | None, typer.Option(help="Ledger holding the log's anchor.")] = None,
    release: Annotated[Path | None, typer.Option(
        help="Also check this release folder's ledger anchor against the log.")] = None,
) -> None:
    """Check the audit log's hash chain and, with its ledger, that the two agree.

    Reports every edited, removed or missing entry, every ledger charge the log does not
    explain (a refund by editing the ledger), and every release whose signed anchor is not
    in the log (a recomputed chain).
    """
    from privmob.governance.audit import AuditLog

    if job is not None or ledger is not None:
        led = _open_ledger(ledger, job)
        if log is not None and log != led.audit.path:
            led = Ledger(led.path, log, create=False)
        problems = led.verify_integrity()
        if release is not None:
            problems += [f"release {release}: {p}" for p in led.verify_release(release)]
        audit = led.audit
        checked = "ledger cross-checked"
    else:
        if log is None:
            raise ConfigError("name the log: --log PATH, --ledger PATH or --job JOB.toml")
        if release is not None:
            raise ConfigError("--release needs the ledger: add --ledger PATH or --job JOB.toml")
        if not log.exists():
            raise ConfigError(f"audit log {log} does not exist")
        audit = AuditLog(log)
        problems = [str(p) for p in audit.verify()]
        checked = "no ledger anchor checked"
    if problems:
        for p in problems:
            _out.print(p, markup=False)
        _out.print(f"audit log {audit.path}: {len(problems)} problem(s)", markup=False)
        raise typer.Exit(EXIT_VERIFY_FAILED)
    _out.print(f"audit log {audit.path}: {len(audit.entries())} entries, chain intact ({checked}"
               + (f"; release {release} anchored" if release is not None else "") + ")",
               markup=False)


@app.command()
def purge(
    job: Annotated[Path, typer.Argument(help="Job file (TOML) with a [store] section.")],
    today: Annotated[str | None, typer.Option(help="Treat this date (YYYY-MM-DD) as today.")] = None,
) -> None:
    """Delete working-store data older than its retention period (logged in the audit log)."""
    from privmob.governance.audit import AuditLog
    from privmob.governance.ledger import Ledger

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
