"""Replies from an InfluxDB server read in bounded memory.

influxdb-client reads every response body whole (``urllib3``'s ``preload_content``): a broken or hostile server
answering a write with a gigabyte of error text would have it all in the appliance's memory.  :func:`bound_replies`
puts a wrapper around the client's connection pool that reads at most :data:`MAX_REPLY` bytes of any body (after
decompression) and drops the connection if there is more; what the client gets is the start of the body, which is
all an error message needs (and :func:`appliance.errors.error_reason` shortens it further, to one printable line).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MAX_REPLY", "bound_replies"]

MAX_REPLY: Final = 64 * 1024


class _Reply:
    """A response whose body was read (bounded) already: what influxdb-client's ``RESTResponse`` reads of it."""

    def __init__(self, response: Any, body: bytes) -> None:
        self._response = response
        self.data = body
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)


class _BoundedPool:
    """A ``urllib3.PoolManager`` whose preloaded bodies stop at ``limit`` bytes."""

    def __init__(self, pool: Any, limit: int) -> None:
        self._pool = pool
        self._limit = limit

    def request(self, method: str, url: str, *args: Any, preload_content: bool = True, **kwargs: Any) -> Any:
        response = self._pool.request(method, url, *args, preload_content=False, **kwargs)
        if not preload_content:
            return response
        try:
            body = response.read(self._limit + 1, decode_content=True)
        except BaseException:
            response.close()
            raise
        if len(body) > self._limit:
            response.close()  # the rest is never read: the connection goes, not back to the pool
            body = body[: self._limit]
        else:
            response.release_conn()
        return _Reply(response, body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def bound_replies(client: Any, limit: int = MAX_REPLY) -> Any:
    """``client`` (an ``InfluxDBClient``) with every reply body read up to ``limit`` bytes; returns it."""
    rest = client.api_client.rest_client
    rest.pool_manager = _BoundedPool(rest.pool_manager, limit)
    return client
