"""The CLI never deletes, writes or vouches for what it should not (issue 11).

* ``verify`` without a pinned key exits 5 (intact, author unknown), never 0: a release
  re-signed by an attacker who ships their own key in the folder is not "verified";
* ``demo --out DIR`` replaces only an earlier demo release, never an unrelated folder;
* an output template cannot send a release outside its own folder;
* ``report --out FILE`` and ``keys`` onto a missing folder are clear errors or just work,
  never an internal error (exit 4).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from privmob.cli import EXIT_AUTHOR_UNVERIFIED, main
from privmob.governance.signing import PUBLIC_KEY_FILE, generate_keypair, load_private_key, write_signature
from tests.system.test_cli import write_job


def _copy(release: Path, tmp: Path) -> Path:
    target = tmp / "release"
    shutil.copytree(release, target)
    return target


def _resign_as_attacker(release: Path, tmp: Path) -> str:
    """Doctor release.csv, fix its digest in the manifest, re-sign and ship the attacker key."""
    table = release / "release.csv"
    doctored = table.read_bytes() + b"\n"
    table.write_bytes(doctored)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"]["release.csv"] = hashlib.sha256(doctored).hexdigest()
    (release / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    fp = generate_keypair(tmp / "attacker.pem")
    write_signature(release, load_private_key(tmp / "attacker.pem"))
    assert (release / PUBLIC_KEY_FILE).read_bytes() == (tmp / "attacker.pub").read_bytes()
    return fp


def test_verify_without_a_pinned_key_never_exits_0(signed_demo: tuple[Path, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    release = _copy(signed_demo[0], tmp_path)
    assert EXIT_AUTHOR_UNVERIFIED == 5
    assert main(["verify", str(release)]) == 5  # genuine, but nothing says whose
    out = capsys.readouterr().out
    assert "authorship NOT verified" in out and "--fingerprint" in out and "--trusted-keys" in out


def test_an_attacker_resigned_release_never_verifies(signed_demo: tuple[Path, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    release, real_fp = _copy(signed_demo[0], tmp_path), signed_demo[1]
    attacker_fp = _resign_as_attacker(release, tmp_path)
    assert main(["verify", str(release)]) == 5  # was 0: the folder vouched for itself
    assert main(["verify", str(release), "--fingerprint", real_fp]) == 1
    trusted = tmp_path / "trusted_keys"
    trusted.write_text(f"# the publisher's keys\n{real_fp}  cdc-2026\n", encoding="utf-8")
    assert main(["verify", str(release), "--trusted-keys", str(trusted)]) == 1
    monkeypatch.setenv("PRIVMOB_TRUSTED_KEYS", str(trusted))
    assert main(["verify", str(release)]) == 1
    assert attacker_fp in capsys.readouterr().out


def test_a_genuine_release_verifies_with_a_pinned_key(signed_demo: tuple[Path, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    release, real_fp = signed_demo
    assert main(["verify", str(release), "--fingerprint", real_fp]) == 0
    trusted = tmp_path / "trusted_keys"
    trusted.write_text(f"{real_fp}\n", encoding="utf-8")
    assert main(["verify", str(release), "--trusted-keys", str(trusted)]) == 0
    monkeypatch.setenv("PRIVMOB_TRUSTED_KEYS", str(trusted))
    assert main(["verify", str(release)]) == 0


def test_a_bad_trusted_keys_file_is_a_clear_error(signed_demo: tuple[Path, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    trusted = tmp_path / "trusted_keys"
    trusted.write_text("not-a-fingerprint\n", encoding="utf-8")
    assert main(["verify", str(signed_demo[0]), "--trusted-keys", str(trusted)]) == 2
    assert main(["verify", str(signed_demo[0]), "--trusted-keys", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 2


# --- demo never deletes what it did not make ----------------------------------------------


def test_demo_refuses_an_unrelated_folder_and_keeps_it(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    assert main(["demo", "--out", str(mine)]) == 2
    assert "not an earlier privmob demo release" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["chapter1.tex"]
    sibling = tmp_path / "thesis.new"  # the old staging name was wiped too
    assert not sibling.exists()


def test_demo_keeps_a_folder_holding_a_release_plus_something_else(
        signed_demo: tuple[Path, str], tmp_path: Path) -> None:
    release = _copy(signed_demo[0], tmp_path)
    (release / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(release)]) == 2
    assert (release / "notes.txt").read_text() == "mine"


def test_demo_replaces_its_own_earlier_output_and_a_staging_sibling_survives(
        signed_demo: tuple[Path, str], tmp_path: Path) -> None:
    release = _copy(signed_demo[0], tmp_path)
    sibling = tmp_path / "release.new"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("mine")
    before = (release / "manifest.json").read_bytes()
    assert main(["demo", "--out", str(release)]) == 0
    assert (release / "manifest.json").read_bytes() != before
    assert (sibling / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "release.new"]


# --- output templates stay inside their folder ----------------------------------------------


def test_an_output_template_with_dotdot_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path)
    job.write_text(job.read_text().replace('output = "out/{period}"', 'output = "out/{period}/../../etc"'))
    for command in ("explain", "run"):
        assert main([command, str(job)]) == 2
    err = capsys.readouterr().err
    assert "goes up a level" in err and "Traceback" not in err
    assert not (tmp_path / "etc").exists()


def test_a_period_folder_that_escapes_by_symlink_is_refused(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "2026-11-26").symlink_to(elsewhere)
    assert main(["run", str(job)]) == 2
    assert "not inside" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


# --- exit 2, not 4 ----------------------------------------------------------------------------


def test_report_onto_an_existing_file_is_a_clear_error(
        signed_demo: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "report.pdf"
    target.write_text("an existing file")
    assert main(["report", str(signed_demo[0]), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err and "internal error" not in err
    assert target.read_text() == "an existing file"


@pytest.mark.parametrize("command", ["pseudonym", "init"])
def test_keys_onto_a_missing_folder_create_it_private(command: str, tmp_path: Path) -> None:
    key = tmp_path / "missing" / "dir" / "key"
    assert main(["keys", command, str(key)]) == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    for folder in (tmp_path / "missing", tmp_path / "missing" / "dir"):
        assert (folder.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("command", ["pseudonym", "init"])
def test_keys_under_a_regular_file_is_a_clear_error(command: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["keys", command, str(tmp_path / "file" / "sub" / "key")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "internal error" not in err
