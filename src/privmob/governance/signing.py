"""Signing and verifying releases: telling an official release from a doctored copy.

Only authorised releases may be published, and anyone who receives one — a newsroom, a
ministry, a citizen — must be able to tell the official files from an edited CSV, a
swapped heatmap or a screenshot. The chain is short on purpose:

1. ``manifest.json`` lists the sha256 of every other released file (``files``);
2. ``manifest.sig`` is an Ed25519 signature over the *exact bytes* of ``manifest.json``,
   base64-encoded on one line;
3. ``signing_key.pub`` is the PEM public key, copied into the folder for convenience.

Changing any released file breaks its digest; changing the manifest breaks the signature;
adding a file is caught because it is not listed. But a key shipped *inside* the folder only
proves the files were not changed since someone signed them — an attacker can re-sign a
doctored folder with a key of their own and ship that key too. Authorship is proved only
against a key (or its fingerprint) that the verifier got from the publisher by another
channel — a website, a press release, a phone call — which is why :func:`verify_release`
reports ``trusted`` separately from ``ok``.

The signature is plain Ed25519 over the manifest bytes, so it can be checked without
privmob, e.g. with OpenSSL 3::

    base64 -d manifest.sig > manifest.sig.bin
    openssl pkeyutl -verify -pubin -inkey signing_key.pub -rawin \\
        -in manifest.json -sigfile manifest.sig.bin
    sha256sum release.csv        # compare with manifest.json "files"

The signing key is *not* the pseudonymisation key: it is a separate Ed25519 key pair,
kept in a file of mode 0600 under the same strict access control. Losing the
pseudonymisation key lets someone link people across releases; losing the signing key
lets someone publish in the operator's name. Neither is ever printed, logged or written
into a release; only the public key and its fingerprint are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privmob.errors import KeyFileError, PrivmobError

__all__ = [
    "PROBLEM_KINDS",
    "PUBLIC_KEY_FILE",
    "SIGNATURE_FILE",
    "TRUSTED_KEYS_ENV",
    "Problem",
    "Verification",
    "fingerprint",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "load_trusted_fingerprints",
    "sign_manifest",
    "verify_release",
    "write_signature",
]

#: Base64 Ed25519 signature over the exact bytes of ``manifest.json``, plus a newline.
SIGNATURE_FILE: Final = "manifest.sig"
#: PEM public key of the signer, copied into each release for convenience (not for trust).
PUBLIC_KEY_FILE: Final = "signing_key.pub"
MANIFEST_FILE: Final = "manifest.json"
#: Environment variable naming a file of trusted fingerprints (one per line), for ``verify``.
TRUSTED_KEYS_ENV: Final = "PRIVMOB_TRUSTED_KEYS"

#: Every value :attr:`Problem.kind` can take.
PROBLEM_KINDS: Final = frozenset(
    {
        "missing",
        "digest_mismatch",
        "unlisted_file",
        "bad_signature",
        "unsigned",
        "untrusted_key",
        "malformed_manifest",
    }
)

_NOT_LISTED = frozenset({MANIFEST_FILE, SIGNATURE_FILE, PUBLIC_KEY_FILE})
_FP_PREFIX = "SHA256:"
_SIG_BYTES = 64
#: Signature and public-key files are tiny; a larger one is damaged or hostile.
_SMALL_FILE_LIMIT = 64 * 1024
_CHUNK = 1 << 20
_SHORT_HEX = 16
_GENERATE_HINT = "make a new key pair with `privmob keys init PATH`"


# --------------------------------------------------------------------------- keys


def generate_keypair(private_path: Path, public_path: Path | None = None) -> str:
    """Create a new Ed25519 signing key pair and return its fingerprint.

    The private key is written as unencrypted PKCS#8 PEM, created with
    ``O_CREAT | O_EXCL`` and mode 0600 so that it is never readable by group or others,
    not even for an instant, and never overwrites an existing key: replacing a signing key
    by accident would make every release signed with the old one unverifiable against
    the fingerprint the publisher announced. Protect it by file permissions and access
    control, and keep it apart from the pseudonymisation key.

    Parameters
    ----------
    private_path
        Where to write the private key. Must not exist.
    public_path
        Where to write the public key PEM (mode 0644, it is public). Defaults to
        ``private_path`` with its suffix replaced by ``.pub`` (``signing_key`` →
        ``signing_key.pub``). Must not exist.

    Returns
    -------
    str
        The key's fingerprint (``SHA256:…``), to announce to those who will verify.

    Raises
    ------
    KeyFileError
        If either file already exists or cannot be created.
    ValueError
        If both paths name the same file.
    """
    private_path = Path(private_path)
    public_path = private_path.with_suffix(".pub") if public_path is None else Path(public_path)
    if public_path.resolve() == private_path.resolve():
        raise ValueError(
            f"the public key path {public_path} is the private key path; give a separate public_path"
        )
    for path, what in ((private_path, "signing key"), (public_path, "public key")):
        if path.exists() or path.is_symlink():
            raise KeyFileError(
                f"{what} file {path} already exists; a signing key is never overwritten, since "
                "releases signed with the old key would no longer match the announced "
                "fingerprint — choose another path, or move the old file away deliberately"
            )

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _create_exclusive(private_path, private_pem, 0o600, "signing key")
    try:
        _create_exclusive(public_path, public_pem, 0o644, "public key")
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return fingerprint(key)


def _create_exclusive(path: Path, data: bytes, mode: int, what: str) -> None:
    """Write ``data`` to a new file of exactly ``mode``; refuse if the path exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(
            f"{what} file {path} already exists; a signing key is never overwritten — choose "
            "another path, or move the old file away deliberately"
        ) from None
    except OSError as exc:
        raise KeyFileError(
            f"cannot create {what} file {path}: {exc.strerror}; check that its folder exists "
            "and is writable"
        ) from None
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want (never added any)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise KeyFileError(f"writing {what} file {path} failed: {exc.strerror}") from None
    os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the Ed25519 signing key from a PEM file that only its owner can access.

    A key file with *any* permission bit for group or others is refused, as ssh does:
    whoever can read it can publish releases in the operator's name.

    Raises
    ------
    KeyFileError
        If the file is missing, accessible by group/others, encrypted, or not an
        Ed25519 private key in PEM form. The message never contains key material.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"signing key file {path} does not exist; {_GENERATE_HINT}"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"signing key file {path} is not a regular file; {_GENERATE_HINT}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"signing key file {path} is accessible by group/others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with `chmod 600 {path}`"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key file {path}: {exc.strerror}") from None
    # Errors below are re-raised without their cause: a parser's message or traceback
    # must not carry the key bytes anywhere.
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        reason = (
            "is encrypted with a passphrase, but privmob expects an unencrypted PKCS#8 key "
            "protected by its file permissions"
        )
    except (ValueError, UnsupportedAlgorithm):
        reason = "does not hold a PEM private key"
    else:
        if isinstance(key, Ed25519PrivateKey):
            return key
        reason = f"holds a {type(key).__name__}, not an Ed25519 private key"
    raise KeyFileError(f"signing key file {path} {reason}; {_GENERATE_HINT}")


