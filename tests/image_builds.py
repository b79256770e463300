"""Image builds started when the test session starts, so they run while the rest of the suite does.

Building the arm64 image through qemu-user takes minutes on 2 cores; the other tests take minutes too and leave
a core mostly idle.  When the session selects tests marked ``image`` (and runs as root, and no
``TELEINFO_IMAGE_DIR`` names prebuilt images), :func:`start` launches ``image/build`` for every architecture in
the background, :mod:`tests.conftest` moves the image tests to the end of the run, and :func:`wait` hands each
test its image once its build is done.  The images trust an update signing key made for the session
(:func:`update_key`), with which the tests sign their update bundles.  :func:`stop` kills what is still running
(by PID) and removes the images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHES = ("amd64", "arm64")
BUILD_TIMEOUT = 1100.0  # seconds from the start of the build: arm64 under qemu-user on a busy 2-core machine
KEY_NAME = "update-test.key"  # the session's update signing key, beside the images (update_key)


@dataclass
class Build:
    arch: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    finished: float | None = None


_builds: dict[str, Build] = {}
_directory: Path | None = None


def update_key(directory: Path, *, create: bool = True) -> Path:
    """The test's update signing key in ``directory`` (``update-test.key``, its public half ``update-test.pem``):
    made once per image directory, so once per session, and never a release key (it lives and dies with the
    images).  Images built there trust it (``image/build --update-key``); the tests sign their bundles with it."""
    private, public = directory / KEY_NAME, directory / KEY_NAME.replace(".key", ".pem")
    if create and not private.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from appliance.update.bundle import public_pem

        key = Ed25519PrivateKey.generate()
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(public_pem(key))
    return private


def build_argv(arch: str, directory: Path) -> list[str]:
    """``image/build`` for ``arch`` into ``directory``, trusting the test's update key."""
    key = update_key(directory).with_suffix(".pem")
    return [str(REPO / "image" / "build"), "--arch", arch, "--output", str(directory), "--update-key", str(key)]


def start() -> Path:
    """Start every architecture's build (once); return the directory the images go to."""
    global _directory
    if _directory is None:
        _directory = Path(tempfile.mkdtemp(prefix="teleinfo-images-"))
        for arch in ARCHES:
            log = _directory / f"build-{arch}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    build_argv(arch, _directory),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # stop() kills the build's whole process group
                )
            _builds[arch] = Build(arch, proc, log, time.monotonic())
    return _directory


def started() -> Path | None:
    """The directory of the background builds, if they were started."""
    return _directory


def wait(arch: str) -> tuple[int, float, str]:
    """Wait for ``arch``'s build: (exit status, seconds it took, the tail of its log)."""
    build = _builds[arch]
    left = BUILD_TIMEOUT - (time.monotonic() - build.started)
    try:
        status = build.proc.wait(timeout=max(1.0, left))
    except subprocess.TimeoutExpired:
        _kill(build)
        status = -9
    if build.finished is None:
        build.finished = time.monotonic()
    tail = build.log.read_text(errors="replace")[-6000:]
    return status, build.finished - build.started, tail


def stop() -> None:
    """Kill builds still running and remove the images (about 2.5 GB per architecture)."""
    global _directory
    for build in _builds.values():
        _kill(build)
    _builds.clear()
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
        _directory = None


def _kill(build: Build) -> None:
    if build.proc.poll() is None:
        try:
            os.killpg(build.proc.pid, 9)
        except ProcessLookupError:
            pass
        build.proc.wait()
