"""Signing and verifying release folders (privmob.governance.signing).

Every test that tampers with a release makes exactly one change and checks that
verification fails with the right kind of problem naming the right file — the question a
newsroom asks is "which file is not the official one?".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privmob.errors import KeyFileError, PrivmobError
from privmob.governance.signing import (
    PROBLEM_KINDS,
    PUBLIC_KEY_FILE,
    SIGNATURE_FILE,
    Problem,
    Verification,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_release,
    write_signature,
)

DATA_FILES = {
    "release.parquet": bytes(range(256)) * 3 + b"PAR1",
    "release.csv": b"cell,window_start,count,ci_low,ci_high\n"
    b"882a100d2bfffff,2026-11-26T00:00:00Z,12,7,17\n"
    b"882a100d2dfffff,2026-11-26T01:00:00Z,40,35,45\n",
    "release.geojson": json.dumps({"type": "FeatureCollection", "features": []}).encode(),
}
FP_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


@dataclass
class Keys:
    private_path: Path
    public_path: Path
    private: Ed25519PrivateKey
    fp: str

    def secrets(self) -> list[str]:
        """Every form of the private key that must never appear in a message."""
        pem = self.private_path.read_bytes().decode()
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        raw = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return [pem, "".join(body), *body, raw.hex(), base64.b64encode(raw).decode().rstrip("=")]


def assert_no_secret(text: str, keys: Keys) -> None:
    for secret in keys.secrets():
        assert secret not in text


def make_keys(folder: Path, name: str = "signing_key") -> Keys:
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / name
    fp = generate_keypair(private_path)
    return Keys(private_path, private_path.with_suffix(".pub"), load_private_key(private_path), fp)


def make_release(folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A release folder by hand: data files plus a manifest listing their sha256."""
    folder.mkdir(parents=True)
    files = {**DATA_FILES, **(extra or {})}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {
        "release_id": "rel-0001",
        "cells_released": 2,
        "epsilon": 1.0,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def attacker(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "attacker")


@pytest.fixture
def release(tmp_path: Path, keys: Keys) -> Path:
    folder = make_release(tmp_path / "release")
    assert write_signature(folder, keys.private) == keys.fp
    return folder


def kinds(v: Verification) -> set[tuple[str, str]]:
    return {(p.file, p.kind) for p in v.problems}


def assert_fails(v: Verification, file: str, kind: str, keys: Keys) -> None:
    assert not v.ok
    assert not v.trusted
    assert (file, kind) in kinds(v), v.summary()
    summary = v.summary()
    assert summary.startswith("NOT VERIFIED")
    assert len(summary.splitlines()) == 1 + len(v.problems)
    assert_no_secret(summary, keys)


def flip(path: Path, position: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- keys


def test_generate_keypair_writes_private_0600_and_public_beside_it(tmp_path: Path) -> None:
    private = tmp_path / "signing_key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the private key
    try:
        fp = generate_keypair(private)
    finally:
        os.umask(old_umask)
    public = tmp_path / "signing_key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert FP_RE.match(fp)
    assert fingerprint(load_private_key(private)) == fp == fingerprint(load_public_key(public))


def test_generate_keypair_default_public_path_replaces_suffix(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "ops.key")
    assert (tmp_path / "ops.pub").is_file()


def test_generate_keypair_explicit_public_path(tmp_path: Path) -> None:
    (tmp_path / "pub").mkdir()
    fp = generate_keypair(tmp_path / "k", tmp_path / "pub" / "published.pem")
    assert not (tmp_path / "k.pub").exists()
    assert fingerprint(load_public_key(tmp_path / "pub" / "published.pem")) == fp


def test_generate_keypair_never_overwrites_a_private_key(tmp_path: Path) -> None:
    private = tmp_path / "signing_key"
    generate_keypair(private)
    before = private.read_bytes()
    (tmp_path / "signing_key.pub").unlink()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(private)
    assert private.read_bytes() == before
    assert not (tmp_path / "signing_key.pub").exists()


def test_generate_keypair_refuses_existing_public_key_before_writing_anything(tmp_path: Path) -> None:
    (tmp_path / "signing_key.pub").write_text("someone else's key")
    with pytest.raises(KeyFileError, match=r"signing_key\.pub already exists"):
        generate_keypair(tmp_path / "signing_key")
    assert not (tmp_path / "signing_key").exists()
    assert (tmp_path / "signing_key.pub").read_text() == "someone else's key"


def test_generate_keypair_missing_folder_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="folder exists"):
        generate_keypair(tmp_path / "nope" / "signing_key", tmp_path / "signing_key.pub")
    assert not (tmp_path / "signing_key.pub").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644, 0o666])
