"""Signed update bundles, installed atomically beside the running release, kept only if the service comes back
healthy, rolled back otherwise (``docs/UPDATES.md``).

Modules:

* :mod:`~appliance.update.guard`: the release layout, the transaction file and the boot/start guard.  Standard
  library only: the image also installs it as ``/usr/lib/teleinfo/update-guard``, which systemd runs before every
  start of the service, from outside any release (a broken release cannot break its own rollback).
* :mod:`~appliance.update.bundle`: the bundle format (a tar of wheels, units and firmware block, a manifest with
  every file's SHA-256, signed with Ed25519), verified while it streams; the release side builds and signs it.
* :mod:`~appliance.update.fetch`: where bundles come from (a file, the boot partition, a URL).
* :mod:`~appliance.update.install`: the install transaction and its health gate.
* :mod:`~appliance.update.config`: the ``[update]`` section of the configuration (part of :mod:`appliance.schema`).
"""
