"""privmob's Spark backend on a real Spark standalone cluster (master + worker on loopback).

Every other Spark run of this project is ``local[N]``: driver and executors in one JVM,
the executors' Python the driver's own interpreter. Local mode cannot show what a cluster
changes — tasks serialised to another JVM, Python workers started by an executor that
the worker launched, shuffles between processes, files shipped with ``spark.archives``.
This script runs the backend through ``spark://`` to check exactly that, on one machine:

1. starts a standalone **master** and one **worker** (2 cores, 2 GB) as separate JVMs,
   with the pip PySpark's own launcher (``pyspark/bin/spark-class``), bound to 127.0.0.1
   on free ports, with their own work and log directories under a temporary folder;
2. starts the driver — a child Python process on this machine, client deploy mode as
   docs/spark.md prescribes (it holds the key) — which opens a SparkSession on
   ``spark://127.0.0.1:<port>``; this process only supervises (see :func:`main` for why);
3. computes the exact aggregate (``ExactCounts``) with ``backend="spark"`` on the bundled
   sample and on the 1M-ping synthetic day of bench_pipeline.py, and checks it equals the
   Polars backend's, field by field; then a full release of the sample through Spark,
   whose manifest must equal the Polars release's apart from ids, clocks and noise;
4. prints the timings (session start, first job, exact aggregate, pings/s);
5. always stops the session, the worker (and with it its executors) and the master —
   also on Ctrl-C or SIGTERM — and checks no process it started is left.

Executors run either the driver's interpreter (``/work/main/.venv/bin/python``: same
machine, same files) or, with ``--archive``, a venv-pack'ed environment shipped through
``spark.archives`` and unpacked by each executor as ``./environment`` — the path
docs/spark.md documents for a real cluster.

    python benchmarks/spark_standalone.py                        # sample + 1M pings
    python benchmarks/spark_standalone.py --rows 0               # the sample only
    python benchmarks/spark_standalone.py --archive /tmp/privmob-env.tar.gz
    python benchmarks/spark_standalone.py --check-only --rows 0  # exit 1 on a mismatch; JSON line

tests/system/test_spark_standalone.py imports :class:`StandaloneCluster` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLES = REPO / "data-samples"
SAMPLE = SAMPLES / "beijing_pings.parquet"
LOOPBACK = "127.0.0.1"
KEY = "standalone-key-" + "0" * 40
#: Manifest fields that differ between any two runs (ids, clocks) or depend on the noise.
RUN_FIELDS = {"release_id", "created_at", "timings_s", "cells_released", "cells_suppressed"}


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it; another process could take it
    before Spark binds, which would make the start fail loudly, not silently)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    """The pip PySpark's own Spark distribution (jars, bin/spark-class, python/lib).

    Always this one, even if ``SPARK_HOME`` points elsewhere: the cluster's jars must be
    the version of the driver's pyspark, and the executors' Python workers get pyspark
    from ``$SPARK_HOME/python/lib/pyspark.zip`` of the worker.
    """
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").exists() or not (home / "jars").is_dir():
        raise RuntimeError(f"{home} is not a pip PySpark with its jars (bin/spark-class missing)")
    return home


def _wait(what: str, ready: Any, deadline_s: float, procs: list[subprocess.Popen[bytes]],
          logs: list[Path]) -> None:
    """Poll ``ready()`` until true; fail after ``deadline_s`` or if a process died."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: a Spark daemon exited with {proc.returncode}; "
                                   f"log {log}:\n{_tail(log)}")
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not ready after {deadline_s:.0f} s; logs: "
                       + "; ".join(f"{log}:\n{_tail(log)}" for log in logs))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_open(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM to the process group ``proc`` leads (started with a new session), SIGKILL
    after ``grace_s``, then SIGKILL again for any child that outlived its leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class StandaloneCluster:
    """A Spark standalone master and one worker on 127.0.0.1, as a context manager.

    Each daemon is started in its own session (process group), so a Ctrl-C in the
    terminal reaches this process only — which then stops them in order — and stopping a
    group also ends the executors and Python workers the worker forked. Waits are
    bounded (``start_timeout_s``); :meth:`stop` is idempotent and escalates to SIGKILL.
    """

    def __init__(self, cores: int = 2, memory: str = "2g", start_timeout_s: float = 60.0,
                 root: Path | None = None) -> None:
        self.cores, self.memory, self.start_timeout_s = cores, memory, start_timeout_s
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="privmob-standalone-")
        self.root = root if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.home = spark_home()
        self.port, self.ui_port, self.worker_ui_port = free_port(), free_port(), free_port()
        self.url = f"spark://{LOOPBACK}:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.pids: list[int] = []

    def env(self) -> dict[str, str]:
        """The daemons' environment: this Spark, loopback only, an empty conf dir (no
        stray spark-defaults.conf), logs and work files under our temporary folder."""
        conf_dir = self.root / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "SPARK_HOME": str(self.home), "SPARK_CONF_DIR": str(conf_dir),
            "SPARK_LOCAL_IP": LOOPBACK, "SPARK_LOCAL_HOSTNAME": LOOPBACK,
            "SPARK_LOG_DIR": str(self.root / "logs"), "SPARK_WORKER_DIR": str(self.root / "work"),
            "SPARK_DAEMON_MEMORY": "512m",
        })
        return env

    def _launch(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(self.home / "bin" / "spark-class"), *args], env=self.env(),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append(proc)
        self.logs.append(log)
        self.pids.append(proc.pid)
        return proc

    def workers_alive(self) -> int:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))

    def start(self) -> StandaloneCluster:
        self._launch("master", "org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
                     "--port", str(self.port), "--webui-port", str(self.ui_port))
        _wait("master", lambda: _port_open(self.port) and _port_open(self.ui_port),
              self.start_timeout_s, self.procs, self.logs)
        (self.root / "work").mkdir(exist_ok=True)
        self._launch("worker", "org.apache.spark.deploy.worker.Worker", self.url,
                     "--host", LOOPBACK, "--webui-port", str(self.worker_ui_port),
                     "--cores", str(self.cores), "--memory", self.memory,
                     "--work-dir", str(self.root / "work"))
        _wait("worker registration", lambda: self.workers_alive() >= 1, self.start_timeout_s,
              self.procs, self.logs)
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """Worker first (it kills its executors), then the master; SIGTERM, then SIGKILL
        to the whole process group of each."""
        for proc in reversed(self.procs):
            stop_group(proc, grace_s)
        self.procs.clear()

    def leftovers(self) -> list[str]:
        """Processes still alive in the groups we started (should be none after stop)."""
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True,
                             check=True).stdout
        left = []
        for line in out.splitlines():
            pid, pgid, stat, *args = line.split(None, 3)
            # a zombie has exited already; it only waits for its parent to reap it
            if int(pgid) in self.pids and not stat.startswith("Z"):
                left.append(f"{pid} {' '.join(args)[:120]}")
        return left

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> StandaloneCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.cleanup()


