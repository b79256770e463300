"""Hostile clients for the load tests, in a process of their own: ``python -m tests.loadgen SPEC.json``.

SPEC is ``{"seconds": 60, "sources": ["127.0.0.2", ...], "targets": [{"name", "port", "clients", "drip",
"guess"}, ...]}``.  For every target, ``clients`` hostile clients run at once (asyncio, one event loop, so
thousands cost little), spread over the source addresses (another loopback address is another machine for the
server) and over four kinds, a quarter each:

- ``idle``: connects and says nothing, until the server closes (then again);
- ``drip``: sends the target's plausible request prefix (``drip``) one byte every one to three seconds, never
  finishing it, until the server closes;
- ``garbage``: sends 1 to 4,000 random bytes, or a wrong credential line (``guess``, with ``{n}`` numbered),
  reads what comes back, closes;
- ``reconnect``: connects and leaves at once, half of the time abruptly (RST).

Each client starts again 0.5 to 2 s after its connection ends, so the rate of new connections stays bounded
(a few hundred a second per target) while ``clients`` connections are open or about to be, for ``seconds``.  On
exit it prints one JSON line of counts per target (connections opened, refused at connect, bytes sent).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

KINDS = ("idle", "drip", "garbage", "reconnect")
PAUSE = (0.5, 2.0)  # seconds before a client connects again
HOLD_MAX = 30.0  # an idle or dripping client gives up after this long even if the server never closes


@dataclass
class Counts:
    opened: int = 0
    failed: int = 0
    sent: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


async def _read_until_closed(reader: asyncio.StreamReader, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        try:
            if not await asyncio.wait_for(reader.read(4096), left):
                return
        except TimeoutError:
            return


async def client(target: dict[str, Any], kind: str, source: str, stop_at: float, counts: Counts) -> None:
    rng = random.Random()
    drip: bytes = target["drip"].encode()
    n = 0
    await asyncio.sleep(rng.uniform(0, 3))  # a ramp, not a thundering herd at t=0
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", target["port"], local_addr=(source, 0)), 5
            )
        except (OSError, TimeoutError):
            counts.failed += 1
            await asyncio.sleep(rng.uniform(*PAUSE))
            continue
        counts.opened += 1
        counts.by_kind[kind] += 1
        try:
            hold = min(HOLD_MAX, stop_at - time.monotonic())
            if kind == "idle":
                await _read_until_closed(reader, hold)
            elif kind == "drip":
                end = time.monotonic() + hold
                i = 0
                while time.monotonic() < end:
                    writer.write(drip[i : i + 1] if i < len(drip) else b"x")
                    counts.sent += 1
                    i += 1
                    await writer.drain()
                    try:
                        if not await asyncio.wait_for(reader.read(4096), rng.uniform(1, 3)):
                            break
                    except TimeoutError:
                        continue
            elif kind == "garbage":
                n += 1
                data = (
                    target["guess"].replace("{n}", str(n)).encode()
                    if target.get("guess") and n % 2
                    else rng.randbytes(rng.randrange(1, 4000))
                )
                writer.write(data)
                counts.sent += len(data)
                await writer.drain()
                await _read_until_closed(reader, min(hold, 12.0))
            elif rng.random() < 0.5:  # reconnect: leave at once, abruptly
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1)
            except (OSError, TimeoutError):
                pass
        await asyncio.sleep(rng.uniform(*PAUSE))


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    stop_at = time.monotonic() + spec["seconds"]
    sources = spec["sources"]
    counts = {t["name"]: Counts() for t in spec["targets"]}
    tasks = [
        asyncio.create_task(client(t, KINDS[i % 4], sources[i % len(sources)], stop_at, counts[t["name"]]))
        for t in spec["targets"]
        for i in range(t["clients"])
    ]
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
    return {name: c.__dict__ for name, c in counts.items()}


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets at once
    with open(sys.argv[1], encoding="utf-8") as f:
        result = asyncio.run(main(json.load(f)))
    print(json.dumps(result), flush=True)
