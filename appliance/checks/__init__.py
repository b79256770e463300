"""Network self-checks: the public IP address in use, open ports (nmap), and SSH peers comparing the open ports
they see.  :mod:`.scheduler` runs them (``teleinfo check``, the service's schedule, the control socket's
``check now``); results are :class:`~appliance.checks.results.CheckResult` objects, written to InfluxDB as
documented in docs/DATA_FORMAT.md, section 5.
"""
