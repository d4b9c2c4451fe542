"""``nightbox run`` serves the portal of a site with a ``[portal]`` table."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from portal_site import TIMEOUT_S, portal_settings, portal_site_config, write_usb_folder

from appliance.config import BrokerConfig, SiteConfig
from appliance.errors import ConfigError
from appliance.remote.config import FleetConfig
from appliance.service_host import serve_box
from appliance.signed_documents import key_id


def _site(tmp_path: Path, port: int = 0) -> SiteConfig:
    key = Ed25519PrivateKey.generate()
    usb = tmp_path / "usb"
    write_usb_folder(usb, key)
    config = portal_site_config(
        tmp_path / "box",
        time.time(),
        usb_folder=usb,
        fleet=FleetConfig(operator_keys={key_id(key.public_key()): key.public_key()}),
        portal=dataclasses.replace(portal_settings(), port=port),
    )
    return dataclasses.replace(config, broker=BrokerConfig(mode="mosquitto"))


async def test_run_serves_portal(tmp_path: Path) -> None:
    config = _site(tmp_path)
    stop = asyncio.Event()
    announced: list[str] = []
    ready = asyncio.Event()

    def announce(line: str) -> None:
        announced.append(line)
        if line.startswith(f"Box {config.box_id} "):
            ready.set()

    run = asyncio.create_task(serve_box(config, stop, announce))
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT_S)
        line = next(x for x in announced if x.startswith("Guest portal on "))
        port = int(line.split("127.0.0.1:", 1)[1].split("/", 1)[0])
        assert "http://nightbox.test:8080" in line
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/drops") as response,
        ):
            text = await response.text()
        assert response.status == 200
        assert "Night tee" in text
    finally:
        stop.set()
        await asyncio.wait_for(run, TIMEOUT_S)
    # The box has stopped, and with it the portal.
    with socket.socket() as probe, pytest.raises(OSError):
        probe.connect(("127.0.0.1", port))


async def test_run_names_busy_portal_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _site(tmp_path, port)
        with pytest.raises(ConfigError) as caught:
            await serve_box(config, asyncio.Event(), lambda line: None)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "[portal] port" in message
