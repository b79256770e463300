"""The reader's bookkeeping: from a source's bytes to frames ready for the fan-out.

What happens to every chunk the source returns, in the reader thread, before anything is handed out:

- decoding (:class:`~appliance.tic.Decoder`), each frame stamped with the chunk's reception time (the same time
  the journal records, so ``teleinfo replay`` gives the same points);
- meter attribution: a frame that names its meter sets the known meter (shown in ``/status`` only when
  ``health.expose_meter``); a frame that does not (standard mode's short frames, a corrupted ADCO) is attributed
  to the last meter seen, never to none when one is known (:meth:`~appliance.tic.Frame.received`);
- frame accounting: only a frame that verifies counts as a frame (and as fresh data for health); the others are
  ``bad_frames``, so a line of garbage never keeps the appliance "up";
- reject accounting: the decoder's per-reason counts, added to :class:`~appliance.stats.Stats` as deltas once per
  change (its ``epoch``), so reading them costs nothing while nothing is rejected;
- the source told which frames verified (``frame_ok``/``frame_bad``): its only honest measure of progress.

The service only wires: it journals the chunk, calls :meth:`FrameReader.feed` and hands each frame to the
fan-out and the frame listeners.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from appliance.tic import Decoder, Frame, RejectReason

if TYPE_CHECKING:
    from appliance.sources import Source
    from appliance.stats import Stats

__all__ = ["FrameReader"]


class FrameReader:
    """Decodes one source's chunks into stamped, attributed frames, and keeps the counters.

    >>> from appliance.stats import Stats
    >>> from appliance.tic import encode_frame, encode_group
    >>> class Quiet:
    ...     def frame_ok(self, mode): pass
    ...     def frame_bad(self): pass
    >>> reader = FrameReader(Quiet(), "historique", Stats())
    >>> groups = [("ADCO", "012345678901"), ("PAPP", "00420")]
    >>> data = encode_frame([encode_group("historique", label, value) for label, value in groups])
    >>> [(f.meter, f.values["PAPP"], f.received_at) for f in reader.feed(data, 1700000000.0)]
    [('012345678901', 420, 1700000000.0)]
    """

    def __init__(self, source: Source, mode: str, stats: Stats) -> None:
        self.source = source
        self.decoder = Decoder(mode)
        self._stats = stats
        self._known_meter: str | None = None
        self._last_rejects: Counter[RejectReason] = Counter()  # the decoder's counts already added to stats
        self._reject_epoch = self.decoder.epoch

    @property
    def known_meter(self) -> str | None:
        """The last meter address a frame named."""
        return self._known_meter

    def feed(self, data: bytes, now: float) -> list[Frame]:
        """The frames completed by ``data`` (received at ``now``, wall clock), counted and reported."""
        frames = self.decoder.feed(data, now)  # stamped as they are built: no copy on the common path
        for i, frame in enumerate(frames):
            meter = frame.meter
            if meter is None:
                if self._known_meter is not None:  # rare (a corrupted address group): attributed, a new frame
                    frame = frames[i] = frame.received(now, self._known_meter)
            elif meter != self._known_meter:
                self._known_meter = meter
                self._stats.set_meter(meter)
            verified = frame.verified
            if verified:
                self.source.frame_ok(frame.mode)
            else:
                self.source.frame_bad()
            self._stats.frame(len(frame.values) + len(frame.timestamps), verified=verified)
        epoch = self.decoder.epoch
        if epoch != self._reject_epoch:
            self._reject_epoch = epoch
            rejects = self.decoder.rejects
            delta = rejects - self._last_rejects
            if delta:
                self._stats.rejected(delta)
            self._last_rejects = rejects
        return frames