def test_load_private_key_refuses_group_or_other_bits(keys: Keys, mode: int) -> None:
    keys.private_path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_private_key(keys.private_path)
    message = str(info.value)
    assert f"chmod 600 {keys.private_path}" in message
    assert f"{mode:04o}" in message
    assert_no_secret(message, keys)


def test_load_private_key_accepts_0400(keys: Keys) -> None:
    keys.private_path.chmod(0o400)
    assert fingerprint(load_private_key(keys.private_path)) == keys.fp


def test_load_private_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"does not exist.*privmob keys init"):
        load_private_key(tmp_path / "absent")


def _private_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_private_key_rejects_non_ed25519_keys_without_echoing_them(tmp_path: Path) -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    body = b"".join(rsa_pem.splitlines()[1:-1]).decode()
    with pytest.raises(KeyFileError, match="not an Ed25519") as info:
        load_private_key(_private_file(tmp_path, "rsa", rsa_pem))
    assert body[:40] not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_load_private_key_rejects_garbage_encrypted_and_public_pem(tmp_path: Path, keys: Keys) -> None:
    encrypted = keys.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(_private_file(tmp_path, "enc", encrypted))
    with pytest.raises(KeyFileError, match="does not hold a PEM private key") as junk:
        load_private_key(_private_file(tmp_path, "junk", b"not a key at all"))
    assert junk.value.__cause__ is None and junk.value.__context__ is None  # no parser text
    with pytest.raises(KeyFileError, match="does not hold a PEM private key"):
        load_private_key(_private_file(tmp_path, "pub", keys.public_path.read_bytes()))
    damaged = bytearray(keys.private_path.read_bytes())
    damaged[40] ^= 0x20
    with pytest.raises(KeyFileError) as info:
        load_private_key(_private_file(tmp_path, "damaged", bytes(damaged)))
    assert_no_secret(str(info.value), keys)


def test_load_public_key_from_path_and_bytes(keys: Keys) -> None:
    from_path = load_public_key(keys.public_path)
    from_bytes = load_public_key(keys.public_path.read_bytes())
    assert fingerprint(from_path) == fingerprint(from_bytes) == keys.fp


def test_load_public_key_errors(tmp_path: Path, keys: Keys) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_key(tmp_path / "absent.pub")
    with pytest.raises(KeyFileError, match="does not hold a PEM public key"):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(rsa_pub)
    with pytest.raises(TypeError, match="Path or PEM bytes"):
        load_public_key(str(keys.public_path))  # type: ignore[arg-type]


def test_fingerprint_is_stable_short_and_shared_by_both_halves(keys: Keys, attacker: Keys) -> None:
    pub = load_public_key(keys.public_path)
    assert fingerprint(keys.private) == fingerprint(pub) == fingerprint(keys.private) == keys.fp
    assert fingerprint(load_private_key(keys.private_path)) == keys.fp  # stable across loads
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert keys.fp == expected
    assert FP_RE.match(keys.fp) and len(keys.fp) == 50
    assert attacker.fp != keys.fp
    with pytest.raises(TypeError):
        fingerprint(b"key")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- signing


def test_sign_manifest_is_base64_line_over_exact_bytes(keys: Keys) -> None:
    data = b'{"files": {}}\n'
    sig = sign_manifest(data, keys.private)
    assert sig.endswith(b"\n") and sig.count(b"\n") == 1
    raw = base64.b64decode(sig.rstrip(b"\n"), validate=True)
    assert len(raw) == 64
    keys.private.public_key().verify(raw, data)  # raises if invalid
    assert sign_manifest(data, keys.private) == sig  # Ed25519 is deterministic


def test_write_signature_writes_sig_and_public_key(release: Path, keys: Keys) -> None:
    assert (release / SIGNATURE_FILE).read_bytes() == sign_manifest(
        (release / "manifest.json").read_bytes(), keys.private
    )
    assert (release / PUBLIC_KEY_FILE).read_bytes() == keys.public_path.read_bytes()
    assert not [p for p in release.iterdir() if p.name.startswith(".")]


