"""GPIO: the status LED and the rule-driven relays (gpiozero).  Imported only when ``gpio.enabled``.

* :mod:`appliance.gpio.rules`: the rules (off-peak, Tempo, load shedding, RELAIS), minimum times, forcing and
  the safe state of each; pure logic.
* :mod:`appliance.gpio.led`: the LED's patterns.
* :mod:`appliance.gpio.factory`: which pin factory (lgpio on a Pi 5, configuration off a Pi).
* :mod:`appliance.gpio.controller`: the pins, the tick thread, the control socket's ``gpio`` commands.
"""

from __future__ import annotations

import logging

from appliance.gpio.controller import GpioController
from appliance.gpio.factory import GpioError
from appliance.schema import GpioConfig
from appliance.stats import Stats

__all__ = ["GpioController", "GpioError", "start"]

_LOG = logging.getLogger(__name__)


def start(cfg: GpioConfig, stats: Stats) -> GpioController | None:
    """A started controller, or None after logging why GPIO is unusable (the meter is still read and published:
    a relay board problem must not stop the appliance's main job; the state shows the error)."""
    try:
        controller = GpioController(cfg, stats)
    except GpioError as e:
        _LOG.error("gpio disabled: %s", e)
        stats.set_extra("gpio", {"state": "error", "error": str(e)})
        return None
    controller.start()
    _LOG.info(
        "gpio: LED %s, outputs %s",
        f"GPIO{cfg.led_pin}" if cfg.led_pin >= 0 else "none",
        ", ".join(f"{o.name} (GPIO{o.pin}, {o.rule})" for o in cfg.outputs) or "none",
    )
    return controller
