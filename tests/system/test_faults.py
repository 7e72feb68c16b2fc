"""Faults: a run killed at any stage, a full disk, a read-only output, two schedulers at once.

Whatever breaks, afterwards: no partial release is visible (a hidden
``.NAME.partial-*`` folder at most, which never verifies as a release), the ledger is
consistent (a killed run's reservation keeps counting, a failed write's is cancelled),
the audit log's chain is intact, and the next run proceeds.

Kill -9 after reserve (before reading) and two *different* job files racing for one
budget are in test_governance.py; here are the other stages and faults.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import privmob.release.table
from privmob import synth
from privmob.cli import main
from privmob.governance.audit import AuditLog
from privmob.governance.ledger import Ledger
from tests.conftest import TEST_KEY

PERIOD = "2026-11-26"
PRIVMOB = str(Path(sys.executable).with_name("privmob"))


@pytest.fixture(scope="module")
def pings_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic day (600 persons, a fix per 30 min), made once per module."""
    path = tmp_path_factory.mktemp("faults-input") / "pings.parquet"
    frame = synth.generate(600, 1, seed=11, start=PERIOD, ping_interval_s=1800.0, dense_fraction=0.0)
    synth.write(frame, path)
    return path


class Setup:
    """One job folder: key files, a signed job with a ledger, and what a run left."""

    def __init__(self, tmp: Path, pings: Path, *, output: str = "out/{period}") -> None:
        self.tmp = tmp
        key = tmp / "pseudonym.key"
        key.write_text(TEST_KEY)
        key.chmod(0o600)
        assert main(["keys", "init", str(tmp / "signing.pem")]) == 0
        self.job = tmp / "job.toml"
        self.job.write_text(f"""
[job]
operator = "cdc-analyst-01"
input = "{pings.as_posix()}"
output = "{output}"
period = "{PERIOD}"
dataset = "faults"
key_file = "pseudonym.key"
signing_key = "signing.pem"

[grid]
resolution = 7
window = "3h"

[privacy]
mechanism = "laplace"
epsilon = 1.0
max_windows = 8
min_count = 5

[budget]
ledger = "state/ledger.sqlite"
epsilon_per_day = 5.0
""", encoding="utf-8")

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def target(self) -> Path:
        return self.out / PERIOD

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.tmp / "state" / "ledger.sqlite")

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.tmp / "state" / "ledger.sqlite.audit.jsonl", anchor=self.ledger)

    def states(self) -> list[str]:
        return [c["state"] for c in self.ledger.charges()]

    def verify(self, folder: Path) -> int:
        return main(["verify", str(folder), "--public-key", str(self.tmp / "signing.pub")])

    def leftovers(self) -> list[Path]:
        return sorted(self.out.iterdir()) if self.out.exists() else []


def assert_nothing_visible(s: Setup) -> None:
    """No release at the target; at most hidden partial folders, none of them a release."""
    assert not s.target.exists()
    for entry in s.leftovers():
        assert entry.name.startswith(f".{PERIOD}.partial-"), entry
    assert s.verify(s.target) == 1


def assert_next_run_proceeds(s: Setup, capsys: pytest.CaptureFixture[str], *, before: list[str]) -> None:
    """The next scheduled run releases; whatever the failed run left is settled correctly."""
    capsys.readouterr()
    assert main(["run", str(s.job)]) == 0, capsys.readouterr().err
    assert s.states() == [*before, "committed"]
    (row,) = s.ledger.rows()
    spent = 1 + sum(state in ("recovered", "committed") for state in before)
    assert (row.spent, row.pending) == (Fraction(spent), Fraction(0))
    assert s.verify(s.target) == 0
    assert s.audit.verify() == []
    assert s.audit.entries()[-1]["event"] == "released"


# --- kill -9 at each stage -------------------------------------------------------------

#: Code run in the child before `privmob run`: it SIGKILLs the process at one point.
KILL_AT = {
    # while OpenDP draws the noise (both the public-key and the threshold path)
    "noise": """
import privmob.privacy.mechanism as m
m.noise_counts = die
m.threshold_counts = die
""",
    # the first release file is on disk, the others are not
    "write-first-file": """
from privmob.release.table import ReleasedTable
def first_file_then_die(self, folder, *args, **kwargs):
    self.table.write_parquet(folder / "release.parquet")
    die()
ReleasedTable._write_files = first_file_then_die
""",
    # every file written, the signature half written
    "signature": """
import privmob.governance.signing as sg
def half_a_signature_then_die(folder, *args, **kwargs):
    (folder / "manifest.sig").write_bytes(b"-----BEGIN")
    die()
sg.write_signature = half_a_signature_then_die
""",
    # a complete, signed folder, killed just before it is renamed into place
    "before-rename": """
import privmob.release.table as rl
rl._fsync_dir = die
""",
}