def test_write_signature_can_resign_with_a_new_key(release: Path, attacker: Keys) -> None:
    assert write_signature(release, attacker.private) == attacker.fp
    assert verify_release(release, fingerprint=attacker.fp).trusted


def test_write_signature_refuses_a_folder_that_does_not_match_its_manifest(
    tmp_path: Path, keys: Keys
) -> None:
    folder = make_release(tmp_path / "r")
    flip(folder / "release.csv", 5)
    with pytest.raises(PrivmobError, match=r"refusing to sign.*release\.csv: content changed") as info:
        write_signature(folder, keys.private)
    assert_no_secret(str(info.value), keys)
    assert not (folder / SIGNATURE_FILE).exists()
    (folder / "release.csv").write_bytes(DATA_FILES["release.csv"])
    (folder / "heatmap.png").write_bytes(b"\x89PNG")
    with pytest.raises(PrivmobError, match=r"heatmap\.png: is not listed"):
        write_signature(folder, keys.private)


def test_write_signature_without_manifest(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrivmobError, match=r"manifest\.json cannot be read"):
        write_signature(tmp_path / "empty", keys.private)


# --------------------------------------------------------------------------- verifying untouched


def test_untouched_release_verifies_but_is_untrusted_without_a_pinned_key(release: Path, keys: Keys) -> None:
    v = verify_release(release)
    assert v.ok and not v.trusted and v.problems == () and v.fingerprint == keys.fp
    summary = v.summary()
    assert "AUTHOR NOT CHECKED" in summary and "anyone could have made it" in summary
    assert keys.fp in summary
    assert_no_secret(summary, keys)


@pytest.mark.parametrize("how", ["path", "key", "fingerprint", "bare_fingerprint", "both"])
def test_untouched_release_is_trusted_with_a_pinned_key_or_fingerprint(
    release: Path, keys: Keys, how: str
) -> None:
    pinned = load_public_key(keys.public_path)
    v = {
        "path": lambda: verify_release(release, public_key=keys.public_path),
        "key": lambda: verify_release(release, public_key=pinned),
        "fingerprint": lambda: verify_release(release, fingerprint=keys.fp),
        "bare_fingerprint": lambda: verify_release(release, fingerprint=f"  {keys.fp[7:]}=\n"),
        "both": lambda: verify_release(release, public_key=pinned, fingerprint=keys.fp),
    }[how]()
    assert v.ok and v.trusted and v.fingerprint == keys.fp
    assert v.summary().startswith("VERIFIED: official release")


def test_pinned_key_works_without_the_shipped_public_key(release: Path, keys: Keys) -> None:
    (release / PUBLIC_KEY_FILE).unlink()
    v = verify_release(release, public_key=keys.public_path)
    assert v.ok and v.trusted


def test_release_listing_images_verifies(tmp_path: Path, keys: Keys) -> None:
    folder = make_release(tmp_path / "r", {"heatmap.png": b"\x89PNG\r\n\x1a\nIMG", "fig/flows.pdf": b"%PDF"})
    write_signature(folder, keys.private)
    assert verify_release(folder, fingerprint=keys.fp).trusted


# --------------------------------------------------------------------------- single tamperings


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_changed_byte_of_release_csv(release: Path, keys: Keys, where: str) -> None:
    path = release / "release.csv"
    size = path.stat().st_size
    flip(path, {"first": 0, "middle": size // 2, "last": size - 1}[where])
    v = verify_release(release, public_key=keys.public_path)
    assert_fails(v, "release.csv", "digest_mismatch", keys)
    assert kinds(v) == {("release.csv", "digest_mismatch")}


def test_digest_mismatch_summary_line_is_exact(release: Path, keys: Keys) -> None:
    path = release / "release.csv"
    flip(path, 3)
    expected = hashlib.sha256(DATA_FILES["release.csv"]).hexdigest()
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    line = verify_release(release).summary().splitlines()[1]
    assert line == (
        f"release.csv: content changed (sha256 in manifest {expected[:16]}…, file has {actual[:16]}…)"
    )


def test_file_replaced_by_another_released_file(release: Path, keys: Keys) -> None:
    shutil.copyfile(release / "release.geojson", release / "release.csv")
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, "release.csv", "digest_mismatch", keys)
    assert kinds(v) == {("release.csv", "digest_mismatch")}
    assert "that is the content of release.geojson" in v.summary()


def test_listed_file_deleted(release: Path, keys: Keys) -> None:
    (release / "release.parquet").unlink()
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, "release.parquet", "missing", keys)
    assert kinds(v) == {("release.parquet", "missing")}


