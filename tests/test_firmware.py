"""firmware/apply.py against copies of the stock boot files of every supported model (tests/data/firmware/).

The script runs as a user runs it (a subprocess on a copied boot partition), and the result is read the way the
firmware reads it: :func:`effective` evaluates config.txt's model filters, so each model is checked for the
settings it will actually get (docs/IMAGE.md §2), not just for lines being present.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


# --- layouts the script refuses, backups ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "reason"),
    [("cmdline=cmdline-tic.txt", "kernel command line then comes from another file"), ("os_prefix=next/", "another")],
)
def test_config_redirections_are_refused(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "bootfs"
    shutil.copytree(DATA / "pi4", path)
    (path / "config.txt").write_text((path / "config.txt").read_text() + f"[pi4]\n{line}\n")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    result = run(path)
    assert result.returncode == 1 and reason in result.stderr and line in result.stderr
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def load_apply() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("firmware_apply", str(SCRIPT))
    spec = importlib.util.spec_from_loader("firmware_apply", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["firmware_apply"] = module  # its dataclasses look their module up
    loader.exec_module(module)
    return module


def test_a_backup_is_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs in the same second (here: one, after a backup of that name already exists) keep both."""
    module = load_apply()
    path = tmp_path / "bootfs"
    shutil.copytree(DATA / "pi3", path)
    monkeypatch.setattr(module.time, "strftime", lambda *_a: "20260101T000000Z")
    precious = path / "config.txt.teleinfo-20260101T000000Z.bak"
    precious.write_text("the only copy of something\n")
    assert module.apply(path, root=tmp_path / "no-root") == 0
    assert precious.read_text() == "the only copy of something\n"
    assert (path / "config.txt.teleinfo-20260101T000000Z-1.bak").read_text() == (
        DATA / "pi3" / "config.txt"
    ).read_text()


