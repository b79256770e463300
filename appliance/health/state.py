"""The health state, computed from a :class:`~appliance.stats.StatsSnapshot`: pure, no I/O, no clock of its own.

Rules (the same words go to the health socket, ``teleinfo status`` and the control socket):

=======================================  ===============================================  ========  ====
situation                                agent line                                       HTTP      exit
=======================================  ===============================================  ========  ====
no valid frame for ``down_after`` s      ``down 0% #no TIC frame for 63s``                503       2
no frame yet, within ``down_after``      ``up ready 100% #starting: no frame yet``        200       0
the adapter is missing or unplugged      ``down 0% #no meter: cannot open /dev/ttyS1``    503       2
frames flow, every output failing        ``drain 0% #all outputs failing: mqtt``          503       1
frames flow, every output stopped        ``drain 0% #all outputs stopped: mqtt``          503       1
frames flow, an output failing/stopped   ``up ready 50% #degraded: mqtt failing ...``     200       1
frames flow, the journal cannot write    ``up ready 50% #degraded: journal: no space...`` 200       1
frames flow, everything does its job     ``up ready 100% #ok frames=120 age=1.2s``        200       0
=======================================  ===============================================  ========  ====

*Down* means "no meter data" and *drain* "alive, but nothing delivers the data"; both make HAProxy's tcp-check and
httpchk mark the server down, while agent-check shows DOWN or DRAIN.  One failing output among several halves the
weight (a fixed 50%, not a proportion, so an alert threshold never depends on how many outputs are configured).
An output that is ``starting`` is not failing: a broker that is still being dialled is not an incident yet.  An
output that is ``stopped`` while the service runs has a dead worker (a removed output leaves the counters
altogether): degraded, named in the line.  The journal (``sections["journal"]``, when it is enabled) is degraded
while its ``last_error`` is set: chunks wait in memory, bounded, and are lost if it lasts.

Only a *valid* frame is a frame (:attr:`Frame.verified`, counted by :meth:`Stats.frame`): a line of garbage between
STX and ETX is counted in ``bad_frames`` and never makes the data look fresh.
Without any output, flowing data is enough for ``up``.  While no frame has come yet, the service's uptime stands
for the frame age, so a meter that never speaks is reported down ``down_after`` seconds after the start, and a
normal start is not.

Every line starts with the state word and carries a percentage (docs/NETWORK.md §2.2 rules 1 and 2): HAProxy keeps the
last weight it was given, and ``tcp-check expect rstring ^up`` / ``check_tcp -e "up ready"`` look at the start.
The ``#`` text is short, printable ASCII.

Personal data (the meter address, the PRM) never leaves through these answers unless ``expose_meter`` is set:
:func:`public_snapshot` drops any key that names them and masks any 12 to 14-digit number in a string (ADCO/ADSC
are 12 digits, the PRM 14), so an error message quoting an MQTT topic cannot leak it either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from appliance import __version__
from appliance.health.config import HealthConfig
from appliance.redaction import redact_tree
from appliance.stats import StatsSnapshot

__all__ = ["HealthState", "evaluate", "health_counters", "public_snapshot", "status_document", "summary"]

DEGRADED_WEIGHT: Final = 50
MAX_COMMENT: Final = 100  # characters of the '#' text; HAProxy logs it, monitors show it

_PERSONAL_KEYS: Final = frozenset({"meter", "prm", "adco", "adsc"})
_METER_NUMBER: Final = re.compile(r"(?<!\d)\d{12,14}(?!\d)")
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class HealthState:
    """One evaluation: the state word, the agent weight (percent), the agent line and the HTTP status."""

    state: Literal["up", "drain", "down"]
    weight: int
    line: str
    http_status: int

    @property
    def degraded(self) -> bool:
        """Up but not fully (reduced weight), or draining: a warning, not an outage."""
        return self.state == "drain" or (self.state == "up" and self.weight < 100)


def evaluate(snapshot: StatsSnapshot, cfg: HealthConfig) -> HealthState:
    """The health state of ``snapshot`` under the documented rules.

    >>> from appliance.health.config import HealthConfig
    >>> evaluate(StatsSnapshot(uptime_s=5, frames=3, last_frame_age_s=1.2), HealthConfig()).line
    'up ready 100% #ok frames=3 age=1.2s'
    """
    frames = snapshot.frames
    age = snapshot.last_frame_age_s
    meter = snapshot.meter if cfg.expose_meter else None
    who = f"meter={meter} " if meter else ""
    if snapshot.source.state == "lost":  # the adapter is not there: nothing will come until it is, say why now
        return _state("down", 0, f"{who}no meter: {snapshot.source.detail or 'serial port lost'}", cfg)
    if age is None:
        uptime = snapshot.uptime_s
        if uptime > cfg.down_after:
            return _state("down", 0, f"{who}no TIC frame since start {uptime:.0f}s ago", cfg)
        return _state("up", 100, f"{who}starting: no frame yet", cfg)
    if age > cfg.down_after:
        return _state("down", 0, f"{who}no TIC frame for {age:.0f}s", cfg)
    outputs = snapshot.outputs
    active = [name for name, o in outputs.items() if o.state != "stopped"]
    stopped = sorted(name for name, o in outputs.items() if o.state == "stopped")
    failing = sorted(name for name in active if outputs[name].state == "failing")
    journal = _journal_problem(snapshot)
    flow = f"frames={frames} age={age:.1f}s"
    also = f"; journal: {journal}" if journal else ""
    if failing and len(failing) == len(active):
        return _state("drain", 0, f"{who}all outputs failing: {','.join(failing)}{also}", cfg)
    if stopped and not active:
        return _state("drain", 0, f"{who}all outputs stopped: {','.join(stopped)}{also}", cfg)
    problems = [f"{','.join(failing)} failing"] if failing else []
    problems += [f"{','.join(stopped)} stopped"] if stopped else []
    problems += [f"journal: {journal}"] if journal else []
    if problems:
        return _state("up", DEGRADED_WEIGHT, f"{who}degraded: {', '.join(problems)}, {flow}", cfg)
    return _state("up", 100, f"{who}ok {flow}", cfg)


_ERRNO_PREFIX: Final = re.compile(r"^\[Errno \d+\] ")


def _journal_problem(snapshot: StatsSnapshot) -> str | None:
    """Why the journal cannot write (its ``last_error``, shortened: "no space left on device"), or None."""
    journal = snapshot.sections.get("journal")
    error = journal.get("last_error") if isinstance(journal, dict) else None
    if not error:
        return None
    reason = _ERRNO_PREFIX.sub("", str(error)).split(": '")[0].split(":")[0].strip() or "cannot write"
    return reason[:1].lower() + reason[1:]


def _state(state: Literal["up", "drain", "down"], weight: int, comment: str, cfg: HealthConfig) -> HealthState:
    comment = _UNPRINTABLE.sub("?", comment)
    if not cfg.expose_meter:
        comment = _METER_NUMBER.sub("***", comment)
    words = {"up": "up ready", "drain": "drain", "down": "down"}[state]
    line = f"{words} {weight}% #{comment[:MAX_COMMENT]}"
    return HealthState(state, weight, line, 200 if state == "up" else 503)


def public_snapshot(snapshot: StatsSnapshot, cfg: HealthConfig) -> dict[str, Any]:
    """``snapshot``'s JSON as the health socket may show it: personal data removed unless ``expose_meter``."""
    if cfg.expose_meter:
        return snapshot.to_json()
    cleaned = _redact(snapshot.to_json())
    assert isinstance(cleaned, dict)
    return cleaned


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items() if str(k).lower() not in _PERSONAL_KEYS}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _METER_NUMBER.sub("***", value)
    return value


