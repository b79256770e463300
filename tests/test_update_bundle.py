"""Update bundles: built and signed from this checkout's units and firmware block, verified while streaming, and
refused (with nothing written outside the staging directory) when anything is off: signature, a file's hash, an
unknown or missing file, a link, a path escaping the staging directory, a size over the bound."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update.bundle import (
    BundleError,
    build_bundle,
    load_private_key,
    load_public_keys,
    public_pem,
    verify_and_extract,
)

REPO = Path(__file__).resolve().parent.parent


def _key(directory: Path, name: str = "release") -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.pem").write_bytes(public_pem(key))
    return key


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    d = tmp_path / "wheels"
    d.mkdir()
    (d / "teleinfo_appliance-0.2.0-py3-none-any.whl").write_bytes(b"PK appliance" * 100)
    (d / "pyserial-3.5-py2.py3-none-any.whl").write_bytes(b"PK serial")
    (d / "requirements.txt").write_text("pyserial==3.5\n")
    return d


def _build(tmp_path: Path, wheels: Path, key: Ed25519PrivateKey) -> Path:
    path, _ = build_bundle(
        tmp_path / "out",
        wheels=wheels,
        units=REPO / "systemd",
        firmware=REPO / "firmware",
        key=key,
        machine="x86_64",
        created=1_700_000_000,
    )
    return path


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(bundle: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def test_bundle_round_trip_lists_every_file_with_its_hash(tmp_path: Path, wheels: Path) -> None:
    key = _key(tmp_path / "keys")
    bundle = _build(tmp_path, wheels, key)
    assert bundle.name == "teleinfo-update-0.2.0-x86_64.tar"
    names = [m.name for m, _ in _members(bundle)]
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert {"systemd/teleinfo.service", "firmware/config.txt", "firmware/apply.py", "wheels/requirements.txt"} <= set(
        names
    )
    manifest = verify_and_extract(bundle, load_public_keys(tmp_path / "keys"), tmp_path / "x", 10**7)
    assert manifest.version == "0.2.0" and manifest.machine == "x86_64" and manifest.python == "3.11"
    assert manifest.packages == {"teleinfo-appliance": "0.2.0", "pyserial": "3.5"}
    assert manifest.release_name == f"0.2.0-{manifest.digest[:8]}"
    for name, (digest, size) in manifest.files.items():
        data = (tmp_path / "x" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest and len(data) == size
    # Deterministic: the same inputs give the same archive, byte for byte (Ed25519 signatures are deterministic).
    again = _build(tmp_path / "again", wheels, key)
    assert again.read_bytes() == bundle.read_bytes()


def test_bad_signature_refused_before_any_file_is_written(tmp_path: Path, wheels: Path) -> None:
    _key(tmp_path / "keys")
    bundle = _build(tmp_path, wheels, Ed25519PrivateKey.generate())  # signed by a key the device does not trust
    with pytest.raises(BundleError, match="bad signature"):
        verify_and_extract(bundle, load_public_keys(tmp_path / "keys"), tmp_path / "x", 10**7)
    assert not (tmp_path / "x").exists()


def test_no_trusted_key_means_no_update(tmp_path: Path, wheels: Path) -> None:
    bundle = _build(tmp_path, wheels, Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="no trusted update key"):
        verify_and_extract(bundle, load_public_keys(tmp_path / "nokeys"), tmp_path / "x", 10**7)


def test_a_second_trusted_key_is_accepted(tmp_path: Path, wheels: Path) -> None:
    _key(tmp_path / "keys", "old")
    new = _key(tmp_path / "keys", "new")
    bundle = _build(tmp_path, wheels, new)
    assert verify_and_extract(bundle, load_public_keys(tmp_path / "keys"), tmp_path / "x", 10**7).version == "0.2.0"


def _tampered(tmp_path: Path, wheels: Path, change: str) -> tuple[Path, Path]:
    key = _key(tmp_path / "keys")
    bundle = _build(tmp_path, wheels, key)
    members = _members(bundle)
    if change == "content":  # one byte of the unit changed, size kept
        members = [
            (m, d.replace(b"Type=notify", b"Type=simple") if m.name.endswith(".service") else d) for m, d in members
        ]
    elif change == "missing":
        members = [(m, d) for m, d in members if m.name != "firmware/apply.py"]
    elif change == "extra":
        members.append((tarfile.TarInfo("wheels/evil-1.0-py3-none-any.whl"), b"PK evil"))
    elif change == "duplicate":
        members.append(next((m, d) for m, d in members if m.name == "wheels/requirements.txt"))
    elif change == "traversal":
        members.append((tarfile.TarInfo("wheels/../../etc/passwd"), b"root::0:0"))
    elif change == "absolute":
        members.append((tarfile.TarInfo("/etc/cron.d/evil"), b"* * * * * root sh"))
    elif change == "symlink":
        link = tarfile.TarInfo("wheels/requirements.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        members = [(link, b"") if m.name == "wheels/requirements.txt" else (m, d) for m, d in members]
    elif change == "manifest-edited":  # the manifest rewritten (its signature is then wrong)
        doc = json.loads(members[0][1])
        doc["version"] = "9.9.9"
        members[0] = (members[0][0], json.dumps(doc).encode())
    elif change == "signature-last":
        members = [members[0], *members[2:], members[1]]
    out = tmp_path / "tampered.tar"
    _write(out, members)
    return out, tmp_path / "keys"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("content", "SHA-256 differs from the manifest"),
        ("missing", r"truncated bundle: 1 file\(s\) missing"),
        ("extra", "is not in the manifest"),
        ("duplicate", "appears twice"),
        ("traversal", "unsafe or unexpected path"),
        ("absolute", "unsafe or unexpected path"),
        ("symlink", "not a regular file"),
        ("manifest-edited", "bad signature"),
        ("signature-last", "must start with manifest.json and manifest.sig"),
    ],
)
def test_tampered_bundles_are_refused(tmp_path: Path, wheels: Path, change: str, message: str) -> None:
    bundle, keys = _tampered(tmp_path, wheels, change)
    dest = tmp_path / "staging"
    with pytest.raises(BundleError, match=message):
        verify_and_extract(bundle, load_public_keys(keys), dest, 10**7)
    # Nothing was ever written outside the staging directory.
    assert not (tmp_path / "etc").exists() and not Path("/etc/cron.d/evil").exists()
    if dest.exists():
        assert all(p.resolve().is_relative_to(dest.resolve()) for p in dest.rglob("*"))
        assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_size_bound_and_truncation(tmp_path: Path, wheels: Path) -> None:
    key = _key(tmp_path / "keys")
    bundle = _build(tmp_path, wheels, key)
    keys = load_public_keys(tmp_path / "keys")
    with pytest.raises(BundleError, match="more than the 1000 allowed"):
        verify_and_extract(bundle, keys, tmp_path / "a", 1000)
    with bundle.open("rb") as f, pytest.raises(BundleError, match="bigger than allowed"):  # a stream: no size known
        verify_and_extract(f, keys, tmp_path / "b", 5000)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"truncated|damaged"):
        verify_and_extract(cut, keys, tmp_path / "c", 10**7)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(BundleError):
        verify_and_extract(junk, keys, tmp_path / "d", 10**7)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_made_keys_work_as_image_readme_says(tmp_path: Path, wheels: Path) -> None:
    """image/README.md makes the release key with openssl and checks a bundle's signature with it."""
    private, public = tmp_path / "release.key", tmp_path / "keys" / "release.pem"
    public.parent.mkdir()
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
    bundle = _build(tmp_path, wheels, load_private_key(private))
    assert verify_and_extract(bundle, load_public_keys(public.parent), tmp_path / "x", 10**7).version == "0.2.0"
    # By hand, without the appliance: the manifest's signature, then its hashes.
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(tmp_path), "manifest.json", "manifest.sig"], check=True)
    check = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public), "-rawin",
         "-in", str(tmp_path / "manifest.json"), "-sigfile", str(tmp_path / "manifest.sig")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0 and "Signature Verified Successfully" in check.stdout