@pytest.mark.parametrize("name", ["heatmap.png", ".hidden", "figures/heatmap.png", "release.csv.orig"])
def test_extra_file_added(release: Path, keys: Keys, name: str) -> None:
    (release / name).parent.mkdir(exist_ok=True)
    (release / name).write_bytes(b"\x89PNG\r\n\x1a\n doctored heatmap")
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, name, "unlisted_file", keys)
    assert kinds(v) == {(name, "unlisted_file")}


def test_swapped_in_heatmap_listed_in_manifest(tmp_path: Path, keys: Keys) -> None:
    folder = make_release(tmp_path / "r", {"heatmap.png": b"\x89PNG\r\n\x1a\nofficial"})
    write_signature(folder, keys.private)
    (folder / "heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\ndoctored")
    v = verify_release(folder, fingerprint=keys.fp)
    assert_fails(v, "heatmap.png", "digest_mismatch", keys)


def test_one_character_of_manifest_edited(release: Path, keys: Keys) -> None:
    path = release / "manifest.json"
    text = path.read_text()
    assert '"cells_released": 2' in text
    path.write_text(text.replace('"cells_released": 2', '"cells_released": 3'))
    for v in (verify_release(release), verify_release(release, public_key=keys.public_path)):
        assert_fails(v, "manifest.json", "bad_signature", keys)
        assert kinds(v) == {("manifest.json", "bad_signature")}


def test_manifest_digest_edited_to_match_a_doctored_file(release: Path, keys: Keys) -> None:
    doctored = DATA_FILES["release.csv"].replace(b",12,", b",99,")
    (release / "release.csv").write_bytes(doctored)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"]["release.csv"] = hashlib.sha256(doctored).hexdigest()
    (release / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    v = verify_release(release)
    assert_fails(v, "manifest.json", "bad_signature", keys)


@pytest.mark.parametrize("keep", [0, 1, 40, 87])
def test_truncated_signature(release: Path, keys: Keys, keep: int) -> None:
    path = release / SIGNATURE_FILE
    path.write_bytes(path.read_bytes()[:keep])
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, SIGNATURE_FILE, "bad_signature", keys)
    assert kinds(v) == {(SIGNATURE_FILE, "bad_signature")}


def test_missing_signature_is_unsigned(release: Path, keys: Keys) -> None:
    (release / SIGNATURE_FILE).unlink()
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, SIGNATURE_FILE, "unsigned", keys)
    assert kinds(v) == {(SIGNATURE_FILE, "unsigned")}


def test_signature_made_by_another_key(release: Path, keys: Keys, attacker: Keys) -> None:
    (release / SIGNATURE_FILE).write_bytes(
        sign_manifest((release / "manifest.json").read_bytes(), attacker.private)
    )
    for v in (verify_release(release), verify_release(release, public_key=keys.public_path)):
        assert_fails(v, "manifest.json", "bad_signature", keys)
        assert kinds(v) == {("manifest.json", "bad_signature")}


