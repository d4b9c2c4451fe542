"""The rule for the ``[update]`` settings that the updater acts on as root.

On the image, ``site.toml`` belongs to the unprivileged user ``nightbox``,
so that the box can rewrite it (``config-set``, the setup wizard). The
``[update]`` table names the key that bundles must be signed with and the
command that restarts the box, so taking it from a file that user can write
would let the box's process run code as root. Run as root, the updater
therefore uses the table only from a site file that root owns and no one
else may write, and otherwise the image's defaults, which live on the
read-only root.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from appliance.update.config import UpdateConfig

_LOGGER = logging.getLogger(__name__)


def trusted_update_table(site_file: Path, table: UpdateConfig) -> UpdateConfig:
    """Return ``table`` when root may trust ``site_file``, else the defaults.

    A process that is not root gains nothing from a changed table, so it
    gets ``table`` as it is.
    """
    if os.geteuid() != 0:
        return table
    try:
        # lstat: a link to a root-owned file is still the other user's choice.
        info = site_file.lstat()
    except OSError as err:
        _LOGGER.warning(
            "Using the image's [update] settings, because %s cannot be checked: %s",
            site_file,
            err,
        )
        return UpdateConfig()
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if stat.S_ISREG(info.st_mode) and info.st_uid == 0 and not writable_by_others:
        return table
    if table != UpdateConfig():
        _LOGGER.warning(
            "Ignoring the [update] table of %s: user id %d can write it, and the "
            "updater runs as root. Root uses the image's settings (key %s); "
            "to change them, give the file to root with mode 0644",
            site_file,
            info.st_uid,
            UpdateConfig().public_key,
        )
    return UpdateConfig()
