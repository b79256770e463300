"""The two things every long-lived part of the appliance does the same way: back off, and stop its thread.

:class:`Backoff` is the one capped exponential backoff (outputs, the serial port, the sync client, a provider
that answered 429).  :func:`stop_thread` is the one join-with-a-deadline: a thread that does not end in time is
abandoned and said so in the log (gpiozero's "zombie" thread), so a stop never hangs the service, whose systemd
unit promises to stop within seconds.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["Backoff", "stop_thread"]

_LOG = logging.getLogger(__name__)


class Backoff:
    """Capped exponential delays: ``initial``, then doubled after each failure, never above ``maximum``.

    >>> b = Backoff(0.5, 3.0)
    >>> [b.next() for _ in range(5)]
    [0.5, 1.0, 2.0, 3.0, 3.0]
    >>> b.reset(); b.next()
    0.5
    """

    __slots__ = ("_delay", "initial", "maximum")

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._delay = initial

    @property
    def delay(self) -> float:
        """The delay :meth:`next` returns next."""
        return self._delay

    def next(self) -> float:
        """The delay to wait now; the following one is doubled (capped)."""
        delay = self._delay
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self._delay = self.initial


def stop_thread(thread: threading.Thread | None, timeout: float, what: str, logger: logging.Logger = _LOG) -> bool:
    """Join ``thread`` for at most ``timeout`` seconds; True when it ended (or never existed or started).

    A thread still running is abandoned (it must be a daemon) and logged once as an error naming ``what``.
    """
    if thread is None or thread.ident is None:
        return True
    if thread is not threading.current_thread():
        thread.join(timeout)
    if thread.is_alive():
        logger.error("%s did not stop within %.1f s; abandoning its thread", what, timeout)
        return False
    return True
