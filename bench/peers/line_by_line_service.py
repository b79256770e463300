"""The classic "read the meter into InfluxDB" Raspberry Pi script, as a process: the peer of ``bench/latency.py``.

It is :mod:`peers.line_by_line` (the decoder in the style of SebastienReuiller's ``teleinfo.py`` and its forks)
made into the loop such a script runs forever: pyserial ``readline()`` on the port, one group per line, and each
completed frame written at once as one InfluxDB line-protocol point.  Instead of the script's HTTP
``InfluxDBClient.write_points`` (requests, urllib3...), the point goes out as a UDP datagram to a multicast group on
loopback, so ``bench/latency.py`` receives it exactly as it receives the appliance's multicast output.  That
makes the peer lighter than the real script (no HTTP client, no connection), never heavier.

Why a copy of the per-line code rather than an import of :func:`peers.line_by_line.read_frames`:

* ``read_frames`` reads until end of stream and returns a list; a service must publish each frame as it closes;
* importing ``peers`` loads ``importlib.metadata`` (about 2 MB of RSS) for the decode benchmark's adapters, which
  a standalone script would not carry, and RSS is one of the things measured.

So :class:`LineByLine` repeats ``read_frames``'s loop body statement for statement, and ``bench/latency.py``
checks before every run that it gives exactly the frames ``read_frames`` gives on the same bytes, with the same
numeric label lists.  If ``line_by_line.py`` changes, that check fails instead of the comparison drifting.

A frame is closed either where ``read_frames`` closes it (``--close address``: the next ADCO/ADSC line, so a
frame is published once the first group of the next frame has arrived) or where the original script closes it
(``--close etx``: the line that holds ETX).  With ``readline()`` that line ends only at the LF that follows the
next frame's STX, so even then a frame waits for the silence between frames; ``etx`` is the peer's best case.

Network safety: datagrams leave only through a 127.0.0.0/8 address, with TTL 0 by default (never routed off
this host); any other interface is refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["NUMERIC_HISTORIQUE", "NUMERIC_STANDARD", "LineByLine", "control_char", "to_line_protocol"]

Mode = Literal["historique", "standard"]

# The same lists as peers/line_by_line.py (bench/latency.py asserts they are equal).
NUMERIC_HISTORIQUE = frozenset(
    "ISOUSC BASE HCHC HCHP EJPHN EJPHPM BBRHCJB BBRHPJB BBRHCJW BBRHPJW BBRHCJR BBRHPJR PEJP IINST IINST1 IINST2 "
    "IINST3 ADPS ADIR1 ADIR2 ADIR3 IMAX IMAX1 IMAX2 IMAX3 PMAX PAPP".split()
)
NUMERIC_STANDARD = frozenset(
    "EAST EASF01 EASF02 EASF03 EASF04 EASF05 EASF06 EASF07 EASF08 EASF09 EASF10 EASD01 EASD02 EASD03 EASD04 EAIT "
    "ERQ1 ERQ2 ERQ3 ERQ4 IRMS1 IRMS2 IRMS3 URMS1 URMS2 URMS3 PREF PCOUP SINSTS SINSTS1 SINSTS2 SINSTS3 SMAXSN "
    "SMAXSN1 SMAXSN2 SMAXSN3 SMAXSN-1 SMAXSN1-1 SMAXSN2-1 SMAXSN3-1 SINSTI SMAXIN SMAXIN-1 CCASN CCASN-1 CCAIN "
    "CCAIN-1 UMOY1 UMOY2 UMOY3 RELAIS NTARF NJOURF NJOURF+1".split()
)


def control_char(text: str) -> str:
    """The TIC check character of ``text``: low 6 bits of the byte sum, plus 0x20 (as ``line_by_line.py``)."""
    total = 0
    for c in text:
        total += ord(c)
    return chr((total & 0x3F) + 0x20)


class LineByLine:
    """``read_frames``'s loop body, one line at a time: :meth:`feed` returns a frame when a line closes one."""

    def __init__(self, mode: Mode, close: Literal["address", "etx"] = "address") -> None:
        if mode == "historique":
            self.sep, self.first, self.numeric = " ", "ADCO", NUMERIC_HISTORIQUE
        else:
            self.sep, self.first, self.numeric = "\t", "ADSC", NUMERIC_STANDARD
        self.close = close
        self.frame: dict[str, Any] = {}

    def feed(self, raw: bytes) -> dict[str, Any] | None:
        """One ``readline()`` result; the frame it completes, if any."""
        line = raw.decode("ascii", "replace")
        done = self._line(line)
        if self.close == "etx" and "\x03" in line and self.frame:
            done, self.frame = self.frame, {}
        return done

    def _line(self, line: str) -> dict[str, Any] | None:
        sep = self.sep
        done = None
        fields = line.split(sep)
        if len(fields) < 3:  # STX alone on its line, or a group cut by the start of the capture
            return None
        key = fields[0].lstrip("\x02\n")
        control = line.replace("\x03\x02", "")[-3:-2]  # ... chk CR LF: the checksum, even if it is a space
        if sep == " ":
            value = fields[1]
            summed = f"{key} {value}"
        else:  # standard: label HT [horodate HT] data HT chk; the last HT is part of the sum
            value = fields[-2]
            summed = line[: line.rindex("\t") + 1].lstrip("\x02\n")
        if control != control_char(summed):
            return None
        if key == self.first and self.frame and self.close == "address":
            done, self.frame = self.frame, {}
        if key in self.numeric:
            try:
                self.frame[key] = int(value)
            except ValueError:
                return done
        elif key == "DATE":
            self.frame[key] = fields[1]  # the value is the horodate
        else:
            self.frame[key] = value
        return done


