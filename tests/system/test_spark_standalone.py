"""The Spark backend on a real standalone cluster gives the Polars backend's exact aggregate.

test_spark_parity.py runs Spark in local mode, where driver and executors share one JVM
and one interpreter. Here a standalone master and worker run as separate JVMs on
127.0.0.1 (free ports, bounded waits), and a driver in client mode sends the job through
``spark://``: tasks are serialised to the worker's executor, whose own Python workers
run privmob's per-row step. The driver runs in a subprocess because PySpark allows one
SparkContext per process and this pytest process may hold the local-mode one.

``make test`` installs PySpark (a dev dependency) and a Java runtime (Debian's, when it runs
as root or with sudo); on a machine where Java cannot be installed the module is skipped and
says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
    pytest.skip("the Spark standalone cluster needs a Java runtime (17+): none on PATH or in "
                "JAVA_HOME (make test installs Debian's openjdk-17-jre-headless when it can)",
                allow_module_level=True)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from spark_standalone import LOOPBACK, StandaloneCluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[StandaloneCluster]:
    standalone = StandaloneCluster(cores=2, memory="2g", start_timeout_s=60)
    try:
        standalone.start()
        yield standalone
    finally:
        standalone.stop()
        left = standalone.leftovers()
        standalone.cleanup()
        assert not left, f"processes left after stopping the cluster: {left}"


def _master_state(cluster: StandaloneCluster) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{cluster.ui_port}/json/", timeout=5) as r:
        state: dict[str, Any] = json.load(r)
    return state


def test_exact_aggregate_through_a_standalone_master(cluster: StandaloneCluster) -> None:
    assert cluster.url.startswith(f"spark://{LOOPBACK}:")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "spark_standalone.py"), "--master", cluster.url,
         "--rows", "0", "--no-release", "--check-only"],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (summary, done.stderr[-3000:])
    (sample,) = summary["runs"]
    assert sample["identical"] and summary["identical"]
    assert sample["pings"] > 200_000 and sample["keys"] > 1000  # a real comparison
    # The executors ran their own Python workers with the venv's interpreter (not the
    # driver process), and the master saw the application come and go.
    assert summary["executor_python"] == sys.executable
    state = _master_state(cluster)
    assert state["aliveworkers"] == 1
    assert [app["name"] for app in state["completedapps"]] == ["privmob"]
