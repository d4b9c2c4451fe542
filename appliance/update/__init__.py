"""Signed software updates of the box: bundles, two application slots, switch-back.

An update bundle (``*.nbu``, :mod:`appliance.update.bundle`) carries the
wheels and reader firmware of one Nightbox version, signed with the fleet's
Ed25519 update key (:mod:`appliance.update.keys`). The updater
(:mod:`appliance.update.updater`) installs it into the inactive one of two
application slots (:mod:`appliance.update.slots`), switches the ``current``
link, restarts the box and keeps the new slot only when the box comes back
healthy on the bus (:mod:`appliance.update.health`). The signed fleet
command ``update`` (:mod:`appliance.update.command`) queues a bundle for the
updater.
"""
