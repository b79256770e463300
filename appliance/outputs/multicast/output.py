"""The multicast sender: every frame, in real time, to every listener on the LAN (``docs/DATA_FORMAT.md`` §3).

The JSON parts are :mod:`.parts`, the receiver :mod:`.receiver`, the line-protocol parser
:func:`appliance.lineproto.parse_line`.

Sending (:class:`MulticastOutput`).  One UDP socket with ``IP_MULTICAST_TTL`` (1 by default: the datagrams stay
on the local network), ``IP_MULTICAST_LOOP`` on (a listener on the Pi itself sees the stream too) and
``IP_MULTICAST_IF`` from the configured interface: an IPv4 address, an interface name (``struct ip_mreqn`` with
its index and its own address, so the source address is never 0.0.0.0, which Linux receivers drop as martian),
or ``""`` for the system's multicast route.  Every datagram is at most 1472 bytes (1500-byte MTU minus the IPv4
and UDP headers), so it is never fragmented: one lost fragment would lose the whole datagram.

* ``format = "influx"``: line protocol (:mod:`appliance.lineproto`), one or more complete lines per datagram; a
  frame too long for one line becomes several lines with the same tags and timestamp, which InfluxDB and
  Telegraf merge back into one point.
* ``format = "json"``: the frame's :meth:`~appliance.tic.Frame.to_json` object, compact.  A frame that does not
  fit in one datagram (a three-phase standard frame is about 3.5 kB) is sent as several *parts*, each a complete
  JSON object on its own, so a consumer never has to reassemble bytes:

  - every part has ``mode`` and ``meter``, ``"part": [i, n]`` (1-based) and ``"seq"``, a per-sender counter that
    is the same for all parts of one frame (it tells apart the parts of two consecutive frames when one is lost);
  - every other key of the frame is in exactly one part, except object-valued keys (``values``, ``timestamps``,
    ``units``, ``stge``, ``profiles``...), which are split *by their keys* across consecutive parts;
  - so merging the parts in order ``1..n``, updating object-valued keys key by key, copying every other key and
    dropping ``part`` and ``seq``, gives back the original object exactly, key order included
    (:func:`merge_json_parts`, :class:`JsonReassembler`).

  The only datagram that could exceed 1472 bytes is a part holding a single value longer than that, which TIC
  data never has (its longest value, a day profile, decodes to about 1 kB).

Sending without a thread hand-off.  A datagram leaves with one non-blocking ``sendto``, which never waits: the
output is a :class:`~appliance.outputs.base.DirectOutput`, so while it keeps up the reader sends each frame itself
(:meth:`MulticastOutput.send_now`) the moment the frame is decoded, instead of waking the output's worker thread
and waiting for the interpreter to switch to it (about half of the ETX -> datagram latency on a Pi-class CPU).
Whatever would have to wait (a full socket buffer, a send in progress on the worker's thread, no socket yet) or
fails goes to the worker as before, which waits for room (at most :data:`SEND_TIMEOUT`), reopens and backs off,
away from the reader and the other outputs.

Errors (``ENETUNREACH`` without a multicast route, ``ENODEV`` for a vanished interface, ``EADDRNOTAVAIL`` for an
address that is not on this machine...) are raised as :class:`OSError` with a message naming the group and the
interface; the output worker counts them and, this output being best-effort, drops the frame: a datagram that
could not leave now is worthless later.  After a failed send the socket is closed and the next send opens it
again, so an interface that comes back (with a new index) is picked up without a restart.

Receiving: :func:`open_receiver` (bind to the group, not 0.0.0.0, and join on an explicit interface),
:class:`JsonReassembler` and :func:`parse_line`, used by ``teleinfo listen`` and by the tests.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from typing import Final

from appliance.lineproto import MAX_DATAGRAM, frame_to_lines, pack_datagrams
from appliance.outputs.multicast.addressing import check_group, interface_request
from appliance.outputs.multicast.config import MulticastConfig
from appliance.outputs.multicast.parts import split_json
from appliance.tic import Frame

__all__ = ["SEND_TIMEOUT", "MulticastOutput"]

SEND_TIMEOUT: Final = 2.0  # the worker waits this long at most for room in a full socket buffer


class MulticastOutput:
    """The multicast output (see the module docstring); built from the ``[outputs.multicast]`` section."""

    name = "multicast"
    durable = False

    def __init__(self, cfg: MulticastConfig, *, max_datagram: int = MAX_DATAGRAM) -> None:
        check_group(cfg.group)
        if cfg.format not in ("influx", "json"):
            raise ValueError(f"unknown multicast format {cfg.format!r}")
        self.cfg = cfg
        self.max_datagram = max_datagram  # smaller only in tests, to exercise splitting with small frames
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()  # open/send/close may be called from the worker and from close()

    def _where(self) -> str:
        via = f" via {self.cfg.interface}" if self.cfg.interface else " via the system's multicast route"
        return f"{self.cfg.group}:{self.cfg.port}{via}"

    def open(self) -> None:
        """Create the socket; raise :class:`OSError` if the interface does not exist or has not that address."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        self._close_locked()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.cfg.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            request = interface_request(self.cfg.interface)
            if request is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, request)
            # Non-blocking: send_now() must never wait, and a socket with a timeout polls before every send.
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"multicast {self._where()}: {e.strerror or e}") from e
        self._sock = sock

    def payloads(self, frame: Frame) -> list[bytes]:
        """The datagrams for one frame, each at most ``max_datagram`` bytes (see the module docstring)."""
        if self.cfg.format == "json":
            self._seq = (self._seq + 1) % 2**32
            body = frame.json_bytes()  # shared with the MQTT state, the control socket: serialised once
            if len(body) <= self.max_datagram:
                return [body]
            return split_json(frame.to_json(), self.max_datagram, self._seq)
        if frame.received_at is None:  # the reader stamps every frame; one without (a test) is sent as "now"
            frame = frame.received(time.time(), frame.known_meter)
        lines = frame_to_lines(frame, self.cfg.measurement, self.cfg.precision, max_line=self.max_datagram)
        return pack_datagrams(lines, self.max_datagram)

    def send(self, frame: Frame) -> None:
        """Send the frame's datagrams (the worker's thread: may wait up to :data:`SEND_TIMEOUT` for room in the
        socket buffer); raise :class:`OSError` if one cannot leave."""
        with self._lock:
            sock = self._socket()
            dest = (self.cfg.group, self.cfg.port)
            for payload in self.payloads(frame):
                try:
                    self._send_waiting(sock, payload, dest)
                except OSError as e:
                    raise self._failed(e) from e

    @staticmethod
    def _send_waiting(sock: socket.socket, payload: bytes, dest: tuple[str, int]) -> None:
        """One datagram on the non-blocking socket, waiting at most SEND_TIMEOUT for room in its buffer."""
        deadline = time.monotonic() + SEND_TIMEOUT
        while True:
            try:
                sock.sendto(payload, dest)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [sock], [], left)[1]:
                    raise TimeoutError(errno.ETIMEDOUT, f"socket buffer full for {SEND_TIMEOUT:g} s") from None

    def send_now(self, frame: Frame) -> bool:
        """Send the frame's datagrams now if that needs no wait at all (the reader's thread, :class:`DirectOutput`).

        False, with nothing sent, when it would have to wait or failed at once: a send in progress on the worker's
        thread, no socket (not opened yet, or closed by a failure), a full socket buffer, any error on the first
        datagram; the worker then sends the frame as usual (and meets, reports and backs off from the error).
        Raises :class:`OSError` only when a frame of several datagrams failed after some of them left.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            sock = self._sock
            if sock is None:
                return False
            dest = (self.cfg.group, self.cfg.port)
            for i, payload in enumerate(self.payloads(frame)):
                try:
                    sock.sendto(payload, dest)
                except OSError as e:
                    if i == 0:
                        return False
                    raise self._failed(e) from e
            return True
        finally:
            self._lock.release()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._open_locked()
        assert self._sock is not None
        return self._sock

    def _failed(self, e: OSError) -> OSError:
        """The error to raise for a failed send; the socket is closed, so the next send opens it again (the
        interface may come back with a new index)."""
        self._close_locked()
        return OSError(e.errno, f"multicast send to {self._where()}: {e.strerror or e}")

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
