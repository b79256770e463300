"""Linky TIC telemetry appliance.

Reads the Linky meter's customer information output (TIC, *télé-information client*), decodes it
into typed readings and publishes them.  The pure protocol code lives in :mod:`appliance.tic`.
"""

from appliance.lazy import defer, forward

__version__ = "0.1.0"

# Standard modules that modules we use import but the service never uses: a stand-in runs the real module on
# first use, for whoever does need it (appliance.lazy). About 1.7 MiB resident less for months:
# - inspect (with ast, dis, tokenize): dataclasses runs it only to write a signature into the docstring of a
#   class that has none; every class of ours has one (tests/test_footprint.py checks it);
# - sysconfig: zoneinfo asks it where the zone files are, unless $PYTHONTZPATH says it (the unit sets it);
# - stringprep: the idna codec, which every name lookup of a str host runs, needs it for non-ASCII names only;
# - urllib.parse: pathlib imports it for Path.as_uri() only, paho for websockets and proxies;
# - traceback (with linecache, tokenize and textwrap): logging formats an exception with it, which a healthy
#   service never logs; the first one runs it.
for _name in ("inspect", "sysconfig", "stringprep", "traceback"):
    defer(_name)
defer("urllib.parse", {"quote_from_bytes": forward("urllib.parse", "quote_from_bytes")})