def session(master: str, archive: Path | None = None, executor_memory: str = "2g") -> Any:
    """A SparkSession on the standalone master, client deploy mode, set up as
    :func:`privmob.backends._spark.local_session` sets up a local one (it is the same
    function: it configures any master) plus what a cluster needs: the driver reachable
    on loopback, the executors' size, and their Python — the driver's interpreter, or
    ``./environment/bin/python`` from the shipped archive."""
    from privmob.backends._spark import local_session

    conf = {
        "spark.submit.deployMode": "client",
        "spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK,
        "spark.executor.memory": executor_memory, "spark.executor.cores": "2",
        "spark.cores.max": "2",
    }
    if archive is not None:
        conf["spark.archives"] = f"{archive}#environment"
        os.environ["PYSPARK_PYTHON"] = "./environment/bin/python"  # as docs/spark.md says
    else:
        os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = LOOPBACK
    os.environ["SPARK_HOME"] = str(spark_home())
    return local_session(master, **conf)


def same(a: Any, b: Any) -> bool:
    """ExactCounts equality as tests/system/test_spark_parity.py checks it."""
    return bool(a.counts.schema == b.counts.schema and a.counts.equals(b.counts)
                and a.rows_in == b.rows_in and a.rows_by_status == b.rows_by_status
                and a.persons == b.persons and a.bounding == b.bounding and a.pii == b.pii
                and a.identifier_names == b.identifier_names)


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def executor_python(spark: Any) -> str:
    """The interpreter the executors' Python workers really run (not what was asked)."""
    def where(_: Any) -> Iterator[str]:
        import sys as executor_sys

        yield executor_sys.executable

    return ", ".join(sorted(set(spark.sparkContext.parallelize([0, 1], 2).mapPartitions(where).collect())))