def load_public_key(path_or_pem: Path | bytes) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file or from PEM bytes.

    Raises
    ------
    KeyFileError
        If the file is missing or unreadable, or does not hold an Ed25519 public key.
    TypeError
        If given a ``str`` (ambiguous between a path and PEM text; pass ``Path`` or bytes).
    """
    if isinstance(path_or_pem, bytes | bytearray | memoryview):
        data, source = bytes(path_or_pem), "the given PEM data"
    elif isinstance(path_or_pem, os.PathLike):
        path = Path(path_or_pem)
        source = f"public key file {path}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(
                f"{source} does not exist; ask the publisher for their signing_key.pub"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read {source}: {exc.strerror}") from None
    else:
        raise TypeError(
            f"load_public_key takes a pathlib.Path or PEM bytes, not {type(path_or_pem).__name__}"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{source} does not hold a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Short, stable name of a key pair: ``"SHA256:"`` + unpadded base64 of sha256(raw key).

    The hash is over the raw 32-byte public key, so the private key and its public key
    give the same fingerprint. It looks like an OpenSSH fingerprint (43 characters after
    the prefix) but is not numerically the same, since OpenSSH hashes its own key
    encoding. It reveals nothing about the private key and is what a publisher announces
    and a verifier pins.
    """
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError(f"fingerprint takes an Ed25519 key, not {type(key).__name__}")
    return _fingerprint(key)


def _fingerprint(key: Ed25519PublicKey) -> str:
    # Separate from the public name: verify_release has a parameter called `fingerprint`.
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(raw).digest()
    return _FP_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def _normalise_fingerprint(value: str) -> str:
    """Accept ``SHA256:abc``, ``sha256:abc``, padded or with surrounding blanks."""
    text = value.strip()
    if text[: len(_FP_PREFIX)].upper() == _FP_PREFIX:
        text = text[len(_FP_PREFIX) :]
    text = text.rstrip("=")
    if not text:
        raise ValueError("fingerprint is empty; pass the publisher's 'SHA256:…' fingerprint")
    return _FP_PREFIX + text


