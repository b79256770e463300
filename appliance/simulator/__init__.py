"""A simulated Linky meter: realistic TIC frames for tests, demos and ``teleinfo run --simulate``.

:mod:`~appliance.simulator.model` is pure (bytes and expected readings, time is an argument), built from
:mod:`~appliance.simulator.load` (the household), :mod:`~appliance.simulator.tariffs` (the contracts' calendars)
and :mod:`~appliance.simulator.groups` (what each frame holds); :mod:`~appliance.simulator.injection` damages
frames on demand; :mod:`~appliance.simulator.output` puts frames on a wire or serves them in-process at the real
baud rate.

>>> from datetime import datetime
>>> from appliance.tic import Decoder
>>> sim = MeterSimulator(mode="standard", contract="TEMPO", start=datetime(2024, 1, 15, 8, tzinfo=PARIS))
>>> frame = next(sim.frames())
>>> [f.values == frame.values for f in Decoder("standard").feed(frame.data)]
[True]
"""

from appliance.simulator.injection import ErrorInjector, Injection
from appliance.simulator.load import LoadEvent
from appliance.simulator.model import BAUDRATES, MeterSimulator, SimFrame
from appliance.simulator.output import Chunk, Output, SimulatedStream, chunks, open_output, write_frames
from appliance.simulator.seeded import PARIS
from appliance.simulator.tariffs import CONTRACTS, Period

__all__ = [
    "BAUDRATES",
    "CONTRACTS",
    "PARIS",
    "Chunk",
    "ErrorInjector",
    "Injection",
    "LoadEvent",
    "MeterSimulator",
    "Output",
    "Period",
    "SimFrame",
    "SimulatedStream",
    "chunks",
    "open_output",
    "write_frames",
]
