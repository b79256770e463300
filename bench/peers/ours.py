"""Our decoder, driven exactly as the appliance drives it: ``Decoder("auto").feed(chunk)`` per chunk read."""

from __future__ import annotations

from typing import Any

from peers import Adapter, Mode

__all__ = ["OursAdapter", "OursNoCacheAdapter"]


class OursAdapter(Adapter):
    """``appliance.tic.Decoder`` in auto mode: framing, per-mode checksum, label validation, typed values."""

    name = "appliance.tic"
    pypi = False
    reference = True
    drives = 'Decoder("auto").feed(chunk) per 4 kB chunk -> Frame (values, timestamps, invalid)'
    cache_size: int | None = None  # None: the decoder's default line cache

    def load(self) -> None:
        from appliance.tic import Decoder

        self._decoder_cls = Decoder

    def prepare(self, chunks: list[bytes], mode: Mode) -> Any:
        kw = {} if self.cache_size is None else {"cache_size": self.cache_size}
        return self._decoder_cls("auto", **kw), chunks

    def run(self, prepared: Any) -> list[Any]:
        decoder, chunks = prepared
        feed = decoder.feed
        frames: list[Any] = []
        extend = frames.extend
        for chunk in chunks:
            extend(feed(chunk))
        return frames

    def to_dicts(self, outputs: list[Any]) -> list[dict[str, Any]]:
        # Horodates live in .timestamps; DATE has no value, only a timestamp.  Both count as delivered values.
        out = []
        for f in outputs:
            d: dict[str, Any] = dict(f.values)
            for label, stamp in f.timestamps.items():
                d.setdefault(label, stamp)
            out.append(d)
        return out


class OursNoCacheAdapter(OursAdapter):
    """The same decoder with its per-line memo effectively off: every group parsed from scratch.

    Informational only (not the appliance's configuration): it shows how much of our speed comes from the
    fact that most groups repeat from frame to frame, which the peers do not exploit.
    """

    name = "appliance.tic (no line cache)"
    reference = False
    drives = 'Decoder("auto", cache_size=0): the per-line memo is cleared before every line'
    cache_size = 0