def status_document(
    snapshot: StatsSnapshot, cfg: HealthConfig, *, redact: bool = True, detail: bool = True
) -> dict[str, Any]:
    """The ``GET /status`` document: the health verdict, then every counter of the snapshot (``detail``) or only
    those health needs (:func:`health_counters`: what a stranger on the LAN may read).

    ``redact=False`` is for the control socket, whose clients already see whole frames with ``watch``.
    Credentials written in URLs are removed in every case (:func:`appliance.redaction.redact_tree`).
    """
    state = evaluate(snapshot, cfg)
    if not detail:
        counters = health_counters(snapshot)
    else:
        counters = redact_tree(public_snapshot(snapshot, cfg) if redact else snapshot.to_json())
    doc: dict[str, Any] = {
        "health": {
            "state": state.state,
            "weight": state.weight,
            "degraded": state.degraded,
            "line": state.line,
            "down_after_s": cfg.down_after,
        },
    }
    if detail:
        doc["version"] = __version__
    doc.update((k, v) for k, v in counters.items() if k not in doc)
    return doc


def health_counters(snapshot: StatsSnapshot) -> dict[str, Any]:
    """What health needs, and nothing a stranger could use: frame counts and age, the source's mode and state,
    each output's state and the journal's; no error text, no address, no self-check result, no meter."""
    doc: dict[str, Any] = {
        "uptime_s": snapshot.uptime_s,
        "frames": snapshot.frames,
        "rejects": dict(snapshot.rejects),
        "last_frame_age_s": snapshot.last_frame_age_s,
        "source": {"state": snapshot.source.state, "mode": snapshot.source.mode},
        "outputs": {name: {"state": o.state} for name, o in snapshot.outputs.items()},
    }
    journal = snapshot.sections.get("journal")
    if isinstance(journal, dict):
        doc["journal"] = {"state": "failing" if journal.get("last_error") else "ok"}
    return doc


def summary(snapshot: StatsSnapshot) -> str:
    """One line for people (systemd's status text, the service's last log line): source, frames decoded (valid or
    not: ``bad_frames`` included, with the rejected groups next to them), outputs.

    >>> summary(StatsSnapshot(frames=12, rejects={"checksum": 1}, last_frame_age_s=0.4))
    'starting; 12 frames, 1 rejected, last 0 s ago; no outputs'
    """
    outs = ", ".join(f"{n} {o.state}" for n, o in snapshot.outputs.items()) or "no outputs"
    age = snapshot.last_frame_age_s
    return (
        f"{snapshot.source.state} {snapshot.source.mode or ''}".strip()
        + f"; {snapshot.frames + snapshot.bad_frames} frames, {sum(snapshot.rejects.values())} rejected"
        + ("" if age is None else f", last {age:.0f} s ago")
        + f"; {outs}"
    )
