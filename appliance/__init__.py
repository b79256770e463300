"""Linky TIC telemetry appliance.

Reads the Linky meter's customer information output (TIC, *télé-information client*), decodes it
into typed readings and publishes them.  The pure protocol code lives in :mod:`appliance.tic`.
"""

__version__ = "0.1.0"