def test_attacker_resigns_with_own_key(release: Path, keys: Keys, attacker: Keys) -> None:
    """A doctored release re-signed with the attacker's key and shipped with it."""
    doctored = DATA_FILES["release.csv"].replace(b",40,", b",4000,")
    (release / "release.csv").write_bytes(doctored)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"]["release.csv"] = hashlib.sha256(doctored).hexdigest()
    (release / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_signature(release, attacker.private)

    unpinned = verify_release(release)  # integrity holds: the folder is self-consistent…
    assert unpinned.ok and not unpinned.trusted and unpinned.fingerprint == attacker.fp
    assert "anyone could have made it" in unpinned.summary()

    by_fp = verify_release(release, fingerprint=keys.fp)  # …but not authorship
    assert_fails(by_fp, PUBLIC_KEY_FILE, "untrusted_key", keys)
    assert keys.fp in by_fp.summary() and attacker.fp in by_fp.summary()

    by_key = verify_release(release, public_key=keys.public_path)
    assert_fails(by_key, "manifest.json", "bad_signature", keys)
    assert_fails(by_key, PUBLIC_KEY_FILE, "untrusted_key", keys)
    assert by_key.fingerprint == keys.fp


def test_shipped_public_key_swapped_but_signature_genuine(release: Path, keys: Keys, attacker: Keys) -> None:
    shutil.copyfile(attacker.public_path, release / PUBLIC_KEY_FILE)
    assert_fails(verify_release(release), "manifest.json", "bad_signature", keys)
    v = verify_release(release, public_key=keys.public_path)
    assert_fails(v, PUBLIC_KEY_FILE, "untrusted_key", keys)
    assert kinds(v) == {(PUBLIC_KEY_FILE, "untrusted_key")}


def test_shipped_public_key_damaged_or_missing(release: Path, keys: Keys) -> None:
    (release / PUBLIC_KEY_FILE).write_bytes(b"garbage")
    assert_fails(verify_release(release), PUBLIC_KEY_FILE, "bad_signature", keys)
    assert_fails(verify_release(release, public_key=keys.public_path), PUBLIC_KEY_FILE, "untrusted_key", keys)
    (release / PUBLIC_KEY_FILE).unlink()
    assert_fails(verify_release(release), PUBLIC_KEY_FILE, "missing", keys)


def test_pinned_key_that_does_not_match_the_fingerprint(release: Path, keys: Keys, attacker: Keys) -> None:
    v = verify_release(release, public_key=keys.public_path, fingerprint=attacker.fp)
    assert_fails(v, "", "untrusted_key", keys)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"this is not json {", "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        (b"[1, 2, 3]", "is not a JSON object"),
        (b'{"release_id": "x"}', 'has no "files" map'),
        (b'{"files": ["release.csv"]}', 'has no "files" map'),
    ],
)
def test_malformed_manifest(release: Path, keys: Keys, content: bytes, detail: str) -> None:
    (release / "manifest.json").write_bytes(content)
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, "manifest.json", "malformed_manifest", keys)
    assert_fails(v, "manifest.json", "bad_signature", keys)
    assert detail in v.summary()
    # Even signed by the genuine key, a malformed manifest is not a valid release.
    (release / SIGNATURE_FILE).write_bytes(sign_manifest(content, keys.private))
    signed = verify_release(release, fingerprint=keys.fp)
    assert_fails(signed, "manifest.json", "malformed_manifest", keys)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "a//b", "./release.csv", "a\\b", ""])
def test_manifest_entries_outside_the_folder_are_malformed_not_read(
    tmp_path: Path, keys: Keys, name: str
) -> None:
    folder = make_release(tmp_path / "r")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    signature = sign_manifest((folder / "manifest.json").read_bytes(), keys.private)
    (folder / SIGNATURE_FILE).write_bytes(signature)
    shutil.copyfile(keys.public_path, folder / PUBLIC_KEY_FILE)
    v = verify_release(folder, fingerprint=keys.fp)
    assert_fails(v, "manifest.json", "malformed_manifest", keys)


def test_manifest_entry_with_bad_digest(release: Path, keys: Keys) -> None:
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"]["release.csv"] = "ABC"
    (release / "manifest.json").write_text(json.dumps(manifest))
    assert_fails(verify_release(release), "manifest.json", "malformed_manifest", keys)


def test_missing_manifest(release: Path, keys: Keys) -> None:
    (release / "manifest.json").unlink()
    v = verify_release(release, fingerprint=keys.fp)
    assert_fails(v, "manifest.json", "missing", keys)


def test_missing_folder(tmp_path: Path, keys: Keys) -> None:
    v = verify_release(tmp_path / "nowhere", fingerprint=keys.fp)
    assert v.problems == (Problem("", "missing", f"release folder {tmp_path / 'nowhere'} does not exist"),)
    assert not v.ok and not v.trusted and v.fingerprint is None
    assert v.summary().splitlines()[1] == f"release folder {tmp_path / 'nowhere'} does not exist"


