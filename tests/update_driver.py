"""An installer run in its own process, so a test can kill it with SIGKILL in the middle of an install.

``python -m tests.update_driver ROOT BUNDLE``: installs BUNDLE on the system under ROOT with a service manager that
never sees the service come up (the test kills this process long before the gate's deadline).
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.config import load_config
from appliance.update.control import ServiceState
from appliance.update.guard import Paths
from appliance.update.install import Updater


class NeverUp:
    def reload_units(self) -> None:
        pass

    def restart(self) -> None:
        pass

    def state(self) -> ServiceState:
        return ServiceState(ready=False, failed=False, detail="test: never up")


def main() -> int:
    root, bundle = Path(sys.argv[1]), Path(sys.argv[2])
    paths = Paths(root)
    updater = Updater(paths, load_config(paths.config), NeverUp(), python=sys.executable, say=print)
    updater.install(bundle, source=str(bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