# --- Debian's raspi-firmware -----------------------------------------------------------------------------
@pytest.fixture
def debian(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(DATA / "debian", root)
    return root


def run_root(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True, timeout=30
    )


def generate(root: Path) -> None:
    """What raspi-firmware's hook does with the files apply.py writes (its config.txt and cmdline.txt logic, in
    short): the real hook runs in the booted image (tests/test_image.py)."""
    default = (root / "etc/default/raspi-firmware").read_text()
    env = subprocess.run(
        ["sh", "-c", '. "$0"; echo "${CONSOLES:-auto}|${CMA:-64M}"', str(root / "etc/default/raspi-firmware")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    consoles, cma = env.split("|")
    assert "CONSOLES" in default
    boot = root / "boot/firmware"
    stock = (DATA / "debian/boot/firmware/config.txt").read_text()
    custom = (root / "etc/default/raspi-firmware-custom").read_text()
    (boot / "config.txt").write_text(f"{stock}\n# Inserted by /etc/default/raspi-firmware-custom\n{custom}")
    cmdline = " ".join(f"console={c}" for c in consoles.split()) + " root=/dev/mmcblk0p2 rw net.ifnames=0 "
    (boot / "cmdline.txt").write_text(cmdline + ("" if cma == "0" else f"cma={cma} ") + "rootwait\n")


def test_debian_settings_go_where_they_survive_kernel_updates(debian: Path) -> None:
    boot = debian / "boot/firmware"
    generated = {p: (boot / p).read_bytes() for p in ("config.txt", "cmdline.txt")}
    result = run_root(debian)
    assert result.returncode == 0, result.stderr
    assert "generated from these files by raspi-firmware's hook" in result.stdout
    # config.txt and cmdline.txt are the hook's: not touched (they would be overwritten at the next update).
    assert {p: (boot / p).read_bytes() for p in generated} == generated
    custom = (debian / "etc/default/raspi-firmware-custom").read_text()
    assert custom == (ROOT / "firmware/raspi-firmware-custom").read_text()  # a new file: no backup
    settings = (debian / "etc/default/raspi-firmware").read_text()
    assert settings.startswith((DATA / "debian/etc/default/raspi-firmware").read_text())  # kept, block appended
    assert 'CONSOLES="tty0"\n' in settings and "CMA=0\n" in settings
    assert [p.name for p in (debian / "etc/default").glob("*.bak")] == [
        next((debian / "etc/default").glob("raspi-firmware.teleinfo-*.bak")).name
    ]

    generate(debian)  # the next kernel update
    for model in ("pi3", "pi4", "pi02w"):
        settings_of = effective((boot / "config.txt").read_text(), model)
        assert "enable_uart=1" in settings_of and not any("disable-bt" in s for s in settings_of)
    assert {"core_freq=360", "core_freq_min=360"} <= set(effective((boot / "config.txt").read_text(), "pi4"))
    cmdline = (boot / "cmdline.txt").read_text().split()
    assert "console=tty0" in cmdline and not any(a.startswith(("console=ttyS", "cma=")) for a in cmdline)

    again = run_root(debian)
    assert again.returncode == 0 and "already applied (debian layout)" in again.stdout


def test_debian_administrator_settings_are_kept_or_reported(debian: Path) -> None:
    default = debian / "etc/default/raspi-firmware"
    default.write_text(default.read_text() + 'CONSOLES="tty0 ttyS1,115200"\nCMA=128M\n')
    (debian / "etc/default/raspi-extra-cmdline").write_text("console=ttyS1,115200 quiet\n")
    (debian / "etc/default/raspi-firmware-custom").write_text("dtparam=audio=on\n")
    result = run_root(debian)
    assert result.returncode == 0, result.stderr
    assert "CMA=128M kept" in result.stderr and "Pi 4 unbootable" in result.stderr
    settings = default.read_text()
    assert settings.rstrip().endswith("# --- teleinfo end ---") and 'CONSOLES="tty0"' in settings
    assert "\nCMA=0\n" not in settings
    assert (debian / "etc/default/raspi-extra-cmdline").read_text() == "quiet\n"
    assert (debian / "etc/default/raspi-firmware-custom").read_text().startswith("dtparam=audio=on\n\n# --- teleinfo")


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda r: (r / "boot/firmware/config.txt").write_text("arm_64bit=1\n"), "mixed layout"),
        (
            lambda r: (r / "etc/default/raspi-firmware").write_text('CONSOLES="$(cat /etc/consoles)"\n'),
            "cannot read safely",
        ),
        (lambda r: (r / "etc/default/raspi-firmware-custom").write_text("enable_uart=0\n"), "switches the header"),
    ],
    ids=["hand-written-config", "shell-expansion", "uart-off"],
)
def test_debian_layouts_not_understood_are_refused(debian: Path, setup, reason: str) -> None:  # type: ignore[no-untyped-def]
    setup(debian)
    before = {p: p.read_bytes() for p in debian.rglob("*") if p.is_file()}
    result = run_root(debian)
    assert result.returncode == 1 and reason in result.stderr, result.stderr
    assert {p: p.read_bytes() for p in debian.rglob("*") if p.is_file()} == before


def test_a_debian_boot_partition_without_its_system_is_refused(tmp_path: Path) -> None:
    result = run(DATA / "debian/boot/firmware")  # --boot alone: the generated files, no /etc/default beside
    assert result.returncode == 1 and "generated by Debian's raspi-firmware" in result.stderr


def test_debian_hook_is_run_and_its_result_checked(debian: Path) -> None:
    module = load_apply()
    hook = debian / "hook"
    boot = debian / "boot/firmware"
    log = debian / "hook.log"
    hook.write_text(
        f'#!/bin/sh\necho "$DEB_MAINT_PARAMS" >> {log}\n' + f"cp {boot}/next-config.txt {boot}/config.txt\n"
    )
    hook.chmod(0o755)
    (boot / "next-config.txt").write_text("# --- teleinfo begin\nenable_uart=1\n# --- teleinfo end ---\n")
    (boot / "cmdline.txt").write_text("console=tty0 root=/dev/mmcblk0p2 rootwait\n")
    out = io.StringIO()
    assert module.run_debian_hook(hook, boot, module.load_patterns(), out) == 0
    assert log.read_text() == "configure\n" and "regenerated" in out.getvalue()
    (boot / "cmdline.txt").write_text("console=ttyS1,115200 root=/dev/mmcblk0p2 rootwait\n")
    assert module.run_debian_hook(hook, boot, module.load_patterns(), out) == 1  # a serial console came back