def test_listed_file_replaced_by_symlink_or_fifo_is_not_followed(
    release: Path, keys: Keys, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_bytes(DATA_FILES["release.csv"])  # same bytes: a symlink must still fail
    (release / "release.csv").unlink()
    (release / "release.csv").symlink_to(outside)
    assert_fails(verify_release(release), "release.csv", "missing", keys)
    (release / "release.csv").unlink()
    os.mkfifo(release / "release.csv")  # reading a FIFO would hang forever
    v = verify_release(release)
    assert_fails(v, "release.csv", "missing", keys)
    assert "named pipe" in v.summary()


def test_symlinked_folder_is_reported_not_entered(release: Path, keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (release / "figures").symlink_to(tmp_path / "elsewhere")
    assert_fails(verify_release(release), "figures", "unlisted_file", keys)


def test_verify_release_programmer_errors(release: Path) -> None:
    with pytest.raises(TypeError):
        verify_release(release, public_key="signing_key.pub")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        verify_release(release, fingerprint="SHA256:")
    with pytest.raises(KeyFileError):
        verify_release(release, public_key=release / "no-such.pub")


def test_problem_kinds_are_closed() -> None:
    assert {"missing", "digest_mismatch", "unlisted_file", "bad_signature", "unsigned",
            "untrusted_key", "malformed_manifest"} == PROBLEM_KINDS
    with pytest.raises(ValueError, match="unknown problem kind"):
        Problem("x", "changed", "")


# --------------------------------------------------------------------------- properties


@pytest.fixture
def signed_with_images(tmp_path: Path, keys: Keys) -> Iterator[Path]:
    folder = make_release(tmp_path / "prop", {"heatmap.png": b"\x89PNG\r\n\x1a\n" + bytes(200)})
    write_signature(folder, keys.private)
    yield folder


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_in_any_released_file_is_detected(
    signed_with_images: Path, keys: Keys, data: st.DataObject
) -> None:
    folder = signed_with_images
    name = data.draw(st.sampled_from([*sorted(DATA_FILES), "heatmap.png", "manifest.json"]), label="file")
    path = folder / name
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    flip(path, position, mask)
    try:
        for v in (verify_release(folder), verify_release(folder, fingerprint=keys.fp)):
            assert not v.ok and not v.trusted
            if name == "manifest.json":
                assert ("manifest.json", "bad_signature") in kinds(v), v.summary()
            else:
                assert kinds(v) == {(name, "digest_mismatch")}, v.summary()
            assert_no_secret(v.summary(), keys)
    finally:
        path.write_bytes(original)
    assert verify_release(folder, fingerprint=keys.fp).trusted


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bit=st.integers(0, 64 * 8 - 1))
def test_any_flipped_signature_bit_is_detected(signed_with_images: Path, keys: Keys, bit: int) -> None:
    path = signed_with_images / SIGNATURE_FILE
    original = path.read_bytes()
    raw = bytearray(base64.b64decode(original))
    raw[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(base64.b64encode(bytes(raw)) + b"\n")
    try:
        v = verify_release(signed_with_images, public_key=keys.public_path)
        assert not v.ok and ("manifest.json", "bad_signature") in kinds(v)
    finally:
        path.write_bytes(original)


# --- trusted keys (issue 11: a folder's own key proves nothing) ---------------------------


def test_trusted_fingerprints_make_a_release_trusted_only_if_its_key_is_listed(
        release: Path, keys: Keys, attacker: Keys) -> None:
    v = verify_release(release, trusted_fingerprints=[attacker.fp, keys.fp])
    assert v.ok and v.trusted
    v = verify_release(release, trusted_fingerprints=[attacker.fp])
    assert_fails(v, PUBLIC_KEY_FILE, "untrusted_key", keys)
    assert not verify_release(release).trusted


def test_load_trusted_fingerprints_reads_one_per_line_with_comments(tmp_path: Path, keys: Keys,
                                                                   attacker: Keys) -> None:
    from privmob.governance.signing import load_trusted_fingerprints

    path = tmp_path / "trusted"
    path.write_text(f"# publisher keys\n\n{keys.fp}  cdc 2026\n  {attacker.fp[7:]}=\n", encoding="utf-8")
    assert load_trusted_fingerprints(path) == {keys.fp, attacker.fp}
    for bad in ("", "# nothing\n", "SHA256:short\n"):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(KeyFileError, match="one key fingerprint"):
            load_trusted_fingerprints(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_trusted_fingerprints(tmp_path / "missing")
