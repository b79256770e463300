"""The status LED: what the appliance is doing, readable from across the room.

=========================  ==============================================================================
pattern                    means
=========================  ==============================================================================
one 50 ms flash per frame  frames arrive and verify, every output delivers
two 50 ms flashes a frame  frames arrive, but at least one output is failing (its server is unreachable...)
1 s on, 1 s off            no valid frame for ``no_data_after`` seconds: the meter is silent, the adapter
                           unplugged, or the wrong mode (``teleinfo doctor`` says which)
off                        the service is not running (or no frame yet, for the first ``no_data_after`` s)
=========================  ==============================================================================

The flashes run on gpiozero's own blink thread (``background=True``), so :meth:`StatusLed.on_frame` returns at
once in the reader thread.  The state comes from :class:`appliance.stats.Stats`: output states for the double
flash, the last frame's age for the no-data pattern (checked by the controller's tick).
"""

from __future__ import annotations

import time
from typing import Any, Final

from appliance.stats import Stats

__all__ = ["FLASH_GAP_S", "FLASH_S", "NO_DATA_OFF_S", "NO_DATA_ON_S", "StatusLed"]

FLASH_S: Final = 0.05
FLASH_GAP_S: Final = 0.1
NO_DATA_ON_S: Final = 1.0
NO_DATA_OFF_S: Final = 1.0


class StatusLed:
    """Drives a gpiozero ``LED`` from frames and :class:`Stats`."""

    def __init__(self, led: Any, stats: Stats, no_data_after: float) -> None:
        self._led = led
        self._stats = stats
        self._no_data_after = no_data_after
        self._started = time.monotonic()
        self.pattern = "off"  # off | frame | frame_failing | no_data
        led.off()

    def on_frame(self, valid: bool) -> None:
        """A frame was decoded; only a valid one flashes."""
        if not valid:
            return
        failing = any(state == "failing" for state in self._stats.output_states().values())
        self.pattern = "frame_failing" if failing else "frame"
        self._led.blink(on_time=FLASH_S, off_time=FLASH_GAP_S, n=2 if failing else 1, background=True)

    def tick(self) -> None:
        """Switch to the no-data pattern once frames have stopped (or never came) for ``no_data_after`` s."""
        age = self._stats.last_frame_age()
        silent = time.monotonic() - self._started if age is None else age
        if silent >= self._no_data_after and self.pattern != "no_data":
            self.pattern = "no_data"
            self._led.blink(on_time=NO_DATA_ON_S, off_time=NO_DATA_OFF_S, background=True)

    def close(self) -> None:
        self._led.off()
        self._led.close()
