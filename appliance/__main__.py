"""``python -m appliance`` is the same as the ``teleinfo`` command."""

from appliance.cli import main

raise SystemExit(main())
