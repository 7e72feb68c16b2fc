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
from privmob.errors import ConfigError, PrivmobError, ReleaseExistsError
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


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="Job file (TOML).")],
    period: Annotated[str | None, typer.Option(help="Local day YYYY-MM-DD; overrides [job] period.")] = None,
) -> None:
    """Run a release job: read the input, release, write the output folder."""
    cfg = _load(job, period)
    if cfg.job.input is None:
        raise ConfigError("[job] input is not set: name the pings file to release from")
    out = _output_dir(cfg)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseExistsError(
            f"{out} already holds a release for this job; a period is released once — "
            "move it away first if you really mean to release again"
        )
    p = make_plan(cfg)
    release = p.release(cfg.job.input)
    written = release.write(out)
    m = release.manifest
    _err.print(
        f"released {m['cells_released']} cells ({m['mechanism']}, ε={m['epsilon']:g}) → {written}",
        markup=False,
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo release.")] = Path("out/demo"),
) -> None:
    """Run the whole path on the bundled synthetic Beijing sample."""
    samples = samples_dir()
    cfg = JobConfig.from_toml(samples / "demo.toml")
    with tempfile.TemporaryDirectory(prefix="privmob-demo-") as tmp:
        key_file = Path(tmp) / "demo.key"
        from privmob.pseudonymise import new_key

        key_file.write_bytes(new_key())
        key_file.chmod(0o600)
        cfg = cfg.with_overrides(job__key_file=str(key_file))
        p = make_plan(cfg)
        _out.print(p.explain(), markup=False, soft_wrap=True)
        release = p.release(samples / "beijing_pings.parquet")
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    release.write(staging)
    if out.exists():  # the demo's own previous output: replace it whole
        shutil.rmtree(out)
    os.replace(staging, out)
    _out.print("\n" + release.explain(), markup=False)
    _out.print(f"\nwritten to {out}:", markup=False)
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
        _err.print(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback; "
            "please report it)", markup=False,
        )
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
