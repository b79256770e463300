"""firmware/apply.py against copies of the stock boot files of every supported model (tests/data/firmware/).

The script runs as a user runs it (a subprocess on a copied boot partition), and the result is read the way the
firmware reads it: :func:`effective` evaluates config.txt's model filters, so each model is checked for the
settings it will actually get (docs/IMAGE.md §2), not just for lines being present.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "firmware" / "apply.py"
DATA = Path(__file__).resolve().parent / "data" / "firmware"
MODELS = ("pi02w", "pi3", "pi4", "pi5")
# The conditional filters each model matches (raspberrypi/documentation config_txt/conditional.adoc).
FILTERS = {"pi02w": {"pi0", "pi02"}, "pi3": {"pi3"}, "pi4": {"pi4"}, "pi5": {"pi5"}}


def effective(config: str, model: str) -> list[str]:
    """The active setting lines of ``config`` on ``model`` (model filters only; [all] resets)."""
    active = True
    lines = []
    for raw in config.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].lower()
            active = name == "all" or name in FILTERS[model]
            continue
        if active:
            lines.append(line)
    return lines


def run(boot: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--boot", str(boot), *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture(params=MODELS)
def boot(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    dest = tmp_path / "bootfs"
    shutil.copytree(DATA / request.param, dest)
    return request.param, dest


def test_stock_files_lack_the_uart_and_have_a_serial_console(boot: tuple[str, Path]) -> None:
    model, path = boot
    settings = effective((path / "config.txt").read_text(), model)
    assert "dtoverlay=disable-bt" not in settings and "dtparam=uart0=on" not in settings
    assert "console=serial0,115200" in (path / "cmdline.txt").read_text().split()
    assert run(path, "--check").returncode == 3


def test_apply_gives_each_model_its_uart_and_removes_the_console(boot: tuple[str, Path]) -> None:
    model, path = boot
    stock_config = (path / "config.txt").read_text()
    stock_cmdline = (path / "cmdline.txt").read_text()
    result = run(path)
    assert result.returncode == 0, result.stderr
    assert "updated" in result.stdout and result.stderr == ""

    config = (path / "config.txt").read_text()
    assert config.startswith(stock_config)  # the stock content is kept as it was, the block appended
    settings = effective(config, model)
    if model == "pi5":
        assert "dtparam=uart0=on" in settings
        assert not any(s.startswith("enable_uart") for s in settings)  # would move the console onto GPIO14/15
        assert "dtoverlay=disable-bt" not in settings
    else:
        assert {"enable_uart=1", "dtoverlay=disable-bt"} <= set(settings)
        assert "dtparam=uart0=on" not in settings
    # Settings the stock file gives every model still apply (the block does not leave a filter open).
    assert "dtoverlay=vc4-kms-v3d" in settings and settings[-1] != "otg_mode=1"

    cmdline = (path / "cmdline.txt").read_text()
    assert cmdline.count("\n") == 1 and cmdline.endswith("\n")
    assert cmdline.split() == [a for a in stock_cmdline.split() if a != "console=serial0,115200"]

    backups = sorted(p.name for p in path.glob("*.bak"))
    assert len(backups) == 2
    assert (path / next(b for b in backups if b.startswith("config.txt"))).read_text() == stock_config
    assert (path / next(b for b in backups if b.startswith("cmdline.txt"))).read_text() == stock_cmdline


def test_second_run_changes_nothing(boot: tuple[str, Path]) -> None:
    _model, path = boot
    assert run(path).returncode == 0
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    again = run(path)
    assert again.returncode == 0 and "already applied" in again.stdout
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # no new backup, no rewrite
    assert run(path, "--check").returncode == 0


def test_newer_fragment_replaces_the_block_in_place(tmp_path: Path) -> None:
    """An older block (here: hand-edited inside the markers) is replaced, not duplicated."""
    path = tmp_path / "bootfs"
    shutil.copytree(DATA / "pi4", path)
    assert run(path).returncode == 0
    text = (path / "config.txt").read_text().replace("dtparam=uart0=on\n", "dtparam=uart0=off\n")
    (path / "config.txt").write_text(text + "# user line after the block\n")
    assert run(path).returncode == 0
    config = (path / "config.txt").read_text()
    assert config.count("# --- teleinfo begin") == 1 and "dtparam=uart0=on" in config
    assert config.endswith("# user line after the block\n")


def test_dry_run_shows_a_diff_and_writes_nothing(boot: tuple[str, Path]) -> None:
    _model, path = boot
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    result = run(path, "--dry-run")
    assert result.returncode == 0
    assert "+dtoverlay=disable-bt" in result.stdout and "-console=serial0,115200" in result.stdout
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda p: (p / "cmdline.txt").unlink(), "not a Raspberry Pi boot partition"),
        (lambda p: (p / "config.txt").unlink(), "not a Raspberry Pi boot partition"),
        (
            lambda p: (p / "config.txt").write_text(
                "DO NOT EDIT THIS FILE\n\nThe file you are looking for has moved to /boot/firmware/config.txt\n"
            ),
            "--boot /boot/firmware",
        ),
        (
            lambda p: (p / "cmdline.txt").write_text("console=tty1 root=/dev/mmcblk0p2\nrootwait\n"),
            "one non-empty line",
        ),
        (lambda p: (p / "cmdline.txt").write_text("console=serial0,115200 quiet\n"), "no root= argument"),
        (lambda p: (p / "cmdline.txt").write_bytes(b"\xff\xfe root=x\n"), "not a text file"),
        (
            lambda p: (p / "config.txt").write_text((p / "config.txt").read_text() + "# --- teleinfo begin: x\n"),
            "teleinfo block is damaged",
        ),
        (
            lambda p: (p / "config.txt").write_text((p / "config.txt").read_text() + "dtoverlay=miniuart-bt\n"),
            "miniuart-bt",
        ),
        (
            lambda p: (p / "config.txt").write_text((p / "config.txt").read_text() + "[pi4]\nenable_uart=0\n"),
            "switches the header UART off",
        ),
    ],
    ids=["no-cmdline", "no-config", "boot-stub", "two-lines", "no-root", "binary", "damaged-block", "miniuart", "off"],
)
def test_unknown_layouts_are_refused_untouched(tmp_path: Path, setup, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bootfs"
    shutil.copytree(DATA / "pi3", path)
    setup(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    result = run(path)
    assert result.returncode == 1
    assert result.stderr.startswith("refused, nothing changed:") and reason in result.stderr
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_enable_uart_for_every_model_is_applied_with_a_pi5_warning(tmp_path: Path) -> None:
    """raspi-config on a Pi 4 writes enable_uart=1 under [all]: harmless there, harmful if the card moves to a
    Pi 5, so the user is told, and the rest is applied."""
    path = tmp_path / "bootfs"
    shutil.copytree(DATA / "pi4", path)
    (path / "config.txt").write_text((path / "config.txt").read_text() + "enable_uart=1\n")
    result = run(path)
    assert result.returncode == 0
    assert "warning:" in result.stderr and "Pi 5" in result.stderr
    assert "dtoverlay=disable-bt" in effective((path / "config.txt").read_text(), "pi4")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    result = run(tmp_path / "nothing-here")
    assert result.returncode == 1 and "not a Raspberry Pi boot partition" in result.stderr
