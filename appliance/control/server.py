"""The control socket: a line protocol to read the appliance's state, watch live frames and act on it.

::

    S: hello principal                   first client; later ones read "hello secondaire"
       (with a token:  S: auth required   C: auth <token>   S: hello principal)
    C: status                            S: {"role":"principal","health":{...},"frames":120,...}   (one line)
    C: watch                             S: ok watching      then one JSON line per frame (Frame.to_json())
    C: unwatch                           S: ok not watching
    C: role                              S: role principal
    C: reload                            S: ok reload requested       (a secondaire: error refused: ...)
    C: help [command]                    S: ok commands: ...
    C: quit                              S: ok bye
    S: role principal                    unsolicited: this client has just been promoted

One command per line (``\\n``, ``\\r\\n`` accepted), one answer line per command; answers start with ``ok``,
``error``, ``hello`` or ``role``, or are one JSON object.  Frames from ``watch`` are JSON objects too, with
``mode`` and ``values``.

Roles: clients are kept in order of arrival (of authentication, with a token).  The first is ``principal`` and
may act; the others are ``secondaire`` and may only read.  When the principal leaves, cleanly, abruptly (RST) or
because it was disconnected for abuse or idleness, the longest-waiting secondaire is promoted and told
``role principal`` at once.  Later issues add principal-only commands with :meth:`ControlServer.register_command`.

The idle rule: a principal that sends no command for ``principal_idle`` seconds (120 by default) while another
client is connected is told ``role secondaire`` and goes to the end of the line, and the longest-waiting client
is promoted (a silent first client can no longer keep the role for ever); any client that neither sends a
command nor reads anything for ``idle_timeout`` seconds (900) is disconnected, like one that leaves.

Bounds: ``max_clients`` authenticated clients (a further one reads an error and is closed) and, apart from them,
``max_unauthenticated`` connections still to authenticate (strangers can never fill the operator's slots; when
that pool is full, the address holding the most gives up its oldest to a newcomer from an address holding
fewer, and one that has not sent its auth line within a second gives its slot to a newcomer from any address),
``max_line_bytes`` per line, ``max_commands_per_second`` per client (a token bucket), a 10 s limit to
authenticate (for the whole exchange, not per read), and a bounded output buffer per client: a watcher that reads
too slowly loses frames (counted), never delays anyone, and a client that stops reading its answers altogether
is disconnected. Like the health socket, everything runs on one ``selectors`` thread
(:class:`appliance.netserver.SelectorServer`, where the bounds live); :meth:`ControlServer.on_frame`, called by
the reader, only appends to a bounded deque and writes one byte to a socketpair, and does nothing at all while
nobody watches.

Token check: ``hmac.compare_digest``; a wrong token is answered only after a delay that doubles with every failure
from the same address (1 s, 2 s, 4 s, 8 s at most: :class:`appliance.netserver.Throttle`), and the next attempt
from that address is not even examined before the delay is over, however many connections it opens; then the
connection is closed.  The status answer is not stripped of the meter address as the health socket's is: a
control client can ``watch`` whole frames anyway, which is why a reachable control socket needs a token.
Credentials written in URLs are redacted from it all the same (:func:`appliance.redaction.redact_tree`).
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from appliance.control.config import ControlConfig
from appliance.health.config import HealthConfig
from appliance.health.state import status_document
from appliance.netserver import Connection, Limits, SelectorServer, Throttle
from appliance.stats import Stats
from appliance.tic import Frame

__all__ = ["Command", "ControlServer", "Session"]

_LOG = logging.getLogger(__name__)

AUTH_TIMEOUT_S: Final = 10.0
AUTH_EVICTABLE_S: Final = 1.0  # with every slot taken, a connection without its auth line by then gives its slot
DRAIN_S: Final = 0.5  # after a last line, let the client finish sending so our close sends FIN, not RST
WATCH_BUFFER: Final = 64 * 1024  # bytes of frames queued per watcher before frames are dropped
OUT_MAX: Final = WATCH_BUFFER + 64 * 1024  # beyond this the client is not reading at all: disconnected
FRAME_BACKLOG: Final = 64  # frames handed over by the reader and not yet serialised
MAX_COMMAND_WORDS: Final = 4
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


@dataclass(eq=False, slots=True)
class Session(Connection):
    """One connected client.  Handlers may read ``role`` (principal, secondaire, or pending before auth),
    ``peer`` (host:port) and ``watching``; the rest belongs to the server."""

    role: str = "pending"
    watching: bool = False
    tokens: float = 0.0
    refilled: float = 0.0
    dropped: int = 0
    quit: bool = False
    spoke: float = 0.0  # last command line (monotonic): the principal's idle rule
    failed: bool = False  # a wrong token: answered when its delay is over


Handler = Callable[[Session, str], str]


@dataclass(frozen=True, slots=True)
class Command:
    """A registered command: ``handler(session, args)`` returns the one answer line (without newline)."""

    name: str
    handler: Handler
    principal_only: bool
    help: str


def _printable(text: str, limit: int = 40) -> str:
    return _UNPRINTABLE.sub("?", text)[:limit]


class ControlServer(SelectorServer[Session]):
    """The control socket of :class:`ControlConfig`.

    ::

        control = ControlServer(cfg.control, stats, reload=service.request_reload, health=cfg.health)
        control.register_command("check now", run_checks, help="run the self-checks now")
        service.add_frame_listener(control.on_frame)
        control.start()       # binds now: a busy port raises OSError here
        ...
        control.stop(1.0)     # True when the thread has ended

    ``health`` only sets how ``status`` judges the state (``down_after``); it defaults to the defaults.
    """

    def __init__(
        self,
        cfg: ControlConfig,
        stats: Stats,
        *,
        reload: Callable[[], None] | None = None,
        health: HealthConfig | None = None,
    ) -> None:
        limits = Limits(
            max_clients=cfg.max_clients,
            max_pending=cfg.max_unauthenticated,
            max_request_bytes=2 * cfg.max_line_bytes,  # before authentication: the auth line (backstop)
            idle_timeout=cfg.idle_timeout,
            max_out_bytes=OUT_MAX,
            drain=DRAIN_S,
        )
        super().__init__("control socket", cfg.bind, cfg.port, limits)
        self.cfg = cfg
        self._stats = stats
        self._reload = reload
        self._health = health or HealthConfig()
        self._token = None if cfg.token is None else cfg.token.get().encode("utf-8")
        self._commands: dict[str, Command] = {}
        self._members: list[Session] = []  # admitted clients in order of arrival: [0] is the principal
        self._watchers = 0  # read by on_frame() in the reader thread: an int read is atomic
        self._frames: collections.deque[Frame] = collections.deque(maxlen=FRAME_BACKLOG)
        self._backlog_dropped = 0  # written by the reader thread only
        self._watch_dropped = 0
        self._published: tuple[int, ...] | None = None
        self.throttle = Throttle(initial=1.0, maximum=8.0)
        self.register_command("help", self._help, principal_only=False, help="help [command]: what each command does")
        self.register_command("role", self._role, principal_only=False, help="your role: principal or secondaire")
        self.register_command("status", self._status, principal_only=False, help="state and every counter, as JSON")
        self.register_command(
            "watch", self._watch, principal_only=False, help="stream every decoded frame as a JSON line"
        )
        self.register_command("unwatch", self._unwatch, principal_only=False, help="stop streaming frames")
        self.register_command("quit", self._quit, principal_only=False, help="close the connection")
        self.register_command(
            "auth", self._auth, principal_only=False, help="auth <token>: the first line when a token is set"
        )
        if reload is not None:
            self.register_command("reload", self._do_reload, help="reload the configuration file")

    # --- public API --------------------------------------------------------------------------------------
    def register_command(self, name: str, handler: Handler, *, principal_only: bool = True, help: str = "") -> None:
        """Add a command (one to four words, matched case-insensitively, longest name first).

        ``handler(session, args)`` runs on the socket's thread and must return quickly with the answer line,
        ``ok ...`` or ``error ...``; anything slow belongs on another thread, the handler only starts it.
        """
        key = " ".join(name.lower().split())
        if not key or key in self._commands or key.count(" ") >= MAX_COMMAND_WORDS:
            raise ValueError(f"invalid or duplicate command name: {name!r}")
        self._commands[key] = Command(key, handler, principal_only, help)

    def on_frame(self, frame: Frame) -> None:
        """Frame listener for :meth:`Service.add_frame_listener`: never blocks, free while nobody watches."""
        if self._watchers <= 0:
            return
        if len(self._frames) == FRAME_BACKLOG:
            self._backlog_dropped += 1
        self._frames.append(frame)
        self.wake()

    def start(self) -> None:
        """Bind and listen (raising OSError at once if that fails), then serve on a daemon thread."""
        super().start()
        assert self.address is not None
        host, port = self.address
        _LOG.info("control socket on %s:%d%s", host, port, " (token required)" if self._token else "")

    # --- SelectorServer hooks ----------------------------------------------------------------------------
    def new_connection(self, sock: socket.socket, peer: str, now: float) -> Session:
        return Session(sock, peer, now, tokens=self.cfg.max_commands_per_second, refilled=now, spoke=now)

    def refusal(self) -> bytes:
        """The pool of connections still to authenticate is full (and fairly shared)."""
        return f"error busy: {self.cfg.max_unauthenticated} connections waiting to authenticate\n".encode()

    def on_accept(self, client: Session) -> None:
        _LOG.debug("control: %s connected", client.peer)
        if self._token is None:
            self._admit(client)
        else:
            client.deadline = client.accepted + AUTH_TIMEOUT_S
            self._send(client, "auth required")

    def on_expire(self, client: Session, now: float) -> None:
        self._disconnect(client, "authentication failed" if client.failed else "authentication timeout")

    def evictable(self, client: Session, now: float) -> bool:
        """A connection that has not sent its auth line within a second: a program sends it at once (a person
        typing it by hand can lose the race, only while the slots are all taken)."""
        return client.role == "pending" and not client.failed and now - client.accepted >= AUTH_EVICTABLE_S

    def on_evict(self, client: Session) -> None:
        self._disconnect(client, "busy: too many connections waiting to authenticate")

    def on_idle(self, client: Session) -> None:
        self._disconnect(client, f"idle for {self.cfg.idle_timeout:g} s")

    def on_too_large(self, client: Session) -> None:
        self._disconnect(client, f"line too long (max {self.cfg.max_line_bytes} bytes)")

    def on_close(self, client: Session) -> None:
        self._leave(client)
        _LOG.debug("control: %s left", client.peer)

    def on_tick(self, now: float) -> None:
        self._distribute()
        self._demote_idle_principal(now)
        self._close_idle(now)
        self._publish()

    def _close_idle(self, now: float) -> None:
        """Clients that sent no command for ``idle_timeout`` (watchers aside: the selector server closes those
        that stop reading, its own idle timeout counting what it sends them)."""
        limit = self.cfg.idle_timeout
        for client in [c for c in self._members if not c.watching and now - c.spoke >= limit]:
            self.on_idle(client)

    def _demote_idle_principal(self, now: float) -> None:
        """The idle rule (module docstring): a silent principal gives the role to the longest-waiting client."""
        if len(self._members) < 2:
            return
        principal = self._members[0]
        if now - principal.spoke < self.cfg.principal_idle:
            return
        self._members.append(self._members.pop(0))
        principal.role = "secondaire"
        _LOG.info("control: %s silent for %.0f s: no longer principal", principal.peer, now - principal.spoke)
        self._send(principal, "role secondaire")
        heir = self._members[0]
        heir.role = "principal"
        heir.spoke = now  # its own silence counts from its promotion
        _LOG.info("control: %s is now principal", heir.peer)
        self._send(heir, "role principal")

    def _distribute(self) -> None:
        """Serialise the frames the reader handed over, once each, into every watcher's buffer."""
        while self._frames:
            frame = self._frames.popleft()
            watchers = [c for c in self._members if c.watching]
            if not watchers:
                continue
            line = (json.dumps(frame.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            for client in watchers:
                if len(client.outbuf) + len(line) > WATCH_BUFFER:
                    client.dropped += 1
                    self._watch_dropped += 1
                    continue
                self.send(client, line)

    def _publish(self) -> None:
        """Put the socket's own counters in the snapshot (health /status, teleinfo status), on change only."""
        current = (
            self.client_count,
            self._watchers,
            self._watch_dropped + self._backlog_dropped,
            self.throttle.failures,
            self.refused + self.evicted,
        )
        if current != self._published:
            self._published = current
            clients, watchers, dropped, failures, refused = current
            section: dict[str, int] = {"clients": clients, "watchers": watchers, "frames_dropped": dropped}
            if failures or refused:  # counters of abuse appear once there is some
                section.update(auth_failures=failures, refused=refused)
            self._stats.set_extra("control", section)

    # --- one client --------------------------------------------------------------------------------------
    def on_data(self, client: Session, eof: bool) -> None:
        if eof:
            self.close(client)
            return
        if client.failed:  # the delay of a wrong token is over
            self._disconnect(client, "authentication failed")
            return
        limit = self.cfg.max_line_bytes
        while not client.closing:
            end = client.inbuf.find(b"\n")
            if end > limit or (end < 0 and len(client.inbuf) > limit):
                self._disconnect(client, f"line too long (max {limit} bytes)")
            if end < 0 or client.closing:
                break
            line = bytes(client.inbuf[:end])
            if client.role == "pending" and self._wait_for_throttle(client):
                break  # the line stays in inbuf: on_data runs again when the hold ends
            del client.inbuf[: end + 1]
            self._line(client, line)
            if client.held_until is not None:
                break

    def _line(self, client: Session, raw: bytes) -> None:
        now = time.monotonic()
        rate = self.cfg.max_commands_per_second
        client.tokens = min(rate, client.tokens + (now - client.refilled) * rate)
        client.refilled = now
        if client.tokens < 1:
            self._disconnect(client, f"too many commands (max {rate} per second)")
            return
        client.tokens -= 1
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        client.spoke = now
        if client.role == "pending":
            word, _, token = text.partition(" ")
            assert self._token is not None
            if word.lower() != "auth":
                self._disconnect(client, "auth required")
            elif hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._token):
                self.throttle.succeeded(client.source)
                self._admit(client)
            else:
                delay = self.throttle.failed(client.source, now)
                _LOG.warning("control: wrong token from %s (answered in %.0f s)", client.source, delay)
                client.failed = True
                self.hold(client, now + delay)
            return
        command, args = self._lookup(text)
        if command is None:
            answer = f"error unknown command '{_printable(text)}' (try help)"
        elif command.principal_only and client.role != "principal":
            answer = f"error refused: '{command.name}' is for the principal; you are {client.role}"
        else:
            try:
                answer = command.handler(client, args)
            except Exception as e:
                _LOG.exception("control: command %r failed", command.name)
                answer = f"error {command.name} failed: {type(e).__name__}"
        self._send(client, answer)
        if client.quit:
            self._disconnect(client, None)

    def _lookup(self, text: str) -> tuple[Command | None, str]:
        words = text.split()
        for n in range(min(len(words), MAX_COMMAND_WORDS), 0, -1):
            command = self._commands.get(" ".join(words[:n]).lower())
            if command is not None:
                parts = text.split(None, n)
                return command, parts[n] if len(parts) > n else ""
        return None, ""

    def _wait_for_throttle(self, client: Session) -> bool:
        """True when ``client``'s address must wait before its next attempt is examined (then it is held)."""
        now = time.monotonic()
        wait = self.throttle.wait(client.source, now)
        if wait <= 0:
            return False
        self.hold(client, now + wait)
        return True

    def _admit(self, client: Session) -> None:
        if not self.admit(client):
            self._disconnect(client, f"too many clients (max {self.cfg.max_clients})")
            return
        self._members.append(client)
        client.role = "principal" if self._members[0] is client else "secondaire"
        self._send(client, f"hello {client.role}")

    def _leave(self, client: Session) -> None:
        """``client`` no longer counts: stop its watch, and promote the next client if it was the principal."""
        if client.watching:
            client.watching = False
            self._watchers -= 1
        if client not in self._members:
            return
        was_principal = self._members[0] is client
        self._members.remove(client)
        if was_principal and self._members:
            heir = self._members[0]
            heir.role = "principal"
            heir.spoke = time.monotonic()  # its own silence counts from its promotion
            _LOG.info("control: %s is now principal", heir.peer)
            self._send(heir, "role principal")

    def _send(self, client: Session, line: str) -> None:
        self.send(client, (line + "\n").encode("utf-8"))

    def _disconnect(self, client: Session, reason: str | None) -> None:
        """Send ``error <reason>`` (if any), leave at once, close once the line is out (or after DRAIN_S)."""
        if reason is not None:
            _LOG.debug("control: disconnecting %s: %s", client.peer, reason)
            if not self.send(client, f"error {reason}\n".encode()):
                return
        self._leave(client)
        self.finish(client)

    # --- built-in commands -------------------------------------------------------------------------------
    def _help(self, _client: Session, args: str) -> str:
        wanted = " ".join(args.lower().split())
        if wanted:
            command = self._commands.get(wanted)
            if command is None:
                return f"error no command '{_printable(wanted)}'"
            return f"ok {command.name}: {command.help}" + (" (principal only)" if command.principal_only else "")
        commands = sorted(self._commands.values(), key=lambda c: c.name)
        everyone = ", ".join(c.name for c in commands if not c.principal_only)
        principal = ", ".join(c.name for c in commands if c.principal_only) or "none"
        return f"ok commands: {everyone}; principal only: {principal} (help <command> for details)"

    def _role(self, client: Session, _args: str) -> str:
        return f"role {client.role}"

    def _status(self, client: Session, _args: str) -> str:
        doc = {"role": client.role, **status_document(self._stats.snapshot(), self._health, redact=False)}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    def _watch(self, client: Session, _args: str) -> str:
        if not client.watching:
            client.watching = True
            self._watchers += 1
        return "ok watching"

    def _unwatch(self, client: Session, _args: str) -> str:
        if client.watching:
            client.watching = False
            self._watchers -= 1
        return "ok not watching"

    def _quit(self, client: Session, _args: str) -> str:
        client.quit = True
        return "ok bye"

    def _auth(self, _client: Session, _args: str) -> str:
        return "ok already authenticated"

    def _do_reload(self, client: Session, _args: str) -> str:
        assert self._reload is not None
        self._reload()
        _LOG.info("control: reload requested by %s", client.peer)
        return "ok reload requested"