# --------------------------------------------------------------------------- signing


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of ``manifest.sig``: base64 Ed25519 signature of the bytes, and a newline.

    The signature covers the exact bytes, not a re-serialised JSON object, so what is
    verified is exactly the file a reader opens (no canonicalisation to get wrong).
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"sign_manifest needs an Ed25519PrivateKey, not {type(key).__name__}")
    return base64.b64encode(key.sign(bytes(manifest_bytes))) + b"\n"


def write_signature(folder: Path, key: Ed25519PrivateKey) -> str:
    """Sign the release in ``folder``: write ``manifest.sig`` and ``signing_key.pub``.

    Before signing, the folder is checked as :func:`verify_release` will check it (the
    manifest parses, every listed file has its digest, nothing unlisted is present):
    signing certifies the folder's content, so a folder that would fail verification is
    refused rather than signed. Existing ``manifest.sig`` / ``signing_key.pub`` are
    replaced (re-signing, e.g. after a key rotation); each file is written to a temporary
    name, flushed and renamed into place.

    Returns
    -------
    str
        Fingerprint of the signing key.

    Raises
    ------
    PrivmobError
        If the folder has no readable manifest or does not match it.
    """
    folder = Path(folder)
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"write_signature needs an Ed25519PrivateKey, not {type(key).__name__}")
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:
        raise PrivmobError(
            f"cannot sign {folder}: {MANIFEST_FILE} cannot be read ({exc.strerror}); "
            "write the release first"
        ) from None
    problems = _check_contents(folder, manifest_bytes)
    if problems:
        listing = "; ".join(p.line() for p in problems)
        raise PrivmobError(
            f"refusing to sign {folder}: it does not match its manifest ({listing}); "
            "rewrite the release instead of signing it"
        )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _replace_file(folder / SIGNATURE_FILE, sign_manifest(manifest_bytes, key))
        _replace_file(folder / PUBLIC_KEY_FILE, public_pem)
    except OSError as exc:
        raise PrivmobError(
            f"writing the signature into {folder} failed ({exc.strerror or exc}); the release "
            "is not signed — fix the folder and sign again"
        ) from None
    return fingerprint(key)


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a release folder.

    Attributes
    ----------
    file
        The file concerned, relative to the folder (``""`` for the folder itself).
    kind
        One of :data:`PROBLEM_KINDS`: ``missing``, ``digest_mismatch``, ``unlisted_file``,
        ``bad_signature``, ``unsigned``, ``untrusted_key``, ``malformed_manifest``.
    detail
        What is wrong, in words a non-specialist can act on.
    """

    file: str
    kind: str
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; use one of {sorted(PROBLEM_KINDS)}")

    def line(self) -> str:
        """``"file: detail"``, or just the detail for the folder itself."""
        return f"{self.file}: {self.detail}" if self.file else self.detail


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify_release`.

    Attributes
    ----------
    ok
        No problem found: the manifest's signature is valid under the key used and every
        file matches the manifest. On its own this proves *integrity* only — if the key
        came from the folder itself, anyone could have made it.
    fingerprint
        Fingerprint of the key the signature was checked with (``None`` if there was none).
    trusted
        ``ok`` *and* the key was one the caller pinned (``public_key``) or whose
        fingerprint they gave, and it matched: the release is the publisher's.
    problems
        Everything found wrong, in a stable order.
    """

    ok: bool
    fingerprint: str | None
    trusted: bool
    problems: tuple[Problem, ...]

    def summary(self) -> str:
        """Human-readable verdict: a headline, then one line per problem."""
        key = self.fingerprint or "unknown key"
        if self.ok and self.trusted:
            return f"VERIFIED: official release, unchanged since it was signed by the expected key {key}"
        if self.ok:
            return (
                f"INTEGRITY OK, AUTHOR NOT CHECKED: the files are unchanged since they were signed "
                f"by key {key}, but that key came inside the folder, so anyone could have made it; "
                "compare the fingerprint with the one the publisher announced, or verify again "
                "with their fingerprint or public key"
            )
        count = len(self.problems)
        lines = [f"NOT VERIFIED: {count} problem{'s' if count != 1 else ''} found"]
        lines.extend(p.line() for p in self.problems)
        return "\n".join(lines)


