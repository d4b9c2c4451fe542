"""``nightbox run``'s studio start-up on a machine without picamera2 or GPIO.

Two boxes run ``serve_box`` as ``nightbox run`` does: one with the
picamera2 camera, which this machine cannot import, and one with the
simulator and a panel button on GPIO17, for which this machine has no
GPIO. Each keeps running and names the cause once, in its log and in the
published stream state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from gpiozero import Device
from gpiozero.exc import PinWarning
from studio_site import SMALL_STUDIO, TIMEOUT_S, studio_site_config

from appliance.bus.client import Bus, BusSettings, Incoming
from appliance.config import BrokerConfig, SiteConfig
from appliance.service_host import credentials_for, serve_box
from appliance.studio.config import StudioConfig
from hardware.panel._button import PIN_FACTORY_VARIABLE

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Longer than the stream's first two camera retries (0.5 s, then 1 s).
RETRIES_WAIT_S = 2.0
STREAM_ANNOUNCEMENT = "Stream on "


@dataclasses.dataclass
class ServedBox:
    """A ``serve_box`` run: its site, announcements and the errors logged."""

    config: SiteConfig
    announced: list[str]
    # Messages of the ERROR records logged before the stream was announced.
    errors_before_stream: list[str]
    broker_port: int = 0


class RecordList(logging.Handler):
    """Keep every record logged while the boxes run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@dataclasses.dataclass
class Boxes:
    """The two running boxes, the log of both and the warnings raised."""

    picamera2: ServedBox
    button: ServedBox
    log: RecordList
    warnings: list[warnings.WarningMessage]


def site(folder: Path, studio: StudioConfig) -> SiteConfig:
    config = studio_site_config(folder, time.time(), studio=studio)
    return dataclasses.replace(config, broker=BrokerConfig(mode="mosquitto"))


@contextlib.contextmanager
def default_gpio() -> Iterator[None]:
    """gpiozero with no pin factory loaded and none named, as in a fresh box."""
    with pytest.MonkeyPatch.context() as environment:
        environment.delenv(PIN_FACTORY_VARIABLE, raising=False)
        previous = Device.pin_factory
        Device.pin_factory = None
        try:
            yield
        finally:
            Device.pin_factory = previous


async def serve(
    config: SiteConfig, log: RecordList, stop: asyncio.Event
) -> tuple[ServedBox, asyncio.Task[bool]]:
    """Start ``serve_box`` for ``config``; return once the box runs."""
    served = ServedBox(config, [], [])
    ready = asyncio.Event()

    def announce(line: str) -> None:
        if line.startswith(STREAM_ANNOUNCEMENT):
            served.errors_before_stream.extend(log.messages(logging.ERROR))
        if line.startswith("Broker: "):
            served.broker_port = int(line.rsplit(":", 1)[1])
        served.announced.append(line)
        if line.startswith(f"Box {config.box_id} "):
            ready.set()

    run = asyncio.create_task(serve_box(config, stop, announce))
    done, _ = await asyncio.wait(
        {run, asyncio.ensure_future(ready.wait())},
        timeout=TIMEOUT_S,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if run in done:
        pytest.fail(f"serve_box ended during start-up: {run.result()!r}")
    if not ready.is_set():
        pytest.fail(f"the box did not announce itself: {served.announced}")
    return served, run


@pytest_asyncio.fixture(name="boxes", scope="module", loop_scope="module")
async def boxes_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Boxes]:
    """Serve both boxes for the module; stop them at its end."""
    log = RecordList()
    root = logging.getLogger()
    root_level = root.level
    # The camera's retries are logged at INFO.
    root.setLevel(logging.INFO)
    root.addHandler(log)
    stop = asyncio.Event()
    folder = tmp_path_factory.mktemp("host")
    picamera2_site = site(
        folder / "picamera2",
        dataclasses.replace(SMALL_STUDIO, camera="picamera2", audio="none"),
    )
    button_site = site(
        folder / "button", dataclasses.replace(SMALL_STUDIO, button_pin=17)
    )
    runs: list[asyncio.Task[bool]] = []
    try:
        with default_gpio(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            picamera2_box, run = await serve(picamera2_site, log, stop)
            runs.append(run)
            button_box, run = await serve(button_site, log, stop)
            runs.append(run)
        yield Boxes(picamera2_box, button_box, log, caught)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runs), TIMEOUT_S)
        root.removeHandler(log)
        root.setLevel(root_level)


async def stream_state(served: ServedBox) -> dict[str, Any]:
    """Return the box's retained stream state, read over its broker."""
    account = credentials_for(served.config).account("terminal-console")
    settings = BusSettings(
        "127.0.0.1",
        served.broker_port,
        "terminal-console",
        account.password,
        "terminal",
        "console",
        served.config.site_id,
    )
    states: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_state(incoming: Incoming) -> None:
        states.put_nowait(orjson.loads(incoming.payload)["data"])

    async with Bus(settings) as console:
        console.subscribe(console.topics.stream_state(served.config.box_id), on_state)
        return await asyncio.wait_for(states.get(), TIMEOUT_S)


async def test_missing_picamera2_reported_once(boxes: Boxes) -> None:
    await asyncio.sleep(RETRIES_WAIT_S)
    state = await stream_state(boxes.picamera2)
    assert state["running"] is True
    assert state["source"] == "slate"
    assert state["camera_down_since"] is not None
    assert "picamera2 cannot be imported" in state["last_error"]
    assert "--system-site-packages" in state["last_error"]
    down = [m for m in boxes.log.messages(logging.WARNING) if "Camera down" in m]
    assert len(down) == 1
    assert "python3-picamera2" in down[0]
    info = boxes.log.messages(logging.INFO)
    assert "Stream started" in info
    assert [m for m in info if "Camera still down" in m] == []


async def test_missing_gpio_keeps_box_running(boxes: Boxes) -> None:
    announced = boxes.button.announced
    assert any(line.startswith(STREAM_ANNOUNCEMENT) for line in announced)
    # The button's error is logged before the stream's address is printed.
    button_errors = [m for m in boxes.button.errors_before_stream if "GPIO17" in m]
    assert len(button_errors) == 1
    assert "no GPIO on this machine" in button_errors[0]
    assert "runs without the button" in button_errors[0]
    state = await stream_state(boxes.button)
    assert state["running"] is True
    assert "GPIO17 cannot start" in state["last_error"]
    assert f"{PIN_FACTORY_VARIABLE}=mock" in state["last_error"]


async def test_gpio_fallback_warnings_not_printed(boxes: Boxes) -> None:
    pin_warnings = [w for w in boxes.warnings if issubclass(w.category, PinWarning)]
    assert pin_warnings == []
