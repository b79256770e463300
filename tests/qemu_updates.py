"""Update bundles for the booted image, and the frames the test counts across its updates (tests/test_image.py).

* :func:`bundles`: signed bundles for the image's architecture, made of the dependency wheels ``image/build``
  downloaded for the image (kept beside it in ``<name>.wheels/``: no second download) and the appliance's own
  wheel built from this checkout at a newer version, healthy or broken on purpose (``tests/update_helpers``);
  signed with the session's test key (``tests/image_builds.update_key``), which the image trusts.
* :func:`untrusted` and :func:`tampered`: the refused ones, a bundle signed with a key the image does not trust,
  and a bundle one byte of whose files changed after signing.
* :class:`Ledger`: which numbered frames (``TicFeed(numbered=True)``) the meter sent during each step of the test,
  and which reached the servers on the host (victoria-metrics, MQTT).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import __version__
from appliance.update.bundle import build_bundle, load_private_key

from .qemu_image import NUMBERED_BASE
from .servers import VictoriaMetrics
from .update_helpers import REPO, appliance_wheel

__all__ = ["Ledger", "Step", "bundles", "newer", "tampered", "untrusted"]


def newer(k: int) -> str:
    """A version newer than this checkout's (the image's): ``<version>.post<k>``."""
    return f"{__version__}.post{k}"


def _wheels(image_wheels: Path, appliance: Path, dest: Path) -> Path:
    """A bundle's wheels/: the image's dependency wheels (hard links) and requirements.txt, and ``appliance``."""
    dest.mkdir(parents=True)
    for f in image_wheels.iterdir():
        if not f.name.startswith("teleinfo_appliance-"):
            try:
                (dest / f.name).hardlink_to(f)
            except OSError:
                shutil.copy(f, dest / f.name)
    shutil.copy(appliance, dest / appliance.name)
    return dest


def bundles(image_wheels: Path, key: Path, machine: str, work: Path, wanted: dict[str, str | None]) -> dict[str, Path]:
    """A signed bundle per ``{version: broken}`` (``broken``: None, or a key of update_helpers.BREAKS)."""
    out: dict[str, Path] = {}
    signing = load_private_key(key)
    for version, broken in wanted.items():
        wheel = appliance_wheel(work / "wheels-src", version, broken)
        wheels = _wheels(image_wheels, wheel, work / f"wheels-{version}")
        out[version], _manifest = build_bundle(
            work / "bundles",
            wheels=wheels,
            units=REPO / "systemd",
            firmware=REPO / "firmware",
            key=signing,
            machine=machine,
        )
    return out


def untrusted(bundle: Path, dest: Path) -> Path:
    """``bundle`` with its manifest signed again by a key nobody trusts (a valid signature, the wrong signer)."""
    with tarfile.open(bundle) as tar:
        manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    return _with_member(bundle, dest, "manifest.sig", Ed25519PrivateKey.generate().sign(manifest))


def tampered(bundle: Path, dest: Path, member: str) -> Path:
    """``bundle`` with one byte of ``member`` changed (same size): the signature holds, that file's hash not."""
    shutil.copy(bundle, dest)
    with tarfile.open(dest) as tar:
        info = tar.getmember(member)
    with dest.open("r+b") as f:
        f.seek(info.offset_data + info.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x20]))
    return dest


def _with_member(bundle: Path, dest: Path, name: str, data: bytes) -> Path:
    shutil.copy(bundle, dest)
    with tarfile.open(dest) as tar:
        info = tar.getmember(name)
    assert info.size == len(data), (name, info.size, len(data))
    with dest.open("r+b") as f:
        f.seek(info.offset_data)
        f.write(data)
    return dest


@dataclass
class Step:
    """One step of the test: the numbers of the frames the meter sent from its start to its end."""

    name: str
    first: int
    last: int = 0
    restarts: int = 0  # service starts the step caused
    notes: dict[str, Any] = field(default_factory=dict)

    def sent(self) -> range:
        return range(self.first, self.last + 1)


class Ledger:
    """The frames the meter sent per step, and those the host's servers got."""

    def __init__(self, vm: VictoriaMetrics) -> None:
        self.vm = vm
        self.steps: list[Step] = []

    def begin(self, name: str, sent: int) -> Step:
        step = Step(name, sent + 1)
        self.steps.append(step)
        return step

    def vm_numbers(self) -> set[int]:
        """Frame numbers victoria-metrics holds (the InfluxDB output, spooled while the server was down)."""
        found: set[int] = set()
        for series in self.vm.export('{__name__="teleinfo_base"}'):
            found.update(int(v) - NUMBERED_BASE for v in series["values"])
        return found

    @staticmethod
    def mqtt_numbers(states: list[tuple[str, bytes, bool, float]]) -> set[int]:
        """Frame numbers in the MQTT states received (the MQTT output, spooled too)."""
        found: set[int] = set()
        for _topic, payload, _retained, _at in states:
            base = json.loads(payload).get("values", {}).get("BASE")
            if isinstance(base, int):
                found.add(base - NUMBERED_BASE)
        return found

    def report(self, vm: set[int], mqtt: set[int]) -> list[dict[str, Any]]:
        """Per step: frames sent, delivered to each server, and the numbers missing at each."""
        rows = []
        for step in self.steps:
            sent = set(step.sent())
            rows.append(
                {
                    "step": step.name,
                    "sent": len(sent),
                    "victoria-metrics": len(sent & vm),
                    "mqtt": len(sent & mqtt),
                    "missing": sorted(sent - vm),
                    "missing on mqtt": sorted(sent - mqtt),
                    "restarts": step.restarts,
                    **step.notes,
                }
            )
        return rows
