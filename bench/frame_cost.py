"""Instructions per frame of the decoder and of the reader's path, counted by valgrind (deterministic).

Wall-clock timings on a shared 2-core machine move by tens of percent; callgrind's instruction counts do not, so
a change of a few percent in the decoder's hot path is measured here::

    python bench/frame_cost.py                 # both modes, 2000 simulated frames each
    python bench/frame_cost.py --tree /tmp/old # another checkout's appliance/ (whose Decoder.feed takes the
                                               # reception time, as from this version on)

Two paths are counted, each as (instructions with N frames - instructions with none) / N, after a warm-up run
(compiled modules cached), with the garbage collector off and ``PYTHONHASHSEED=0`` (runs agree within ~0.2%):

- ``decode``: ``Decoder("auto").feed`` over 4 KiB chunks (what bench/decode.py times against the peers);
- ``reader``: one ``Decoder(mode).feed(data, received_at)`` and, per frame, meter attribution and the
  verified-frame rule, as :class:`appliance.reader.FrameReader` does (without its counters' lock);
- ``json``: :meth:`~appliance.tic.Frame.json_bytes` of every decoded frame (the MQTT state message's body, the
  multicast JSON datagram), serialised once per frame;
- ``mqtt``: what the MQTT output does for a frame before paho: ``MqttOutput._plan`` (the energy-index guard,
  Home Assistant's usable labels, the state body);
- ``lines``: the multicast output's line-protocol datagrams of a frame (``MulticastOutput.payloads``).

Only the frames' own work is counted: the decoding of ``json``, ``mqtt`` and ``lines`` is in both runs (N and
0 frames processed), so it cancels out.  What the live service spends beyond these (waking up, reading the port,
the queues, paho and the sockets) is measured by ``bench/footprint.py``'s CPU per thread.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

N = 2000


def _frames(mode: str, path: Path) -> None:
    from appliance.simulator import PARIS, MeterSimulator

    contract = "HCHP" if mode == "historique" else "TEMPO"
    sim = MeterSimulator(start=datetime(2025, 1, 15, tzinfo=PARIS), mode=mode, contract=contract, seed=3)  # type: ignore[arg-type]
    path.write_bytes(b"".join(f.data for _, f in zip(range(N), sim.frames(step=1.0), strict=False)))


def _work(path: str, mode: str, what: str, n: int) -> None:
    """The measured work (run in the child under valgrind)."""
    gc.disable()
    import appliance.reader  # noqa: F401 - imported in both runs, so only the work differs
    from appliance.tic import Decoder

    data = Path(path).read_bytes()
    if what in ("json", "mqtt", "lines"):
        from appliance.outputs.mqtt.config import MqttConfig
        from appliance.outputs.mqtt.output import MqttOutput
        from appliance.outputs.multicast.config import MulticastConfig
        from appliance.outputs.multicast.output import MulticastOutput

        frames = Decoder(mode).feed(data, 1.7e9)  # in both runs: only the stage's work differs
        mqtt = MqttOutput(MqttConfig(enabled=True, client_id="bench"))
        multicast = MulticastOutput(MulticastConfig(interface="127.0.0.1"))
        for frame in frames[:n]:
            if what == "json":
                if hasattr(frame, "json_bytes"):
                    frame.json_bytes()
                else:  # a tree from before Frame.json_bytes (--tree): what its outputs did
                    json.dumps(frame.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
            elif what == "mqtt":
                mqtt._plan(frame)
            else:
                multicast.payloads(frame)
        return
    if not n:
        return
    if what == "decode":
        decoder = Decoder("auto")
        for i in range(0, len(data), 4096):
            decoder.feed(data[i : i + 4096])
        return
    known: str | None = None
    frames = Decoder(mode).feed(data, 1.7e9)
    for i, frame in enumerate(frames):
        meter = frame.meter
        if meter is None:
            if known is not None:
                frames[i] = frame.received(1.7e9, known)
        elif meter != known:
            known = meter
        frames[i].verified  # noqa: B018 - the reader reads it for every frame


def _instructions(tree: Path, args: list[str]) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--child", *args]
    subprocess.run(cmd, env=env, check=True)  # warm-up: .pyc files written
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            env=env,
            check=True,
            capture_output=True,
        )
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert m is not None, "no totals in callgrind's output"
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent, help="checkout to measure")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        path, mode, what, n = args.child
        _work(path, mode, what, int(n))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("historique", "standard"):
            path = Path(tmp) / f"{mode}.bin"
            _frames(mode, path)
            for what in ("decode", "reader", "json", "mqtt", "lines"):
                base = _instructions(args.tree, [str(path), mode, what, "0"])
                total = _instructions(args.tree, [str(path), mode, what, str(N)])
                print(f"{mode:<10} {what:<6} {(total - base) / N:>9,.0f} instructions per frame")


if __name__ == "__main__":
    main()
