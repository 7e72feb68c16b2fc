"""The tutorial notebooks (notebooks/*.ipynb) run end to end and are committed stripped.

Each notebook is executed by nbclient in a fresh kernel whose working directory is
``notebooks/`` (the notebooks find the samples as ``../data-samples``). The kernel is this
test's own interpreter: a kernel spec written for the test names ``sys.executable``, so a
``python3`` kernel registered elsewhere on the machine can never run the notebooks instead.
The notebooks write only under ``PRIVMOB_NOTEBOOK_OUT`` (a pytest temporary folder here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA

NOTEBOOKS = REPO / "notebooks"
EXPECTED = (
    "01-quickstart.ipynb",
    "02-choosing-epsilon.ipynb",
    "03-flows-and-forecast.ipynb",
    "04-real-traces.ipynb",
)
CELL_TIMEOUT_S = 300
KERNEL_NAME = "privmob-test"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_numbered_notebooks_are_all_there() -> None:
    assert [p.name for p in notebooks()] == list(EXPECTED)


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    # Plain JSON, no Jupyter packages needed: outputs belong to a run, not to git.
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs; strip them"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A kernel spec that runs this interpreter (the venv's python) with ipykernel."""
    pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (privmob[dev])")
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(root / KERNEL_NAME, overrides={"display_name": "privmob test"})
    spec = json.loads((root / KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return [str(root)]


def run(path: Path, kernel_dirs: list[str]) -> object:
    """Execute a copy of the notebook in notebooks/; the file on disk is never changed."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (privmob[dev])")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (privmob[dev])")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=KERNEL_NAME,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(
        nb, km=km, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S, startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def outputs(nb: object, kind: str) -> list[dict[str, object]]:
    return [o for c in nb.cells if c.cell_type == "code"  # type: ignore[attr-defined]
            for o in c.outputs if o["output_type"] == kind]


def text(nb: object) -> str:
    return "".join(str(o.get("text", "")) for o in outputs(nb, "stream"))


def snapshot(*folders: Path) -> set[Path]:
    return {p for f in folders for p in f.rglob("*") if ".ipynb_checkpoints" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path: Path, kernel_dirs: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("PRIVMOB_NOTEBOOK_OUT", str(out))  # inherited by the kernel
    monkeypatch.delenv("PRIVMOB_PSEUDONYM_KEY", raising=False)  # each notebook sets its own
    before = snapshot(NOTEBOOKS, REPO / "data-samples")
    nb = run(path, kernel_dirs)

    assert outputs(nb, "error") == []
    # Everything a notebook writes goes to its temporary folder, nothing into the repository.
    assert snapshot(NOTEBOOKS, REPO / "data-samples") == before

    if path.name.startswith("01-"):
        png = out / "heatmap.png"
        assert png.is_file() and png.stat().st_size > 10_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "release" / "manifest.json").is_file()
        assert (out / "report.html").is_file()
    if path.name.startswith("03-"):
        assert (out / "release-flows" / "flows.parquet").is_file()
    if path.name.startswith("04-"):
        # The notebook must find GeoLife where the test suite does, or say it did not.
        if (SHARED_DATA / "geolife" / "traces.csv.gz").exists():
            assert "GeoLife traces:" in text(nb) and "busiest day:" in text(nb)
        else:
            assert "GeoLife traces not found" in text(nb)
