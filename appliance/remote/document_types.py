"""The commands and bundle types a box accepts, and their size limits.

The box and ``nightbox fleet`` both use them. This module imports
nothing, so ``nightbox`` does not load the box's services to start.
"""

from __future__ import annotations

# Commands the box runs itself.
BUILTIN_COMMANDS = (
    "status",
    "config-get",
    "config-set",
    "drop-start",
    "drop-stop",
    "token-revoke",
    "restart",
)
# Commands whose handler another part of the box registers, with the part
# that a box without a handler lacks.
REGISTERED_COMMANDS = {"clip": "camera studio", "update": "updater"}
# The maximum size of a command payload, in bytes. A signed command has a
# few hundred bytes, and a config-set value may carry a table.
MAX_COMMAND_BYTES = 64 * 1024

# The largest bundle payload accepted. By estimate, 4 MiB fits about 55,000
# top-ups or 110,000 members of typical length (72 and 36 bytes of JSON),
# more than one venue needs, and it is far below MQTT's 256 MiB packet limit.
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
BUNDLE_TYPES = ("members", "topups", "revocations", "assets", "config")
