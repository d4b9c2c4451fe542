"""The first-boot setup wizard, local to the box: it writes the site file.

``SetupApp(config_path).run()`` requests the site, network, time, admin
PIN, readers, wristband formats, kit stock and wallet limits, then writes
the site file and the box's secrets. It returns True when setup finished
and False when the organiser quit; progress is kept in ``<config_path>.setup.json``.
"""

from tui.setup._app import SetupApp
from tui.setup._progress import progress_path

__all__ = ["SetupApp", "progress_path"]