def run(master: str, rows: list[int], archive: Path | None, release: bool) -> dict[str, Any]:
    """The checks and timings on an already running master; a JSON-able summary."""
    import polars as pl

    import privmob as pm
    from privmob.backends._polars import PolarsBackend
    from privmob.backends._spark import SparkBackend
    from privmob.stages.pseudonymise import Pseudonymiser

    startup, spark = timed(lambda: session(master, archive))
    out: dict[str, Any] = {"master": master, "spark": spark.version, "polars": pl.__version__,
                           "archive": str(archive) if archive else None,
                           "session_start_s": round(startup, 2), "runs": [], "identical": True}
    try:
        polars_engine, spark_engine = PolarsBackend(), SparkBackend(spark)
        pseudonymiser = Pseudonymiser(KEY.encode(), "2026-11-26")
        demo = pm.JobConfig.from_toml(SAMPLES / "demo.toml")
        sample = pm.read_pings(SAMPLE)
        demo_keys = pm.plan(demo).key_cells
        first, _ = timed(lambda: spark_engine.exact_cells(sample, demo, pseudonymiser, demo_keys))
        out["first_job_s"] = round(first, 2)
        out["executor_python"] = executor_python(spark)
        print(f"Spark {spark.version} on {master} (client mode): session start {startup:.1f} s, "
              f"first job {first:.1f} s; executors' Python: {out['executor_python']}", flush=True)

        sys.path.insert(0, str(HERE))
        from bench_pipeline import dataset, job

        cases: list[tuple[str, Any, Any]] = [("sample (demo.toml)", sample, demo)]
        cases += [(f"synthetic {n:,}", pm.read_pings(dataset(n, 0)), job(8)) for n in rows]
        print(f"\n{'input':<22} {'pings':>10} {'Polars s':>9} {'Polars pings/s':>15} "
              f"{'Spark s':>8} {'Spark pings/s':>14} {'ratio':>6}  identical", flush=True)
        for name, source, cfg in cases:
            keys = pm.plan(cfg).key_cells
            t_polars, a = timed(lambda s=source, c=cfg, k=keys: polars_engine.exact_cells(
                s, c, pseudonymiser, k))
            t_spark, b = timed(lambda s=source, c=cfg, k=keys: spark_engine.exact_cells(
                s, c, pseudonymiser, k))
            ok = same(a, b)
            out["identical"] &= ok
            n = a.rows_in
            out["runs"].append({"input": name, "pings": n, "keys": a.counts.height,
                                "polars_s": round(t_polars, 2), "polars_pings_per_s": round(n / t_polars),
                                "spark_s": round(t_spark, 2), "spark_pings_per_s": round(n / t_spark),
                                "identical": ok})
            print(f"{name:<22} {n:>10,} {t_polars:>9.2f} {n / t_polars:>15,.0f} {t_spark:>8.2f} "
                  f"{n / t_spark:>14,.0f} {t_spark / t_polars:>5.1f}×  {ok}", flush=True)

        if release:
            os.environ["PRIVMOB_PSEUDONYM_KEY"] = KEY
            plan = pm.plan(demo)
            t_p, by_polars = timed(lambda: plan.release(SAMPLE, backend="polars"))
            t_s, by_spark = timed(lambda: plan.release(SAMPLE, backend="spark"))
            ok = ({k: v for k, v in by_spark.manifest.items() if k not in RUN_FIELDS}
                  == {k: v for k, v in by_polars.manifest.items() if k not in RUN_FIELDS}
                  and by_spark.table.schema == by_polars.table.schema)
            out["identical"] &= ok
            out["release"] = {"polars_s": round(t_p, 2), "spark_s": round(t_s, 2),
                              "manifest_matches": ok, "cells_released": by_spark.manifest["cells_released"]}
            print(f"\nfull release of the sample, backend='spark': {t_s:.2f} s (Polars {t_p:.2f} s); "
                  f"manifest equal apart from ids, clocks and noise: {ok}", flush=True)
    finally:
        spark.stop()
    return out


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000],
                        help="synthetic sizes (bench_pipeline's dataset(n, 0)); 0 or none: sample only")
    parser.add_argument("--master", help="run on this master (e.g. a running spark://… or local[2]) "
                        "instead of starting a standalone cluster")
    parser.add_argument("--archive", type=Path, help="a venv-pack'ed environment for the executors")
    parser.add_argument("--no-release", action="store_true", help="skip the full release")
    parser.add_argument("--check-only", action="store_true",
                        help="print one JSON line at the end; exit 1 unless identical")
    parser.add_argument("--json", type=Path, help="also save the summary here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # `kill` also stops the cluster

    summary: dict[str, Any] = {}
    rows = [n for n in args.rows if n > 0]
    if args.master:  # the driver alone, on a master someone else runs
        summary = run(args.master, rows, args.archive, not args.no_release)
        summary["leftover_processes"] = []
        return _finish(summary, args)
    # The driver runs in a child process, this one only supervises: a PySpark driver's main
    # thread sits in a socket read to its JVM, and a signal that another of its threads
    # receives is not handled until that read returns (possibly never, if the cluster is
    # gone). This process has no other threads, so Ctrl-C and SIGTERM always reach it.
    cluster = StandaloneCluster()
    driver: subprocess.Popen[bytes] | None = None
    t0 = time.perf_counter()
    try:
        cluster.start()
        cluster_start = time.perf_counter() - t0
        print(f"standalone master {cluster.url} (UI :{cluster.ui_port}) and 1 worker "
              f"({cluster.cores} cores, {cluster.memory}) up in {cluster_start:.1f} s; "
              f"SPARK_HOME={cluster.home}", flush=True)
        result = cluster.root / "summary.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--master", cluster.url,
                   "--json", str(result), "--rows", *map(str, rows)]
        command += ["--archive", str(args.archive)] if args.archive else []
        command += ["--no-release"] if args.no_release else []
        driver = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
        cluster.pids.append(driver.pid)  # the leftover check covers the driver and its JVM
        code = driver.wait()
        summary = json.loads(result.read_text()) if result.exists() else {}
        summary.update(cluster_start_s=round(cluster_start, 2), driver_exit_code=code)
    finally:
        t = time.perf_counter()
        if driver is not None:
            stop_group(driver, grace_s=10)
        cluster.stop()
        left = cluster.leftovers()
        cluster.cleanup()
        print(f"\ncluster stopped in {time.perf_counter() - t:.1f} s; processes left: {left or 'none'}",
              flush=True)
        summary["leftover_processes"] = left
    return _finish(summary, args)


def _finish(summary: dict[str, Any], args: argparse.Namespace) -> int:
    summary["load_average_1m"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.check_only:
        print(json.dumps(summary))
    return 0 if summary.get("identical") and not summary["leftover_processes"] else 1


if __name__ == "__main__":
    sys.exit(main())