def test_release_side_command_line(tmp_path: Path, wheels: Path) -> None:
    """python -m appliance.update.bundle keygen / build / verify, as image/bundle runs them."""
    run = [sys.executable, "-m", "appliance.update.bundle"]
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run([*run, "keygen", str(tmp_path / "release.key"), str(keys / "release.pem")], check=True, cwd=REPO)
    assert (tmp_path / "release.key").stat().st_mode & 0o077 == 0
    built = subprocess.run(
        [*run, "build", "--wheels", str(wheels), "--units", str(REPO / "systemd"),
         "--firmware", str(REPO / "firmware"), "--key", str(tmp_path / "release.key"), "--machine", "aarch64",
         "--channel", "beta", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    assert "teleinfo 0.2.0 for aarch64" in built.stdout
    channel = json.loads((tmp_path / "out" / "beta.json").read_text())
    assert channel["bundles"]["aarch64"]["file"] == "teleinfo-update-0.2.0-aarch64.tar"
    verified = subprocess.run(
        [*run, "verify", str(tmp_path / "out" / "teleinfo-update-0.2.0-aarch64.tar"), "--keys", str(keys)],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert verified.returncode == 0 and "good signature" in verified.stdout and "pyserial 3.5" in verified.stdout


def test_image_bundle_script_with_given_wheels(tmp_path: Path, wheels: Path) -> None:
    """image/bundle, the release script, offline: wheels given (the real one downloads them with image/wheels)."""
    key = tmp_path / "release.key"
    subprocess.run([sys.executable, "-m", "appliance.update.bundle", "keygen", str(key), str(tmp_path / "k.pem")],
                   check=True, cwd=REPO)  # fmt: skip
    result = subprocess.run(
        [str(REPO / "image" / "bundle"), "--arch", "arm64", "--key", str(key), "--wheels", str(wheels),
         "--channel", "beta", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["beta.json", "teleinfo-update-0.2.0-aarch64.tar"]
    refused = subprocess.run([str(REPO / "image" / "bundle"), "--arch", "arm64"], capture_output=True, text=True)
    assert refused.returncode == 1 and "release key" in refused.stderr
