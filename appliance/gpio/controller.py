"""The GPIO side of the service: claims the pins, feeds frames to the LED and the rules, ticks the timers, and
answers the control socket's ``gpio`` commands.

Threads: :meth:`GpioController.on_frame` runs in the reader thread, the ``gpio`` commands on the control
socket's thread, and a small ``gpio`` thread ticks every 50 ms (minimum times, forced durations, stale data, the
LED's no-data pattern).  One lock serialises them; nothing under it blocks (pin writes are memory or ioctl
writes, LED flashes run on gpiozero's blink thread).  A failing pin write is logged once and counted, never
raised into the reader.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Final

from gpiozero import LED, DigitalOutputDevice  # type: ignore[import-untyped, unused-ignore]

from appliance.gpio.factory import GpioError, make_factory
from appliance.gpio.led import StatusLed
from appliance.gpio.rules import Channel
from appliance.runtime import stop_thread
from appliance.schema import GpioConfig
from appliance.stats import Stats
from appliance.tic import Frame

__all__ = ["MAX_FORCE_S", "TICK_S", "GpioController"]

_LOG = logging.getLogger(__name__)

TICK_S: Final = 0.05
PUBLISH_S: Final = 1.0  # how often the GPIO state is copied into the stats snapshot
MAX_FORCE_S: Final = 7 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """``600``, ``600s``, ``10m``, ``2h`` -> seconds; None when not a duration."""
    m = _DURATION.fullmatch(text.strip().lower())
    return None if m is None else float(m.group(1)) * _UNIT[m.group(2)]


class GpioController:
    """The status LED and the rule-driven outputs of :class:`GpioConfig`.

    ::

        gpio = GpioController(cfg.gpio, stats)   # claims the pins now (GpioError if it cannot), all OFF
        gpio.register(control)                    # gpio, gpio force, gpio release on the control socket
        gpio.start()
        service.add_frame_listener(gpio.on_frame)
        ...
        gpio.close()                              # every output OFF, pins released

    ``factory`` overrides ``cfg.pin_factory`` (tests pass gpiozero's ``MockFactory``).
    """

    def __init__(self, cfg: GpioConfig, stats: Stats, *, factory: Any = None) -> None:
        self.cfg = cfg
        self._stats = stats
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._devices: list[Any] = []
        self.channels: dict[str, Channel] = {}
        self.led: StatusLed | None = None
        self.write_errors = 0
        self._closed = False
        pin_factory = factory if factory is not None else make_factory(cfg.pin_factory)
        pin = cfg.led_pin
        try:
            if cfg.led_pin >= 0:
                led = LED(cfg.led_pin, active_high=cfg.led_active_high, initial_value=False, pin_factory=pin_factory)
                self._devices.append(led)
                self.led = StatusLed(led, stats, cfg.no_data_after)
            for o in cfg.outputs:
                pin = o.pin
                device = DigitalOutputDevice(
                    o.pin, active_high=o.active_high, initial_value=False, pin_factory=pin_factory
                )
                self._devices.append(device)
                self.channels[o.name] = Channel(o, self._writer(o.name, device))
        except Exception as e:  # busy pin, no permission on /dev/gpiochip0, pin the board does not have...
            self._release()
            raise GpioError(f"cannot claim GPIO{pin}: {type(e).__name__}: {e}") from None
        self._publish()

    def _writer(self, name: str, device: Any) -> Any:
        def write(on: bool) -> None:
            try:
                device.value = on
            except Exception as e:
                self.write_errors += 1
                if self.write_errors == 1:
                    _LOG.error("gpio: cannot switch %s (GPIO%s): %s", name, device.pin, e)
                return
            _LOG.info("gpio: %s %s", name, "on" if on else "off")

        return write

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpio", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        """Every output to its safe state (OFF), the LED off, the pins released.  Idempotent."""
        self._stop.set()
        stop_thread(self._thread, timeout, "gpio", _LOG)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for channel in self.channels.values():
                channel.safe()
            self._release()
        self._stats.set_extra("gpio", {"state": "stopped"})

    def _release(self) -> None:
        if self.led is not None:
            self.led.close()
        for device in self._devices:
            try:
                device.close()
            except Exception as e:  # closing must go on for the other pins
                _LOG.warning("gpio: closing %s: %s", device, e)
        self._devices.clear()

    def _run(self) -> None:
        last_publish = 0.0
        while not self._stop.wait(TICK_S):
            with self._lock:
                for channel in self.channels.values():
                    channel.tick()
                if self.led is not None:
                    self.led.tick()
            now = time.monotonic()
            if now - last_publish >= PUBLISH_S:
                last_publish = now
                self._publish()

    # --- frames ------------------------------------------------------------------------------------------
    def on_frame(self, frame: Frame) -> None:
        """Frame listener (reader thread): the rules see every frame, the LED flashes for a valid one."""
        valid = frame.verified
        with self._lock:
            if self._closed:
                return
            for channel in self.channels.values():
                channel.on_frame(frame)
            if self.led is not None:
                self.led.on_frame(valid)

    # --- state and control -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "led": None if self.led is None else self.led.pattern,
                "outputs": {name: c.describe() for name, c in self.channels.items()},
                "write_errors": self.write_errors,
            }

    def _publish(self) -> None:
        self._stats.set_extra("gpio", self.describe())

    def register(self, control: Any) -> None:
        """Add ``gpio`` (anyone), ``gpio force`` and ``gpio release`` (principal) to a ControlServer."""
        control.register_command(
            "gpio", self._cmd_status, principal_only=False, help="state of the GPIO outputs and the LED, as JSON"
        )
        control.register_command(
            "gpio force",
            self._cmd_force,
            help=f"gpio force <output> on|off <duration: 600, 10m, 2h; at most {MAX_FORCE_S / 86400:g} days>: hold "
            "an output whatever its rule (minimum times do not apply)",
        )
        control.register_command(
            "gpio release", self._cmd_release, help="gpio release <output>: give a forced output back to its rule"
        )

    def _cmd_status(self, _session: Any, args: str) -> str:
        if args:
            return "error usage: gpio | gpio force <output> on|off <duration> | gpio release <output>"
        return json.dumps(self.describe(), separators=(",", ":"))

    def _channel(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def _cmd_force(self, _session: Any, args: str) -> str:
        words = args.split()
        if len(words) != 3 or words[1].lower() not in ("on", "off"):
            return "error usage: gpio force <output> on|off <duration>"
        name, state, text = words[0], words[1].lower(), words[2]
        seconds = parse_duration(text)
        if seconds is None or not 0 < seconds <= MAX_FORCE_S:
            return f"error duration must be 600, 10m or 2h, at most {MAX_FORCE_S / 86400:g} days (got {text[:20]!r})"
        with self._lock:
            channel = self._channel(name)
            if channel is None:
                return f"error no output {name[:32]!r} (outputs: {', '.join(self.channels) or 'none'})"
            channel.force(state == "on", seconds)
        _LOG.info("gpio: %s forced %s for %g s by the control socket's principal", name, state, seconds)
        self._publish()
        return f"ok {name} forced {state} for {seconds:g} s"

    def _cmd_release(self, _session: Any, args: str) -> str:
        name = args.strip()
        with self._lock:
            channel = self._channel(name)
            if channel is None:
                return f"error no output {name[:32]!r} (outputs: {', '.join(self.channels) or 'none'})"
            was = channel.release()
        self._publish()
        return f"ok {name} back to its rule" if was else f"ok {name} was not forced"
