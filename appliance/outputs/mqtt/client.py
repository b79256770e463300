"""paho-mqtt, imported without the modules a plain MQTT connection never uses.

paho imports ``ssl``, ``hashlib``, ``urllib.request`` (hence ``http.client`` and ``email``) and ``uuid`` at import
time, for TLS, websockets, proxies read from the environment and random client ids.  They are about 9 MiB of the
service's resident memory (``ssl`` and ``hashlib`` map OpenSSL), a third of it, for nothing on a Pi that talks
plain MQTT with a client id; ``base64`` (websockets) and ``platform`` (paho asks ``platform.system()`` once, at
import, to know whether it runs on Windows) are another 0.2 MiB.  They are announced lazily first
(:func:`appliance.lazy.defer`), so paho's imports succeed and each module runs on first use: ``tls = true`` loads
``ssl`` when paho builds its context.

paho reads ``ssl.SSLWantReadError`` and ``ssl.SSLWantWriteError`` in ``except`` clauses around every socket
read and write, evaluated whenever a plain socket would block: until ``ssl`` runs, the stand-in answers with
exception classes that nothing raises (no TLS socket can exist before ``ssl`` ran); running ``ssl`` replaces
them with the real ones.
"""

import os

from appliance.lazy import defer


class _NoTlsYet(OSError):
    """Stands in for ssl's "want read/write" errors while ssl has not run: never raised."""


defer("ssl", {"SSLWantReadError": _NoTlsYet, "SSLWantWriteError": _NoTlsYet})
defer("platform", {"system": lambda: os.uname().sysname})  # what platform.system() answers on a POSIX system
for _name in ("hashlib", "urllib.request", "uuid", "base64"):
    defer(_name)

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

__all__ = ["CallbackAPIVersion", "MQTTErrorCode", "MQTTProtocolVersion", "ReasonCode", "mqtt"]