@pytest.mark.parametrize("stage", list(KILL_AT))
def test_kill_9_at_each_stage_leaves_nothing_visible_and_the_next_run_proceeds(
    stage: str, tmp_path: Path, pings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = Setup(tmp_path, pings_file)
    script = f"""
import os, signal, sys
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
{KILL_AT[stage]}
from privmob.cli import main
sys.exit(main(["run", {str(s.job)!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == -9, proc.stderr
    assert_nothing_visible(s)
    if stage != "before-rename":  # an incomplete folder never verifies, even if found
        for partial in s.leftovers():
            assert s.verify(partial) == 1
    # The reservation keeps counting: nothing was refunded for a run that may have published.
    assert s.states() == ["reserved"]
    (row,) = s.ledger.rows()
    assert (row.spent, row.pending) == (Fraction(0), Fraction(1))
    assert s.audit.verify() == []
    assert_next_run_proceeds(s, capsys, before=["recovered"])


# --- disk full and read-only output: a clear error, nothing charged --------------------

def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


class _OsWith:
    """The os module as privmob.release.table sees it, with one function replaced."""

    def __init__(self, **replaced: Any) -> None:
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced.get(name, getattr(os, name))


def _full_at(where: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the release write fail at ``where``; returns the strerror the message must carry."""
    if where == "parquet":
        def write_parquet(frame: Any, path: Any, *args: Any, **kwargs: Any) -> None:
            Path(path).write_bytes(b"PAR1 partial")
            raise _enospc(path)

        monkeypatch.setattr(privmob.release.table, "write_marked_parquet", write_parquet)
    elif where == "csv":
        real_write_text = Path.write_text

        def write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
            if self.name == "release.csv":
                real_write_text(self, data[: len(data) // 2], *args, **kwargs)
                raise _enospc(self)
            return real_write_text(self, data, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    elif where == "fsync":  # delayed allocation: the error surfaces only at fsync
        def fsync(fd: int) -> None:
            raise _enospc()

        monkeypatch.setattr(privmob.release.table, "os", _OsWith(fsync=fsync))
    elif where == "rename":
        def rename(src: Any, dst: Any) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

        monkeypatch.setattr(privmob.release.table, "os", _OsWith(rename=rename))
        return os.strerror(errno.EROFS)
    elif where in ("mkdtemp-erofs", "mkdtemp-eacces"):
        real_mkdtemp = tempfile.mkdtemp
        code = errno.EROFS if where == "mkdtemp-erofs" else errno.EACCES
        exc_type = OSError if code == errno.EROFS else PermissionError

        def mkdtemp(*args: Any, **kwargs: Any) -> str:
            if ".partial-" in str(kwargs.get("prefix", "")):
                raise exc_type(code, os.strerror(code), str(kwargs.get("dir")))
            return str(real_mkdtemp(*args, **kwargs))

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)  # the module privmob.release.table uses
        return os.strerror(code)
    return os.strerror(errno.ENOSPC)


@pytest.mark.parametrize(
    "where", ["parquet", "csv", "fsync", "rename", "mkdtemp-erofs", "mkdtemp-eacces"])
def test_disk_full_or_read_only_output_is_a_clear_error_and_charges_nothing(
    where: str, tmp_path: Path, pings_file: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = Setup(tmp_path, pings_file)
    with monkeypatch.context() as patch:
        strerror = _full_at(where, patch)
        capsys.readouterr()
        code = main(["run", str(s.job)])
        err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert str(s.target) in line and strerror in line, line
    assert "nothing was published" in line
    assert s.leftovers() == []  # not even a hidden partial folder
    assert s.states() == ["cancelled"]
    (row,) = s.ledger.rows()
    assert (row.spent, row.pending) == (Fraction(0), Fraction(0))
    last = s.audit.entries()[-1]
    assert (last["event"], last["budget"]) == ("failed", "returned")
    assert "ReleaseWriteError" in last["reason"]
    assert s.audit.verify() == []
    # Space freed (or the folder made writable): the same job releases, charged once.
    assert_next_run_proceeds(s, capsys, before=["cancelled"])


def test_output_under_a_file_is_a_clear_error_and_charges_nothing(
    tmp_path: Path, pings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No simulation: the output's parent is a regular file (as root, chmod cannot stop a write)."""
    s = Setup(tmp_path, pings_file, output="blocker/{period}")
    (tmp_path / "blocker").write_text("not a folder")
    capsys.readouterr()
    assert main(["run", str(s.job)]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert str(tmp_path / "blocker" / PERIOD) in line and "nothing was published" in line
    assert s.states() == ["cancelled"]
    assert (tmp_path / "blocker").read_text() == "not a folder"
    assert s.audit.entries()[-1]["event"] == "failed"


# --- two schedulers firing the same job file at once -----------------------------------

@pytest.mark.slow
def test_two_schedulers_firing_the_same_job_file_release_once(tmp_path: Path, pings_file: Path) -> None:
    """Same job, same output folder, same second: one release, one refusal, one charge."""
    s = Setup(tmp_path, pings_file)
    env = {**os.environ, "COLUMNS": "200"}

    def fire(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PRIVMOB, "run", str(s.job)], capture_output=True, text=True, env=env,
                              timeout=120, check=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(fire, range(2)))
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr for r in results]
    refused = next(r for r in results if r.returncode == 2)
    assert "Traceback" not in refused.stderr
    assert len([x for x in refused.stderr.splitlines() if x.startswith("error:")]) == 1
    assert s.states() == ["committed"]
    (row,) = s.ledger.rows()
    assert (row.spent, row.pending, row.releases) == (Fraction(1), Fraction(0), 1)
    assert [e.name for e in s.leftovers()] == [PERIOD]
    assert s.verify(s.target) == 0
    events = s.audit.entries()
    # (the ledger's own bookkeeping — created, declared, reserved — is logged too)
    assert sorted(e["event"] for e in events if e["event"] in ("refused", "released")) == [
        "refused", "released"]
    assert s.audit.verify() == []
    manifest = json.loads((s.target / "manifest.json").read_text())
    assert manifest["release_id"] == next(e for e in events if e["event"] == "released")["release_id"]
