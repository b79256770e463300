"""The public-IP check against a local HTTP server on 127.0.0.1 that plays the providers (docs/NETWORK.md §7):
a valid address, an HTML page, a private address, 429, a slow answer, a trickled answer, a refused connection."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from appliance.checks.public_ip.check import USER_AGENT, ProviderError, PublicIpChecker, ask_provider
from appliance.checks.public_ip.config import PublicIpCheckConfig
from appliance.checks.results import ERROR, OK

from .util import free_port

HTML = b"<!DOCTYPE html><html><head><title>What is my IP</title></head><body>81.56.1.2</body></html>" * 4


class Providers:
    """One threaded HTTP server whose paths behave like good and bad providers; it counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.agents: list[str] = []
        self.address = "81.56.1.2"
        self.release = threading.Event()  # ends the slow answers at teardown
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                owner.agents.append(self.headers.get("User-Agent", ""))
                if self.path == "/slow":
                    owner.release.wait(5)
                if self.path == "/trickle":
                    self._answer(200, b"", length=12)
                    for byte in b"81.56.1.2\n  ":
                        if owner.release.wait(0.15):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                status, body, headers = {
                    "/valid": (200, f"{owner.address}\n".encode(), {}),
                    "/slow": (200, b"81.56.1.9\n", {}),
                    "/html": (200, HTML, {"Content-Type": "text/html"}),
                    "/private": (200, b"192.168.1.10\n", {}),
                    "/loopback": (200, b"127.0.0.1", {}),
                    "/garbage": (200, b"hello\n", {}),
                    "/429": (429, b"slow down\n", {"Retry-After": "1200"}),
                    "/500": (500, b"oops\n", {}),
                }.get(self.path, (404, b"no\n", {}))
                self._answer(status, body, headers=headers)

            def _answer(
                self, status: int, body: bytes, *, headers: dict[str, str] | None = None, length: int = -1
            ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length < 0 else length))
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up on a slow answer, as it should
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    p.thread.start()
    yield p
    p.release.set()
    p.server.shutdown()
    p.server.server_close()


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/ip"


@pytest.mark.integration
def test_valid_answer_with_our_user_agent(providers: Providers) -> None:
    assert ask_provider(providers.url("/valid"), 2.0) == "81.56.1.2"
    assert providers.agents == [USER_AGENT]
    assert USER_AGENT.startswith("teleinfo-appliance/")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/html", "longer than 256 bytes"),
        ("/private", "192.168.1.10 is not a public address"),
        ("/loopback", "127.0.0.1 is not a public address"),
        ("/garbage", "not an IP address: 'hello'"),
        ("/500", "HTTP 500"),
    ],
)
def test_bad_answers_are_rejected(providers: Providers, path: str, reason: str) -> None:
    with pytest.raises(ProviderError, match=reason):
        ask_provider(providers.url(path), 2.0)


@pytest.mark.integration
def test_429_gives_retry_after(providers: Providers) -> None:
    with pytest.raises(ProviderError, match="429") as info:
        ask_provider(providers.url("/429"), 2.0)
    assert info.value.retry_after == 1200.0


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_slow_and_trickled_answers_time_out(providers: Providers, path: str) -> None:
    start = time.monotonic()
    with pytest.raises(ProviderError, match=r"no answer within 0\.5 s"):
        ask_provider(providers.url(path), 0.5)
    assert time.monotonic() - start < 1.5  # the whole answer has a deadline, not each recv


def test_refused_connection() -> None:
    with pytest.raises(ProviderError, match="connection refused"):
        ask_provider(refused_url(), 1.0)


