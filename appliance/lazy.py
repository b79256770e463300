"""Modules announced but not run until something really uses them: memory for a service that runs for months.

paho-mqtt imports ``ssl``, ``hashlib``, ``urllib.request`` (hence ``http.client`` and ``email``) and ``uuid`` at
import time, for TLS, websockets, proxies from the environment and random client ids.  A Pi that talks plain MQTT
to its broker with a client id uses none of them, yet they cost about 9 MiB of resident memory (``ssl`` and
``hashlib`` map OpenSSL's libraries), a third of the whole service.  :func:`defer` puts a stand-in in
``sys.modules``: ``import ssl`` then succeeds at once and binds the stand-in, and the first attribute looked up
on it (``ssl.create_default_context`` when TLS is configured) imports the real module and copies its namespace
in, so whoever holds the stand-in sees the real module from then on.  Nothing changes for code that uses the
module; code that never touches it never pays for it.

(Not :class:`importlib.util.LazyLoader`: on Python 3.11 a second ``import ssl`` reads the module's ``__spec__``,
which makes a LazyLoader module load at once; the stand-in has its ``__spec__`` from the start.)

:func:`loaded` tells whether a module really ran, for code that only asks "could an object of this module
exist?" (no exception is an ``ssl.SSLError`` if ssl never ran).

>>> defer("no_such_module_anywhere") is None
True
>>> loaded("sys") is sys.modules["sys"]
True
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["defer", "forward", "loaded"]

_LOCK = threading.RLock()


class _Deferred(ModuleType):
    """A module's stand-in: the real module is imported on the first attribute its namespace does not have."""

    def __getattr__(self, attr: str) -> Any:
        spec = self.__spec__
        if attr == "__path__" and spec is not None and spec.submodule_search_locations is None:
            # ``from m import name`` asks whether m is a package first: a plain module is not, and need not run
            raise AttributeError(f"module {self.__name__!r} has no attribute '__path__'")
        real = self._run()
        try:
            return getattr(real, attr)
        except AttributeError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}") from None

    def _run(self) -> ModuleType:
        """The real module, imported now if it has not been (its namespace then copied into the stand-in)."""
        name = self.__name__
        with _LOCK:
            if sys.modules.get(name) is self:
                del sys.modules[name]  # so that importing it now runs the real module
                try:
                    real = __import__(name, fromlist=["_"])
                except BaseException:
                    sys.modules[name] = self
                    raise
                self.__dict__.update(real.__dict__)
                parent, _, child = name.rpartition(".")
                if parent:
                    setattr(sys.modules[parent], child, real)
            return sys.modules[name]


def forward(module: str, attr: str) -> Callable[..., Any]:
    """A placeholder for a function that ``from module import attr`` binds before the module runs: calling it
    runs the module, then its real function (the binding keeps the placeholder, which keeps forwarding)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        stand_in = sys.modules[module]
        real = stand_in._run() if isinstance(stand_in, _Deferred) else stand_in
        return getattr(real, attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    return call


def defer(name: str, placeholders: dict[str, Any] | None = None) -> ModuleType | None:
    """Announce ``name`` in ``sys.modules`` without running it (nothing happens if it is already imported);
    returns the module or its stand-in, or None if there is no such module.  A parent package is imported for
    real (``urllib`` is small) and gets the attribute, as ``import urllib.request`` expects.

    ``placeholders`` are attributes the stand-in has until the module runs, which then replaces them: for names
    that code reads on paths where the module cannot be in use yet (paho evaluates ``except
    ssl.SSLWantReadError`` whenever a plain socket would block; before ssl ran, no exception can be one)."""
    import importlib.util

    with _LOCK:
        existing = sys.modules.get(name)
        if existing is not None:
            return existing
        parent, _, child = name.rpartition(".")
        if parent:
            __import__(parent)
        spec = importlib.util.find_spec(name)
        if spec is None:
            return None
        module = _Deferred(name)
        module.__dict__.update(placeholders or {})
        module.__spec__ = spec
        module.__file__ = spec.origin
        sys.modules[name] = module
        if parent:
            setattr(sys.modules[parent], child, module)
        return module


def loaded(name: str) -> ModuleType | None:
    """``sys.modules[name]`` if that module really ran, else None (never imported, or still deferred)."""
    module = sys.modules.get(name)
    if module is None or isinstance(module, _Deferred):
        return None
    return module
