"""Linky TIC telemetry appliance.

Reads the Linky meter's customer information output (TIC, *télé-information client*), decodes it
into typed readings and publishes them.  The pure protocol code lives in :mod:`appliance.tic`.
"""

from appliance.lazy import defer

__version__ = "0.1.0"

# dataclasses imports inspect (with ast, dis and tokenize: about 0.4 MiB resident) only to write a signature into
# the docstring of a class that has none; every class of ours has one, so the service never needs inspect. The
# stand-in runs the real module on first use, for whoever does need it (appliance.lazy).
defer("inspect")
