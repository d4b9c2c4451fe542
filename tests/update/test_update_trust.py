"""The root updater takes ``[update]`` only from a site file that root controls.

On the image the box's own user owns ``site.toml``; a public key or a
restart command written there must not reach the updater that runs as root.
These tests run as root, as the updater does on a box (and as CI runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.update.config import UpdateConfig
from appliance.update.trust import trusted_update_table

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the rule is about files that root reads as root"
)
# The site's own table: another key and a command of the site's choosing.
SITE_TABLE = UpdateConfig(
    public_key=Path("/tmp/someone-else.pub"),
    restart_command=("/bin/sh", "-c", "id > /tmp/owned"),
)
# The uid of a user who is not root, as `nightbox` is on the image.
OTHER_UID = 65534


def site_file(tmp_path: Path, *, uid: int = 0, mode: int = 0o644) -> Path:
    path = tmp_path / "site.toml"
    path.write_text("[update]\n")
    os.chown(path, uid, -1)
    path.chmod(mode)
    return path


def test_root_owned_file_table_kept(tmp_path: Path) -> None:
    path = site_file(tmp_path)
    assert trusted_update_table(path, SITE_TABLE) == SITE_TABLE


def test_file_of_box_user_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = site_file(tmp_path, uid=OTHER_UID)

    table = trusted_update_table(path, SITE_TABLE)

    assert table == UpdateConfig()
    assert table.restart_command == ("systemctl", "restart", "nightbox.service")
    assert f"user id {OTHER_UID} can write it" in caplog.text


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_file_others_can_write_ignored(tmp_path: Path, mode: int) -> None:
    path = site_file(tmp_path, mode=mode)
    assert trusted_update_table(path, SITE_TABLE) == UpdateConfig()


def test_link_to_root_file_ignored(tmp_path: Path) -> None:
    target = site_file(tmp_path)
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    assert trusted_update_table(link, SITE_TABLE) == UpdateConfig()


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert trusted_update_table(missing, SITE_TABLE) == UpdateConfig()
