"""Starting the box's broker: the kind it reports and a port already in use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from appliance.bus.broker import free_port, start_broker
from appliance.config import BrokerConfig
from appliance.errors import BrokerUnavailableError
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy


def policy():  # type: ignore[no-untyped-def]
    return site_policy("test", "box-1", [ReaderGrant("exit-1", "exit")])


async def test_embedded_kind_and_description(tmp_path: Path) -> None:
    credentials = SiteCredentials(tmp_path / "broker.json")
    handle = await start_broker(
        BrokerConfig(mode="embedded"), tmp_path / "run", credentials, policy()
    )
    try:
        assert handle.kind == "embedded"
        assert handle.description == f"embedded broker on 127.0.0.1:{handle.port}"
    finally:
        await handle.stop()


async def test_external_kind_needs_no_start(tmp_path: Path) -> None:
    credentials = SiteCredentials(tmp_path / "broker.json")
    handle = await start_broker(
        BrokerConfig(mode="external", port=18999),
        tmp_path / "run",
        credentials,
        policy(),
    )

    assert handle.kind == "external"
    assert handle.description == "external broker on 127.0.0.1:18999"


@pytest.mark.parametrize("mode", ["mosquitto", "embedded"])
async def test_port_in_use_rejected(tmp_path: Path, mode: str) -> None:
    port = free_port()
    credentials = SiteCredentials(tmp_path / "broker.json")
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(BrokerUnavailableError) as caught:
            await start_broker(
                BrokerConfig(mode=mode, port=port),  # type: ignore[arg-type]
                tmp_path / "run",
                credentials,
                policy(),
            )

    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "broker.port" in message


async def test_unknown_host_rejected(tmp_path: Path) -> None:
    credentials = SiteCredentials(tmp_path / "broker.json")
    with pytest.raises(BrokerUnavailableError) as caught:
        await start_broker(
            BrokerConfig(mode="embedded", host="192.0.2.1"),
            tmp_path / "run",
            credentials,
            policy(),
        )

    assert "cannot listen on 192.0.2.1" in str(caught.value)
    assert "broker.host" in str(caught.value)
