"""One module per ``teleinfo`` subcommand; see :mod:`appliance.cli`."""