def _field(label: str, value: Any) -> str:
    key = label.lower().replace("-", "_").replace("+", "_p")
    if isinstance(value, int):
        return f"{key}={value}i"
    return f'{key}="' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_line_protocol(frame: dict[str, Any], mode: Mode, measurement: str = "teleinfo") -> bytes:
    """The frame as the script would write it: one point, meter address as a tag, the time of reception.

    Field keys follow the appliance's schema (lowercase, ``-`` -> ``_``, ``+`` -> ``_p``) so both services'
    datagrams are matched by the same receiver code.
    """
    frame = dict(frame)
    meter = frame.pop("ADSC" if mode == "standard" else "ADCO", "unknown")
    fields = ",".join(_field(k, v) for k, v in frame.items())
    return f"{measurement},meter={meter},mode={mode} {fields} {time.time_ns()}".encode()


def _loopback(value: str) -> str:
    try:
        if ipaddress.IPv4Address(value).is_loopback:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r}: this benchmark peer only sends through a 127.0.0.0/8 address")


def main(argv: Sequence[str] | None = None) -> int:
    """Read the port forever, publish every frame; stops on SIGTERM (default action), as the script does."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("device", help="serial device (the pty or its symlink)")
    ap.add_argument("--mode", choices=("historique", "standard"), default="standard")
    ap.add_argument("--close", choices=("address", "etx"), default="address", help="where a frame ends")
    ap.add_argument("--group", default="239.255.42.1")
    ap.add_argument("--port", type=int, default=4242)
    ap.add_argument("--interface", type=_loopback, default="127.0.0.1", help="a 127.0.0.0/8 address")
    ap.add_argument("--ttl", type=int, default=0, help="0 (default): datagrams never leave this host")
    ap.add_argument("--mqtt-host", type=_loopback, help="also publish each frame's JSON to this broker (127.0.0.0/8)")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    args = ap.parse_args(argv)

    import serial  # type: ignore[import-untyped, unused-ignore]

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, args.ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.interface))
    dest = (args.group, args.port)

    baud = 9600 if args.mode == "standard" else 1200
    try:  # the TIC's 7E1, as the script opens it; a pty may refuse it (EINVAL): then 8N1, as bytes arrive 7-bit
        ser = serial.Serial(args.device, baud, bytesize=serial.SEVENBITS, parity=serial.PARITY_EVEN, timeout=1)
    except (serial.SerialException, OSError) as e:
        print(f"7E1 refused ({e}); opening 8N1", file=sys.stderr)
        ser = serial.Serial(args.device, baud, timeout=1)

    publish = None
    if args.mqtt_host:  # the scripts' MQTT flavour: paho, loop_start, json.dumps of the frame, QoS 1
        import json

        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="teleinfo-classic")
        client.connect(args.mqtt_host, args.mqtt_port, 60)
        client.loop_start()
        address = "ADSC" if args.mode == "standard" else "ADCO"

        def publish(frame: dict[str, Any]) -> None:
            client.publish(f"teleinfo/{frame.get(address, 'unknown')}", json.dumps(frame), qos=1)

    reader = LineByLine(args.mode, args.close)
    readline, feed = ser.readline, reader.feed
    while True:
        frame = feed(readline())
        if frame is not None:
            sock.sendto(to_line_protocol(frame, args.mode), dest)
            if publish is not None:
                publish(frame)


if __name__ == "__main__":
    raise SystemExit(main())
