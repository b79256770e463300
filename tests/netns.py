"""Network namespaces for the tests (root): one empty namespace, or two joined by a veth pair.

Everything a test sends inside them stays inside them; deleting a namespace removes its end of the veth pair.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest

__all__ = ["VethPair", "ip", "needs_root_and_ip", "netns", "veth_pair"]


@dataclass
class VethPair:
    """Namespaces ``a`` (198.51.100.1 on ``va``) and ``b`` (198.51.100.2 on ``vb``), TEST-NET-2."""

    a: str
    b: str
    va: str
    vb: str
    addr_a: ClassVar[str] = "198.51.100.1"
    addr_b: ClassVar[str] = "198.51.100.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def needs_root_and_ip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and a veth pair")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip command is not installed (apt-get install -y iproute2)")


@pytest.fixture
def netns() -> Iterator[str]:
    """One empty namespace with lo up and no route for multicast; deleted afterwards."""
    needs_root_and_ip()
    name = f"tmc{os.getpid() % 100000}{secrets.token_hex(3)}"
    try:
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    needs_root_and_ip()
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    pair = VethPair(f"tmca{tag}", f"tmcb{tag}", f"va{tag}", f"vb{tag}")  # interface names stay under 16 bytes
    try:
        ip("netns", "add", pair.a)
        ip("netns", "add", pair.b)
        try:
            ip("link", "add", pair.va, "netns", pair.a, "type", "veth", "peer", "name", pair.vb, "netns", pair.b)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot create a veth pair here: {e.stderr.decode().strip()}")
        ip("-n", pair.a, "addr", "add", f"{pair.addr_a}/24", "dev", pair.va)
        ip("-n", pair.b, "addr", "add", f"{pair.addr_b}/24", "dev", pair.vb)
        for ns, dev in ((pair.a, pair.va), (pair.b, pair.vb)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):  # deleting a namespace removes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
