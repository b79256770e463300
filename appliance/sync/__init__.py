"""Directory sync to a central server: ``teleinfo sync`` (client, inotify) and ``teleinfo sync-server``.

It carries the raw journal (:mod:`appliance.journal`) off every appliance's SD card to a home server or NAS.
The protocol is specified in ``docs/SYNC.md``; :mod:`~appliance.sync.protocol` holds its framing and path
rules, :mod:`~appliance.sync.server` and :mod:`~appliance.sync.client` the two ends.
"""
