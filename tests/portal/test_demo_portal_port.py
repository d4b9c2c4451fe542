"""The demo's portal moves to another free port when its own was taken.

The demo chooses the portal's port before the box starts, so another
process (such as a second demo started at the same moment) can bind it
first. The portal then starts on another free port instead of ending the
night.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path

from conftest import running_site_box
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from portal_site import portal_settings, portal_site_config, write_usb_folder

from appliance.remote.config import FleetConfig
from appliance.signed_documents import key_id
from appliance.sim.demo import _announce_portal


async def test_portal_moves_off_taken_port(tmp_path: Path) -> None:
    operator_key = Ed25519PrivateKey.generate()
    public_key = operator_key.public_key()
    usb_folder = tmp_path / "usb"
    write_usb_folder(usb_folder, operator_key)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        squatted_port = squatter.getsockname()[1]
        portal = replace(
            portal_settings(strict=False, consent_text="I agree.", settings=None),
            host="127.0.0.1",
            port=squatted_port,
            public_url=f"http://127.0.0.1:{squatted_port}",
        )
        config = portal_site_config(
            tmp_path / "box",
            time.time(),
            usb_folder=usb_folder,
            fleet=FleetConfig(operator_keys={key_id(public_key): public_key}),
            portal=portal,
        )
        async with running_site_box(config) as (_broker, box):
            url = await _announce_portal(box, None)

            assert box.portal is not None
            moved = box.portal.config.port
            assert moved != squatted_port
            assert url == f"http://127.0.0.1:{moved}"
            assert box.portal.config.public_url == url
            with socket.create_connection(("127.0.0.1", moved), timeout=5):
                pass
