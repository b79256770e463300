"""The update bundle: what a release is made of, signed, and verified while it streams.

A bundle is an uncompressed tar archive (its wheels are compressed already; no decompression bomb to bound) whose
first two members are the manifest and its signature::

    manifest.json          format, name, version, target (python, machine), config_schema, channel, created,
                           packages {name: version}, files {path: {"sha256", "size"}}
    manifest.sig           the 64-byte Ed25519 signature of manifest.json's exact bytes
    wheels/*.whl           the appliance's wheel and the exact pinned dependency wheels for the target
    wheels/requirements.txt
    systemd/*              the units (installed into /etc/systemd/system)
    firmware/*             the boot partition's UART block (firmware/apply.py applies it after a commit)

Verification (:func:`verify_and_extract`) reads the archive once, as a stream: the signature is checked against
the trusted keys before any other member is read, then every member must be a regular file named in the manifest,
under ``wheels/``, ``systemd/`` or ``firmware/``, of the announced size and SHA-256, and every file of the manifest
must come.  Members are written only inside a fresh staging directory (``O_EXCL | O_NOFOLLOW``); links, devices,
directories, absolute or ``..`` paths, duplicates and unknown files are refused, and so is an archive bigger than
the caller's bound.  Nothing outside the staging directory is touched until the caller has a verified manifest.

The release side (``image/bundle``, or ``python -m appliance.update.bundle build`` from a checkout) writes the
archive deterministically (sorted, owner root, mtime ``SOURCE_DATE_EPOCH``) and signs it with the release key, a
PEM Ed25519 private key that ``openssl genpkey -algorithm ed25519`` makes; the device trusts the PEM public keys in
``/etc/teleinfo/update-keys/*.pem`` (image/README.md: making a key, signing, publishing).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "BundleError",
    "Manifest",
    "build_bundle",
    "load_private_key",
    "load_public_keys",
    "verify_and_extract",
]

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
TOP_DIRS = ("wheels", "systemd", "firmware")
MAX_MANIFEST = 256 * 1024
MAX_FILES = 400
APPLIANCE = "teleinfo-appliance"
_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+!_-]{0,63}$")
_CHUNK = 256 * 1024


class BundleError(Exception):
    """The bundle is refused; the message says why (printable, no raw archive content)."""


@dataclass(frozen=True)
class Manifest:
    """A verified manifest."""

    version: str
    python: str
    machine: str
    config_schema: int
    channel: str
    created: float
    files: dict[str, tuple[str, int]]
    packages: dict[str, str]
    digest: str  # SHA-256 of manifest.json: the bundle's identity

    @property
    def release_name(self) -> str:
        """The release directory: the version and the bundle's identity (two builds of one version differ)."""
        return f"{self.version}-{self.digest[:8]}"

    @property
    def appliance_wheel(self) -> str:
        wheels = [p for p in self.files if p.startswith("wheels/teleinfo_appliance-") and p.endswith(".whl")]
        if len(wheels) != 1:
            raise BundleError(f"the bundle must hold exactly one teleinfo_appliance wheel (found {len(wheels)})")
        return wheels[0]


def _safe(text: object, limit: int = 80) -> str:
    """A value from the archive as it may be printed: printable ASCII, bounded."""
    s = str(text)
    return "".join(c if " " <= c <= "~" else "?" for c in s[:limit]) + ("..." if len(s) > limit else "")


def check_path(name: str) -> str:
    """``name`` if it is a safe relative path ``<top>/<file>`` (no ``..``, no absolute path, one level)."""
    p = PurePosixPath(name)
    parts = p.parts
    if (
        name != str(p)
        or p.is_absolute()
        or len(parts) != 2
        or parts[0] not in TOP_DIRS
        or not _PATH.match(parts[1])
        or parts[1] in (".", "..")
    ):
        raise BundleError(f"unsafe or unexpected path in the bundle: {_safe(name)!r}")
    return name