def verify_release(
    folder: Path,
    *,
    public_key: Path | Ed25519PublicKey | None = None,
    fingerprint: str | None = None,
    trusted_fingerprints: Iterable[str] | None = None,
) -> Verification:
    """Check that a release folder is exactly what its signer published.

    Checks, and reports (never raises) on any failure:

    * ``manifest.json`` exists, is JSON, and has a ``files`` map of name → sha256;
    * ``manifest.sig`` exists and is a valid Ed25519 signature over the manifest's exact
      bytes, under the pinned ``public_key`` if given, else the ``signing_key.pub`` in
      the folder;
    * if ``fingerprint`` is given, the key used has that fingerprint (``untrusted_key``
      otherwise); a pinned key must match a shipped ``signing_key.pub`` too;
    * if ``trusted_fingerprints`` is given, the key used is one of them (``untrusted_key``
      otherwise);
    * every listed file exists as a regular file with its sha256;
    * no other file is present except ``manifest.json``, ``manifest.sig`` and
      ``signing_key.pub`` — an added or swapped-in image or table is reported.

    A key shipped inside the folder proves *integrity*, not *authorship*: whoever doctors
    a release can sign it with their own key and ship that. Only a pinned key or a
    fingerprint obtained from the publisher by another channel makes ``trusted`` true.

    Parameters
    ----------
    folder
        The release folder.
    public_key
        The publisher's public key (PEM file or loaded key), obtained out of band.
    fingerprint
        The publisher's key fingerprint (``SHA256:…``), obtained out of band.
    trusted_fingerprints
        Fingerprints of every key the caller trusts to sign releases (e.g. read with
        :func:`load_trusted_fingerprints`); the key used must be one of them.

    Returns
    -------
    Verification

    Raises
    ------
    KeyFileError
        If the pinned ``public_key`` file cannot be loaded (the caller's own input).
    TypeError, ValueError
        On programmer errors (wrong argument types, an empty fingerprint).
    """
    folder = Path(folder)
    pinned: Ed25519PublicKey | None
    if public_key is None:
        pinned = None
    elif isinstance(public_key, Ed25519PublicKey):
        pinned = public_key
    elif isinstance(public_key, os.PathLike):
        pinned = load_public_key(Path(public_key))
    else:
        raise TypeError(
            f"public_key must be a Path or an Ed25519PublicKey, not {type(public_key).__name__}"
        )
    expected_fp = _normalise_fingerprint(fingerprint) if fingerprint is not None else None
    trusted_set = (None if trusted_fingerprints is None
                   else frozenset(_normalise_fingerprint(f) for f in trusted_fingerprints))

    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        return Verification(False, None, False, (Problem("", "missing", f"release folder {folder} {what}"),))

    problems: list[Problem] = []

    # 1. Which key to check the signature with.
    key: Ed25519PublicKey | None = pinned
    shipped, shipped_problem = _load_shipped_key(folder)
    if pinned is not None:
        if shipped is not None and _fingerprint(shipped) != _fingerprint(pinned):
            problems.append(
                Problem(
                    PUBLIC_KEY_FILE,
                    "untrusted_key",
                    f"the key shipped in the folder ({_fingerprint(shipped)}) is not the pinned key "
                    f"({_fingerprint(pinned)}); the signature was checked with the pinned key",
                )
            )
        elif shipped_problem is not None:
            problems.append(
                Problem(
                    PUBLIC_KEY_FILE,
                    "untrusted_key",
                    f"{shipped_problem.detail}; the signature was checked with the pinned key",
                )
            )
    else:
        key = shipped
        if shipped_problem is not None:
            problems.append(shipped_problem)
        elif shipped is None:
            problems.append(
                Problem(
                    PUBLIC_KEY_FILE,
                    "missing",
                    "no public key in the folder and none pinned, so the signature cannot be "
                    "checked; verify with the publisher's public key or fingerprint",
                )
            )
    used_fp = _fingerprint(key) if key is not None else None
    key_matches = expected_fp is None or used_fp == expected_fp
    if expected_fp is not None and used_fp is not None and not key_matches:
        if pinned is not None:
            problems.append(
                Problem(
                    "",
                    "untrusted_key",
                    f"the pinned public key is {used_fp}, not the expected fingerprint {expected_fp}",
                )
            )
        else:
            problems.append(
                Problem(
                    PUBLIC_KEY_FILE,
                    "untrusted_key",
                    f"holds key {used_fp}, not the expected {expected_fp}: the release was not "
                    "signed by the publisher you named",
                )
            )

    in_trusted = trusted_set is None or used_fp in trusted_set
    if trusted_set is not None and used_fp is not None and not in_trusted:
        problems.append(
            Problem(
                "" if pinned is not None else PUBLIC_KEY_FILE,
                "untrusted_key",
                f"the release is signed by key {used_fp}, which is not among the "
                f"{len(trusted_set)} trusted key(s) given",
            )
        )

    # 2. The manifest and its signature.
    manifest_bytes, manifest_problem = _read_small(folder / MANIFEST_FILE, limit=None)
    if manifest_bytes is None:
        problems.append(
            manifest_problem
            or Problem(MANIFEST_FILE, "missing", "the manifest is missing; nothing can be checked")
        )
    sig_ok = False
    if manifest_bytes is not None:
        sig_ok, sig_problem = _check_signature(folder, manifest_bytes, key, pinned is not None)
        if sig_problem is not None:
            problems.append(sig_problem)
        problems.extend(_check_contents(folder, manifest_bytes))
    elif not (folder / SIGNATURE_FILE).exists():
        problems.append(Problem(SIGNATURE_FILE, "unsigned", "the release has no signature file"))

    ok = not problems and sig_ok
    pinned_any = pinned is not None or expected_fp is not None or trusted_set is not None
    trusted = ok and key_matches and in_trusted and pinned_any
    return Verification(ok, used_fp, trusted, tuple(problems))