@pytest.mark.integration
def test_first_valid_provider_wins_and_is_recorded(providers: Providers) -> None:
    bad = [providers.url(p) for p in ("/html", "/private", "/429", "/slow")] + [refused_url()]
    cfg = PublicIpCheckConfig(providers=[*bad, providers.url("/valid")], timeout=0.4)
    (result,) = PublicIpChecker(cfg).run(time.monotonic() + 10)
    assert result.status == OK
    assert result.details["address"] == "81.56.1.2"
    assert result.details["provider"] == providers.url("/valid")
    assert result.fields == {
        "address": "81.56.1.2",
        "version": 4,
        "changed": False,
        "provider": providers.url("/valid"),
        "previous": "",
    }
    # the ones tried before it, in random order, are listed with their reason
    assert {a["provider"] for a in result.details["attempts"]} <= set(bad)


@pytest.mark.integration
def test_every_provider_bad_is_an_error_naming_each_reason(providers: Providers) -> None:
    urls = [providers.url(p) for p in ("/html", "/private", "/slow")] + [refused_url()]
    (result,) = PublicIpChecker(PublicIpCheckConfig(providers=urls, timeout=0.4)).run(time.monotonic() + 10)
    assert result.status == ERROR
    assert result.code == 2
    for reason in ("longer than 256 bytes", "not a public address", "no answer within 0.4 s", "connection refused"):
        assert reason in result.message
    assert result.fields == {}  # no public_ip point without an address


@pytest.mark.integration
def test_429_backs_off_that_provider(providers: Providers) -> None:
    checker = PublicIpChecker(PublicIpCheckConfig(providers=[providers.url("/429")], backoff=60))
    first = checker.run(time.monotonic() + 10)[0]
    second = checker.run(time.monotonic() + 10)[0]
    assert first.status == second.status == ERROR
    assert providers.hits["/429"] == 1  # not asked again while backing off
    assert "backing off after 429" in second.message
    # Retry-After (1200 s) is longer than the configured backoff, so it wins
    assert "(1200 s left)" in second.message or "(1199 s left)" in second.message


@pytest.mark.integration
def test_change_of_address_is_an_event_and_survives_a_restart(providers: Providers, tmp_path: Path) -> None:
    state = tmp_path / "public_ip"
    cfg = PublicIpCheckConfig(providers=[providers.url("/valid")])
    checker = PublicIpChecker(cfg, state)
    assert checker.run(time.monotonic() + 5)[0].details["changed"] is False
    assert state.read_text() == "81.56.1.2\n"

    providers.address = "81.56.1.3"
    restarted = PublicIpChecker(cfg, state)  # a service restart: the last address comes from the state file
    (result,) = restarted.run(time.monotonic() + 5)
    assert result.status == OK
    assert result.fields["changed"] is True
    assert result.fields["previous"] == "81.56.1.2"
    assert "changed from 81.56.1.2" in result.message
    assert state.read_text() == "81.56.1.3\n"

    providers.address = "81.56.1.4"
    one_shot = PublicIpChecker(cfg, state, persist=False)  # teleinfo check: reads the state, never writes it
    assert one_shot.run(time.monotonic() + 5)[0].fields["previous"] == "81.56.1.3"
    assert state.read_text() == "81.56.1.3\n"


@pytest.mark.integration
def test_deadline_stops_asking_further_providers(providers: Providers) -> None:
    cfg = PublicIpCheckConfig(providers=[providers.url("/valid")])
    (result,) = PublicIpChecker(cfg).run(time.monotonic() - 1)
    assert result.status == ERROR
    assert "deadline passed" in result.message
    assert providers.hits["/valid"] == 0


@pytest.mark.parametrize(
    ("providers", "error"),
    [
        ('["ftp://x/ip"]', "must be an http:// or https:// URL"),
        ('["https://"]', "no host name in 'https://'"),
        ('["http://a:99999/ip"]', "invalid URL 'http://a:99999/ip'"),
    ],
)
def test_provider_urls_are_validated(providers: str, error: str) -> None:
    from appliance.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(f"[checks.public_ip]\nproviders = {providers}\n")
    (only,) = info.value.errors
    assert only.startswith("checks.public_ip.providers: ")
    assert error in only
