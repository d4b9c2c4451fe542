"""Fixed names of the box's file system.

The image recipe, first boot, the update slots and the systemd units all
refer to the same paths, so they are spelled once here. The data partition
(ext4, label ``nbdata``) is mounted at :data:`STATE_DIR`; the root file
system is read-only while the box runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path("/var/lib/nightbox")
"""Mount point of the data partition, which contains everything the box writes."""

SITE_FILE_NAME = "site.toml"
DATA_DIR_NAME = "data"
BROKER_DIR_NAME = "broker"
APP_DIR_NAME = "app"
UPDATES_DIR_NAME = "updates"
JOURNAL_DIR_NAME = "journal"
NETWORK_DIR_NAME = "network"
BLUETOOTH_DIR_NAME = "bluetooth"
FIRST_BOOT_FILE_NAME = "first-boot.json"

BROKER_CONF_NAME = "mosquitto.conf"
BROKER_PASSWD_NAME = "mosquitto.passwd"
BROKER_ACL_NAME = "mosquitto.acl"

SLOT_NAMES = ("slot-a", "slot-b")
CURRENT_LINK_NAME = "current"
SLOT_STATE_NAME = "state.json"
SLOT_MARKER_NAME = "slot.json"
UPDATE_REQUEST_NAME = "request.json"

UPDATE_KEY_FILE = Path("/etc/nightbox/update-key.pub")
"""Ed25519 public key (raw 32 bytes, base64 on one line) that signs update bundles."""

BOOT_LABEL = "NBBOOT"
ROOT_LABEL = "nbroot"
DATA_LABEL = "nbdata"
BOOT_MOUNT = Path("/boot/firmware")

SERVICE_USER = "nightbox"
BROKER_GROUP = "mosquitto"

DEFAULT_BROKER_DIR = STATE_DIR / BROKER_DIR_NAME
"""Default folder of the system mosquitto's files (``broker.config_dir``)."""

# Readers on the venue's Wi-Fi connect to the box, so the system mosquitto
# listens on every interface from the first boot on. The setup wizard keeps
# this address, because a reload (SIGHUP) never moves a listener.
BROKER_HOST = "0.0.0.0"
BROKER_PORT = 1883


@dataclass(frozen=True, slots=True)
class BoxLayout:
    """Paths of the box's state, derived from one state directory.

    The box uses :data:`STATE_DIR`; tests and image builds pass another
    directory with the same layout.
    """

    state_dir: Path = STATE_DIR

    @property
    def site_file(self) -> Path:
        """The site configuration that ``nightbox run --config`` reads."""
        return self.state_dir / SITE_FILE_NAME

    @property
    def data_dir(self) -> Path:
        """The site's ``data_dir``: SQLite store, ``secrets/`` and runtime files."""
        return self.state_dir / DATA_DIR_NAME

    @property
    def secrets_dir(self) -> Path:
        """Per-device secrets the box generates (mode 0700)."""
        return self.data_dir / "secrets"

    @property
    def broker_dir(self) -> Path:
        """The mosquitto configuration, password and ACL files."""
        return self.state_dir / BROKER_DIR_NAME

    @property
    def broker_conf(self) -> Path:
        """The ``mosquitto.conf`` the system mosquitto is started with."""
        return self.broker_dir / BROKER_CONF_NAME

    @property
    def broker_passwd(self) -> Path:
        """The mosquitto password file."""
        return self.broker_dir / BROKER_PASSWD_NAME

    @property
    def broker_acl(self) -> Path:
        """The mosquitto ACL file."""
        return self.broker_dir / BROKER_ACL_NAME

    @property
    def app_dir(self) -> Path:
        """The application slots, ``current`` link and ``state.json``."""
        return self.state_dir / APP_DIR_NAME

    def slot_dir(self, slot: str) -> Path:
        """Return the folder of ``slot`` (``slot-a`` or ``slot-b``)."""
        if slot not in SLOT_NAMES:
            expected = ", ".join(SLOT_NAMES)
            raise ValueError(f"unknown slot {slot!r}: expected one of {expected}")
        return self.app_dir / slot

    @property
    def current_link(self) -> Path:
        """The symlink to the active slot."""
        return self.app_dir / CURRENT_LINK_NAME

    @property
    def slot_state_file(self) -> Path:
        """The slots' ``state.json`` (active, trying, previous)."""
        return self.app_dir / SLOT_STATE_NAME

    @property
    def updates_dir(self) -> Path:
        """Where the remote command drops ``request.json``."""
        return self.state_dir / UPDATES_DIR_NAME

    @property
    def update_request_file(self) -> Path:
        """The update request that ``nightbox-update.path`` watches."""
        return self.updates_dir / UPDATE_REQUEST_NAME

    @property
    def journal_dir(self) -> Path:
        """journald's persistent logs (bind-mounted on /var/log/journal)."""
        return self.state_dir / JOURNAL_DIR_NAME

    @property
    def network_dir(self) -> Path:
        """NetworkManager connections.

        Bind-mounted on /etc/NetworkManager/system-connections.
        """
        return self.state_dir / NETWORK_DIR_NAME

    @property
    def bluetooth_dir(self) -> Path:
        """BlueZ pairing state (bind-mounted on /var/lib/bluetooth)."""
        return self.state_dir / BLUETOOTH_DIR_NAME

    @property
    def first_boot_file(self) -> Path:
        """The marker first boot writes last: box id, time and version."""
        return self.state_dir / FIRST_BOOT_FILE_NAME