def load_trusted_fingerprints(path: Path) -> frozenset[str]:
    """The fingerprints listed in a trusted-keys file: one ``SHA256:…`` per line.

    Blank lines and ``#`` comments are skipped, and anything after the fingerprint on a
    line (a name, a date) is ignored, so the file can say whose key each one is.

    Raises
    ------
    KeyFileError
        If the file cannot be read or lists no fingerprint.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise KeyFileError(f"cannot read the trusted keys file {path}: {why}") from None
    tokens = [words[0] for line in text.splitlines() if (words := line.split("#", 1)[0].split())]
    fps = frozenset(_FP_PREFIX + t.rstrip("=")[len(_FP_PREFIX):] if t[: len(_FP_PREFIX)].upper() == _FP_PREFIX
                    else _FP_PREFIX + t.rstrip("=") for t in tokens)
    bad = sorted(f for f in fps if len(f) != len(_FP_PREFIX) + 43)
    if bad or not fps:
        raise KeyFileError(
            f"the trusted keys file {path} must list one key fingerprint (SHA256: and 43 "
            "characters, as `privmob keys init` prints it) per line"
            + (f"; {len(bad)} line(s) are not one" if bad else "; it lists none")
        )
    return fps


def _load_shipped_key(folder: Path) -> tuple[Ed25519PublicKey | None, Problem | None]:
    """The key in ``signing_key.pub``; ``(None, None)`` if there is no such file."""
    data, problem = _read_small(folder / PUBLIC_KEY_FILE, limit=_SMALL_FILE_LIMIT)
    if data is None:
        return None, problem
    try:
        return load_public_key(data), None
    except KeyFileError:
        return None, Problem(
            PUBLIC_KEY_FILE, "bad_signature", "is not an Ed25519 public key in PEM form (damaged or replaced)"
        )


def _check_signature(
    folder: Path, manifest_bytes: bytes, key: Ed25519PublicKey | None, pinned: bool
) -> tuple[bool, Problem | None]:
    path = folder / SIGNATURE_FILE
    if not path.exists() and not path.is_symlink():
        return False, Problem(
            SIGNATURE_FILE,
            "unsigned",
            "the release has no signature, so nobody can tell it from an edited copy",
        )
    data, problem = _read_small(path, limit=_SMALL_FILE_LIMIT)
    if data is None:
        return False, problem
    try:
        signature = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIG_BYTES:
        return False, Problem(
            SIGNATURE_FILE, "bad_signature", "is not a base64 Ed25519 signature (truncated or damaged)"
        )
    if key is None:
        return False, None  # the missing/unusable key is already reported
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        which = "the pinned key" if pinned else "the key in signing_key.pub"
        return False, Problem(
            MANIFEST_FILE,
            "bad_signature",
            f"does not match its signature under {which} ({_fingerprint(key)}): the manifest "
            "was changed after signing, or manifest.sig was made with another key",
        )
    return True, None


def _read_small(path: Path, *, limit: int | None) -> tuple[bytes | None, Problem | None]:
    """Bytes of a regular file, or a problem; never follows into FIFOs or devices."""
    name = path.name
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, Problem(name, "missing", f"cannot be read ({exc.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return None, Problem(name, "missing", f"is not a regular file ({_file_type(st.st_mode)})")
    if limit is not None and st.st_size > limit:
        kind = "bad_signature" if name in (SIGNATURE_FILE, PUBLIC_KEY_FILE) else "missing"
        return None, Problem(name, kind, f"is {st.st_size:,} bytes, far too large to be genuine")
    try:
        return path.read_bytes(), None
    except OSError as exc:
        return None, Problem(name, "missing", f"cannot be read ({exc.strerror})")


def _check_contents(folder: Path, manifest_bytes: bytes) -> list[Problem]:
    """Manifest shape, listed files and their digests, and unlisted files."""
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, ValueError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        return [Problem(MANIFEST_FILE, "malformed_manifest", f"is not valid JSON ({why})")]
    if not isinstance(manifest, dict):
        return [Problem(MANIFEST_FILE, "malformed_manifest", "is not a JSON object")]
    files = manifest.get("files")
    if not isinstance(files, dict):
        return [
            Problem(MANIFEST_FILE, "malformed_manifest", 'has no "files" map of file name → sha256')
        ]

    problems: list[Problem] = []
    listed: dict[str, str] = {}
    mentioned: set[str] = set()  # named in the manifest, even if its entry is broken
    for name, digest in files.items():
        reason = _bad_name(name)
        if reason is None:
            mentioned.add(name)
            if not (isinstance(digest, str) and _is_sha256_hex(digest)):
                reason = "does not give a sha256 as 64 lower-case hex digits"
        if reason is not None:
            problems.append(
                Problem(MANIFEST_FILE, "malformed_manifest", f'entry {name!r} in "files" {reason}')
            )
        else:
            listed[name] = digest
    by_digest = {d: n for n, d in listed.items()}

    for name, expected in sorted(listed.items()):
        path = folder.joinpath(*PurePosixPath(name).parts)
        actual, problem = _digest_regular(path, name)
        if problem is not None:
            problems.append(problem)
        elif actual != expected:
            other = by_digest.get(actual or "")
            same_as = f" — that is the content of {other}" if other is not None and other != name else ""
            problems.append(
                Problem(
                    name,
                    "digest_mismatch",
                    f"content changed (sha256 in manifest {expected[:_SHORT_HEX]}…, file has "
                    f"{(actual or '')[:_SHORT_HEX]}…){same_as}",
                )
            )

    allowed = mentioned | _NOT_LISTED
    for name in sorted(_folder_files(folder)):
        if name not in allowed:
            problems.append(
                Problem(
                    name,
                    "unlisted_file",
                    "is not listed in the manifest: it was added or swapped in after the release "
                    "was made and is not part of it",
                )
            )
    return problems


def _is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _bad_name(name: object) -> str | None:
    """Why a manifest entry is not a plain relative path inside the folder, or ``None``."""
    if not isinstance(name, str) or not name:
        return "has an empty or non-text file name"
    if "\\" in name or "\x00" in name or name.startswith("/"):
        return "is not a relative path inside the release folder"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "is not a relative path inside the release folder"
    return None


def _digest_regular(path: Path, name: str) -> tuple[str | None, Problem | None]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None, Problem(name, "missing", "is listed in the manifest but not in the folder")
    except OSError as exc:
        return None, Problem(name, "missing", f"cannot be read ({exc.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return None, Problem(
            name, "missing", f"is listed in the manifest but is not a regular file ({_file_type(st.st_mode)})"
        )
    # A listed path under a symlinked folder would escape the release; refuse it.
    inner_folders = list(path.parents)[: len(PurePosixPath(name).parts) - 1]
    if any(parent.is_symlink() for parent in inner_folders):
        return None, Problem(name, "missing", "lies under a symbolic link, outside the release folder")
    sha = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                sha.update(chunk)
    except OSError as exc:
        return None, Problem(name, "missing", f"cannot be read ({exc.strerror})")
    return sha.hexdigest(), None


def _folder_files(folder: Path) -> list[str]:
    """Every non-directory entry under ``folder``, as a POSIX path relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        rel = Path(dirpath).relative_to(folder)
        # Symlinks to directories show up in dirnames; they are entries, not folders to enter.
        for d in list(dirnames):
            if (Path(dirpath) / d).is_symlink():
                dirnames.remove(d)
                filenames.append(d)
        for f in filenames:
            found.append((rel / f).as_posix())
    return found


def _file_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a special file"