# --- keys --------------------------------------------------------------------------------------------------
def load_public_keys(directory: Path) -> list[Ed25519PublicKey]:
    """The trusted keys: every ``*.pem`` (or ``*.pub``) PEM Ed25519 public key in ``directory``."""
    keys = []
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix in (".pem", ".pub"))
    except OSError:
        files = []
    for path in files:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as e:
            raise BundleError(f"trusted key {path} cannot be read: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError(f"trusted key {path} is not an Ed25519 key")
        keys.append(key)
    return keys


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- verification ------------------------------------------------------------------------------------------
def _read_member(stream: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg():
        raise BundleError(f"{_safe(member.name)!r} is not a regular file")
    if member.size > limit:
        raise BundleError(f"{_safe(member.name)!r} is too big ({member.size} bytes)")
    f = stream.extractfile(member)
    assert f is not None
    return f.read()


def parse_manifest(data: bytes) -> Manifest:
    """Validate the manifest's shape (its signature was checked before)."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise BundleError("manifest.json is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("name") != APPLIANCE:
        raise BundleError(f"not a teleinfo bundle of format {FORMAT}")
    try:
        version, target, files = str(doc["version"]), doc["target"], doc["files"]
        python, machine = str(target["python"]), str(target["machine"])
        schema, channel, created = doc["config_schema"], str(doc["channel"]), float(doc["created"])
        packages = {str(k): str(v) for k, v in doc.get("packages", {}).items()}
        entries = {
            check_path(str(name)): (str(meta["sha256"]), int(meta["size"])) for name, meta in dict(files).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"manifest.json is incomplete ({_safe(e)})") from None
    if not _VERSION.match(version) or not isinstance(schema, int) or isinstance(schema, bool):
        raise BundleError(f"manifest.json: bad version or config_schema ({_safe(version)!r})")
    if len(entries) > MAX_FILES:
        raise BundleError(f"manifest.json lists too many files ({len(entries)})")
    for name, (digest, size) in entries.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or size < 0:
            raise BundleError(f"manifest.json: bad hash or size for {name}")
    return Manifest(
        version=version,
        python=python,
        machine=machine,
        config_schema=schema,
        channel=channel,
        created=created,
        files=entries,
        packages=packages,
        digest=hashlib.sha256(data).hexdigest(),
    )


def verify_and_extract(
    source: Path | IO[bytes], keys: Iterable[Ed25519PublicKey], dest: Path, max_bytes: int
) -> Manifest:
    """Verify the bundle ``source`` and write its files under ``dest`` (created, must not exist).

    Raises :class:`BundleError` for anything refused; ``dest`` may then hold some verified-so-far files, which the
    caller removes.  ``max_bytes`` bounds the whole archive.
    """
    keys = list(keys)
    if not keys:
        raise BundleError("no trusted update key is installed (/etc/teleinfo/update-keys/*.pem): refusing")
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
        except OSError as e:
            raise BundleError(f"cannot read {source}: {e.strerror or e}") from None
        if size > max_bytes:
            raise BundleError(f"the bundle is {size} bytes, more than the {max_bytes} allowed")
        with source.open("rb") as f:
            return _verify_stream(f, keys, dest, max_bytes)
    return _verify_stream(source, keys, dest, max_bytes)


class _Bounded(io.RawIOBase):
    """A reader that refuses to go past ``limit`` bytes (a stream's size is unknown in advance)."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw, self._left = raw, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise BundleError("the bundle is bigger than allowed")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _verify_stream(raw: IO[bytes], keys: list[Ed25519PublicKey], dest: Path, max_bytes: int) -> Manifest:
    bounded = io.BufferedReader(_Bounded(raw, max_bytes), _CHUNK)
    try:
        stream = tarfile.open(fileobj=bounded, mode="r|")
    except tarfile.TarError:
        raise BundleError("not a tar archive") from None
    try:
        return _verify_members(stream, keys, dest)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"damaged or truncated archive ({_safe(e)})") from None
    finally:
        stream.close()


def _verify_members(stream: tarfile.TarFile, keys: list[Ed25519PublicKey], dest: Path) -> Manifest:
    order = f"the archive must start with {MANIFEST} and {SIGNATURE}"
    first = stream.next()  # a stream: each member is read before the next one is looked at
    if first is None or first.name != MANIFEST:
        raise BundleError(order)
    data = _read_member(stream, first, MAX_MANIFEST)
    second = stream.next()
    if second is None or second.name != SIGNATURE:
        raise BundleError(order)
    signature = _read_member(stream, second, 64)
    for key in keys:
        try:
            key.verify(signature, data)
            break
        except InvalidSignature:
            continue
    else:
        raise BundleError("bad signature: the manifest is not signed by a trusted update key")
    manifest = parse_manifest(data)
    dest.mkdir(parents=True)
    seen: set[str] = set()
    while (member := stream.next()) is not None:
        name = check_path(member.name)
        if name not in manifest.files:
            raise BundleError(f"{name} is not in the manifest")
        if name in seen:
            raise BundleError(f"{name} appears twice")
        if not member.isreg():
            raise BundleError(f"{name} is not a regular file (links and devices are refused)")
        digest, size = manifest.files[name]
        if member.size != size:
            raise BundleError(f"{name}: {member.size} bytes, the manifest says {size}")
        seen.add(name)
        _extract(stream, member, dest / name, digest)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise BundleError(f"truncated bundle: {len(missing)} file(s) missing, first {missing[0]}")
    return manifest


def _extract(stream: tarfile.TarFile, member: tarfile.TarInfo, target: Path, digest: str) -> None:
    target.parent.mkdir(exist_ok=True)
    f = stream.extractfile(member)
    assert f is not None
    h = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != digest:
        raise BundleError(f"{member.name}: SHA-256 differs from the manifest (tampered or damaged)")


# --- building (release side) -------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def wheel_version(filename: str) -> tuple[str, str]:
    """(normalised project name, version) of a wheel file name."""
    m = _WHEEL.match(filename)
    if m is None:
        raise BundleError(f"not a wheel file name: {filename}")
    return m["name"].lower().replace("_", "-"), m["version"]


def build_bundle(
    output: Path,
    *,
    wheels: Path,
    units: Path,
    firmware: Path,
    key: Ed25519PrivateKey,
    machine: str,
    python: str = "3.11",
    channel: str = "stable",
    config_schema: int | None = None,
    created: float | None = None,
) -> tuple[Path, Manifest]:
    """Write ``teleinfo-update-<version>-<machine>.tar`` into ``output``; returns its path and manifest.

    ``wheels`` holds the appliance's wheel, the dependency wheels and ``requirements.txt``; ``units`` the systemd
    units (``*.service``, ``*.timer``); ``firmware`` the UART block (``config.txt``, ``cmdline.remove``,
    ``apply.py``).
    """
    from appliance.update.migrate import CONFIG_SCHEMA

    files: dict[str, Path] = {}
    for path in sorted(wheels.iterdir()):
        if path.suffix == ".whl" or path.name == "requirements.txt":
            files[f"wheels/{path.name}"] = path
    if "wheels/requirements.txt" not in files:
        raise BundleError(f"{wheels}/requirements.txt is missing")
    for path in sorted(units.iterdir()):
        if path.name.startswith("teleinfo") and path.suffix in (".service", ".timer"):
            files[f"systemd/{path.name}"] = path
    for name in ("config.txt", "cmdline.remove", "apply.py"):
        files[f"firmware/{name}"] = firmware / name
    packages = dict(wheel_version(p.name) for p in files.values() if p.suffix == ".whl")
    if APPLIANCE not in packages:
        raise BundleError(f"no teleinfo_appliance wheel in {wheels}")
    for name in files:
        check_path(name)
    version = packages[APPLIANCE]
    created = float(os.environ.get("SOURCE_DATE_EPOCH", time.time())) if created is None else created
    doc = {
        "format": FORMAT,
        "name": APPLIANCE,
        "version": version,
        "target": {"python": python, "machine": machine, "platform": "linux"},
        "config_schema": CONFIG_SCHEMA if config_schema is None else config_schema,
        "channel": channel,
        "created": created,
        "packages": packages,
        "files": {name: {"sha256": _sha256(p), "size": p.stat().st_size} for name, p in files.items()},
    }
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    signature = key.sign(data)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"teleinfo-update-{version}-{machine}.tar"
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((MANIFEST, data), (SIGNATURE, signature)):
            info = _info(name, len(payload), created)
            tar.addfile(info, io.BytesIO(payload))
        for name, path in files.items():
            with path.open("rb") as f:
                tar.addfile(_info(name, path.stat().st_size, created), f)
    os.replace(tmp, target)
    return target, parse_manifest(data)


def _info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_channel(output: Path, channel: str, bundle: Path, manifest: Manifest) -> Path:
    """Add the bundle to ``<channel>.json`` in ``output`` (one entry per machine): what devices on the channel
    read to find their bundle.  Not signed: it only points at a bundle, which is."""
    index = output / f"{channel}.json"
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    bundles = doc.get("bundles", {}) if isinstance(doc, dict) else {}
    bundles[manifest.machine] = {
        "version": manifest.version,
        "file": bundle.name,
        "size": bundle.stat().st_size,
        "sha256": _sha256(bundle),
    }
    index.write_text(json.dumps({"format": FORMAT, "channel": channel, "bundles": bundles}, indent=1) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.update.bundle build|keygen|verify``: the release side (from a checkout)."""
    parser = argparse.ArgumentParser(prog="python -m appliance.update.bundle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="assemble and sign a bundle")
    b.add_argument("--wheels", type=Path, required=True, help="the wheels and requirements.txt")
    b.add_argument("--units", type=Path, required=True, help="the systemd/ directory")
    b.add_argument("--firmware", type=Path, required=True, help="the firmware/ directory")
    b.add_argument("--key", type=Path, required=True, help="the release key (PEM Ed25519 private key)")
    b.add_argument("--machine", required=True, help="target machine (aarch64, x86_64)")
    b.add_argument("--python", default="3.11", help="target Python (default 3.11)")
    b.add_argument("--channel", default="stable")
    b.add_argument("--output", type=Path, required=True)
    k = sub.add_parser("keygen", help="make a release key pair (PEM, as openssl genpkey -algorithm ed25519 does)")
    k.add_argument("private", type=Path, help="private key file to create (keep it offline)")
    k.add_argument("public", type=Path, help="public key file to create (what images trust)")
    v = sub.add_parser("verify", help="verify a bundle against public keys and list it")
    v.add_argument("bundle", type=Path)
    v.add_argument("--keys", type=Path, required=True, help="directory of trusted *.pem public keys")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(args.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            args.public.write_bytes(public_pem(key))
            print(f"{args.private} (private, keep it offline), {args.public} (public)")
        elif args.command == "build":
            path, manifest = build_bundle(
                args.output,
                wheels=args.wheels,
                units=args.units,
                firmware=args.firmware,
                key=load_private_key(args.key),
                machine=args.machine,
                python=args.python,
                channel=args.channel,
            )
            index = write_channel(args.output, args.channel, path, manifest)
            print(f"{path}: teleinfo {manifest.version} for {manifest.machine}, {len(manifest.files)} files")
            print(f"{index}: channel {args.channel}")
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                manifest = verify_and_extract(
                    args.bundle, load_public_keys(args.keys), Path(tmp) / "x", args.bundle.stat().st_size
                )
            print(f"{args.bundle}: good signature, teleinfo {manifest.version} for {manifest.machine}")
            for name, version in sorted(manifest.packages.items()):
                print(f"  {name} {version}")
    except (BundleError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
