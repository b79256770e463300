"""Where the meter's bytes come from.

A source hands raw bytes to the service's reader loop and keeps itself alive: it never raises for I/O problems,
it reopens what was lost, and it returns from every ``read()`` within about 0.25 s so the loop can keep pinging
systemd, reloading and stopping.  The service tells it which frames verified (``frame_ok``/``frame_bad``), which
is the only honest measure of progress: a port that delivers garbage is as dead as a silent one (docs/PROTOCOL.md
§10.8).

Each source lives in its own module and is imported only when configured (``appliance.service.build_source``), so
the simulator never loads pyserial and a serial appliance never loads the simulator.
"""
