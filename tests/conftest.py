"""Shared test helpers."""

from __future__ import annotations

import shutil
import signal

import pytest

from .netns import netns, veth_pair  # noqa: F401 - fixtures shared by the tests that need namespaces


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C for the commands the tests start.  A shell starts a background job (``pytest &``) with SIGINT
    ignored, and every process inherits that; a command then never sees the Ctrl-C a test sends it (``teleinfo
    listen`` waits on).  The suite must not depend on how it was started: SIGINT gets its default back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Image tests last, so that their builds (started below) run while the rest of the suite does."""
    items.sort(key=lambda item: item.get_closest_marker("image") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the image builds in the background when image tests are selected and can build (root)."""
    import os

    from . import image_builds

    wanted = any(item.get_closest_marker("image") is not None for item in session.items)
    prebuilt = os.environ.get("TELEINFO_IMAGE_DIR")
    if wanted and os.geteuid() == 0 and not prebuilt and not session.config.option.collectonly:
        tools = ("mmdebstrap", "mkfs.vfat", "mcopy", "mke2fs", "sfdisk", "zstd", "arch-test", "qemu-aarch64-static")
        if all(shutil.which(tool) for tool in tools):
            image_builds.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from . import image_builds

    image_builds.stop()
