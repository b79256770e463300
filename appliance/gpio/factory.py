"""Which gpiozero pin factory drives the pins.

On a Raspberry Pi (``/proc/device-tree/model`` says so), ``auto`` picks lgpio on the Pi 5, whose RP1 GPIO only
the gpiochip character device reaches (RPi.GPIO and pigpio poke the old BCM registers and fail there), and lets
gpiozero choose on the others (it prefers lgpio too, then RPi.GPIO, pigpio, native).  Anywhere else there is no
safe guess, so ``auto`` refuses and asks for ``gpio.pin_factory``; ``mock`` gives gpiozero's simulated pins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

__all__ = ["GpioError", "factory_name", "make_factory"]

MODEL_PATH = Path("/proc/device-tree/model")
_ENTRY_POINTS = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}


class GpioError(ApplianceError):
    """GPIO cannot be used as configured; the message says why and what to do."""


def board_model(path: Path = MODEL_PATH) -> str | None:
    """The device-tree model string (``Raspberry Pi 5 Model B Rev 1.0``), or None when there is none."""
    try:
        return path.read_bytes().rstrip(b"\0").decode("ascii", "replace").strip() or None
    except OSError:
        return None


def factory_name(configured: str, model: str | None) -> str | None:
    """The factory to use: a name, None for gpiozero's own choice; raises :class:`GpioError` off a Pi."""
    if configured != "auto":
        return configured
    if model is None or not model.startswith("Raspberry Pi"):
        raise GpioError(
            f"not a Raspberry Pi ({model or 'no device-tree model'}): set gpio.pin_factory "
            '("lgpio" for any Linux gpiochip, "mock" for simulated pins)'
        )
    if model.startswith("Raspberry Pi 5") or "Compute Module 5" in model:
        return "lgpio"
    return None


def make_factory(configured: str, model_path: Path = MODEL_PATH) -> Any:
    """A pin factory instance (or None: gpiozero's default), with a clear error when its library is missing."""
    name = factory_name(configured, board_model(model_path))
    if name is None:
        return None
    module_name, cls_name = _ENTRY_POINTS[name]
    try:
        module = __import__(module_name, fromlist=[cls_name])
        return getattr(module, cls_name)()
    except ImportError as e:
        raise GpioError(f"pin factory {name!r} needs a library that is not installed: {e}") from None
    except Exception as e:  # the library is there but the hardware is not (no /dev/gpiochip0, no pigpiod...)
        raise GpioError(f"pin factory {name!r} cannot start: {type(e).__name__}: {e}") from None
