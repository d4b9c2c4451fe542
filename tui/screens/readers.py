"""The readers screen: health of each reader, bands heard live, provisioning.

The table of readers joins the site's readers (``overview.readers``) with
their retained status and availability and the box's open faults. The
bands table polls ``console/nearby`` for the selected reader once a second
while the screen is shown. Provisioning a reader plugged into the box asks
for the admin PIN, sends ``console/reader-provision`` and follows the job's
stages on its progress topic.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, ProgressBar, RichLog, Static

from tui.screens._form import Field, FormModal, parse_whole
from tui.screens._operation import (
    OperationScreen,
    fill_table,
    format_age,
    format_rssi,
    selected_key,
)

# The stages of provisioning/readers, in the order a job reports them.
PROVISION_STAGES = (
    "arguments",
    "bundle",
    "probe",
    "register",
    "flash",
    "copy",
    "config",
    "broker",
)
_READER_COLUMNS = (
    "reader",
    "role",
    "zone",
    "uplink",
    "state",
    "fw",
    "uptime",
    "heap free",
    "scans/min",
    "reconnects",
    "buffered",
    "last error",
    "faults",
)
_BAND_COLUMNS = ("band", "RSSI dBm", "battery", "temp", "adverts", "last heard")
# console/reader-provision accepts a kit stock from 0 to 100,000.
MAX_PROVISION_KIT_STOCK = 100_000
_TABLE_SOURCES = ("shown", "overview", "box_status", "link")
# Seconds of sightings that console/nearby looks back over.
_NEARBY_WINDOW_S = 5


class ReadersScreen(OperationScreen):
    """The site's readers with their live health and the bands they hear."""

    TITLE = "Readers"
    POLL_S = 1.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "provision", "Provision a reader"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._job: str | None = None
        self._job_lines: set[tuple[str, str]] = set()

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="readers", cursor_type="row", zebra_stripes=True)
        yield Static("Bands heard", id="bands-title", classes="title", markup=False)
        yield DataTable(id="bands", cursor_type="row")
        with Vertical(id="job", classes="form"):
            yield ProgressBar(total=len(PROVISION_STAGES), id="job-progress")
            yield RichLog(id="job-log", max_lines=50, wrap=True, markup=False)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#job").display = False

    def selected_reader(self) -> str | None:
        """The id of the reader under the cursor."""
        return selected_key(self.query_one("#readers", DataTable))

    def redraw(self, source: str) -> None:
        if source in _TABLE_SOURCES or source.startswith("reader:"):
            self._draw_readers()
        elif self._job is not None and source == f"job:{self._job}":
            self._draw_job()

    def _draw_readers(self) -> None:
        faults: dict[str, list[str]] = {}
        for fault in self.box_status().get("faults") or []:
            faults.setdefault(str(fault.get("reader")), []).append(
                str(fault.get("kind"))
            )
        rows = []
        for reader in self.overview().get("readers") or []:
            reader_id = str(reader.get("id"))
            live = self.link.state.readers.get(reader_id)
            status: dict[str, Any] = dict(live.status or {}) if live else {}
            availability = live.availability if live else None
            if status:
                health: tuple[object, ...] = (
                    status.get("fw"),
                    format_age(status.get("uptime_s")),
                    status.get("heap_free"),
                    status.get("scan_per_min"),
                    status.get("reconnects"),
                    status.get("ring_used"),
                    status.get("last_error"),
                )
            else:
                # One note in place of a row of "--": the reader has not
                # published its retained status (a simulated one never does).
                health = (Text("no status yet", style="dim"), *("",) * 6)
            rows.append(
                (
                    reader_id,
                    (
                        reader_id,
                        reader.get("role"),
                        reader.get("zone") or None,
                        reader.get("uplink"),
                        _availability_text(availability),
                        *health,
                        Text(", ".join(faults[reader_id]), style="bold red")
                        if reader_id in faults
                        else "",
                    ),
                )
            )
        fill_table(self.query_one("#readers", DataTable), _READER_COLUMNS, rows)
        self.mark_stale("readers", "box_status")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "readers":
            self._poll_tick()

    async def poll(self) -> None:
        reader = self.selected_reader()
        title = self.query_one("#bands-title", Static)
        if reader is None:
            title.update("Bands heard: no reader selected")
            return
        reply = await self.send(
            "console",
            "nearby",
            {"reader": reader, "window_s": _NEARBY_WINDOW_S},
            quiet=True,
        )
        if not self.is_attached:
            return
        if reply is None:
            title.update(Text(f"Bands heard by {reader}: no reply", style="red"))
            return
        title.update(f"Bands heard by {reader} in the last {_NEARBY_WINDOW_S} s")
        now = self.box_now() or time.time()
        rows = [
            (
                str(band.get("band")),
                (
                    band.get("band"),
                    format_rssi(band.get("rssi")),
                    _battery_text(band.get("battery_mv")),
                    _temperature_text(band.get("temperature_c")),
                    band.get("n"),
                    _ago(now, band.get("last_seen")),
                ),
            )
            for band in reply.get("bands") or []
        ]
        fill_table(self.query_one("#bands", DataTable), _BAND_COLUMNS, rows)

    # Provisioning.

    def action_provision(self) -> None:
        self.app.push_screen(provision_form(), self._provision_chosen)

    def _provision_chosen(self, request: dict[str, Any] | None) -> None:
        if request is not None:
            self.start_action(self._provision(request))

    async def _provision(self, request: dict[str, Any]) -> None:
        reply = await self.send(
            "console", "reader-provision", request, admin=True, mutating=True
        )
        if reply is None:
            return
        self._job = str(reply.get("job"))
        self._job_lines.clear()
        self.query_one("#job").display = True
        self.query_one("#job-progress", ProgressBar).update(progress=0)
        log = self.query_one("#job-log", RichLog)
        log.clear()
        log.write(f"provisioning job {self._job} started on {request['port']}")
        self.show_ok(f"provisioning reader on {request['port']}")
        self._draw_job()

    def _draw_job(self) -> None:
        message = self.link.state.jobs.get(self._job or "")
        if not message:
            return
        stage = str(message.get("stage") or "")
        text = str(message.get("message") or "")
        if (stage, text) not in self._job_lines:
            self._job_lines.add((stage, text))
            self.query_one("#job-log", RichLog).write(f"{stage}: {text}")
        bar = self.query_one("#job-progress", ProgressBar)
        if stage in PROVISION_STAGES:
            reached = PROVISION_STAGES.index(stage) + 1
            bar.update(progress=max(reached, bar.progress))
        if not message.get("done"):
            return
        if message.get("ok"):
            bar.update(progress=len(PROVISION_STAGES))
            self.show_ok(f"reader {message.get('reader')} provisioned")
        else:
            self.show_error(f"provisioning failed: {message.get('error')}")


def provision_form() -> FormModal:
    """Return the form for a reader plugged into the box."""
    fields = (
        Field("port", "USB port", placeholder="/dev/ttyUSB0"),
        Field("role", "role", value="exit", options=(("exit", "exit"), ("kit", "kit"))),
        Field("zone", "zone", placeholder="main-door"),
        Field("id", "reader id", placeholder="optional, e.g. exit-3"),
        Field(
            "uplink",
            "uplink",
            value="wifi",
            options=(("wifi", "wifi"), ("serial", "serial")),
        ),
        Field("kit_stock", "kit stock", placeholder="kit readers only"),
    )
    return FormModal("Provision a reader", fields, "Provision", _provision_request)


def _provision_request(values: dict[str, Any]) -> dict[str, Any]:
    if not values["port"]:
        raise ValueError("USB port is missing: give the board's device, /dev/ttyUSB0")
    if not values["role"]:
        raise ValueError("role is missing: choose exit or kit")
    if not values["zone"]:
        raise ValueError(
            "zone is missing: type the zone the reader is placed in, such as main-door"
        )
    request: dict[str, Any] = {
        "port": values["port"],
        "role": values["role"],
        "zone": values["zone"],
        "uplink": values["uplink"] or "wifi",
    }
    if values["id"]:
        request["id"] = values["id"]
    if values["kit_stock"]:
        if values["role"] != "kit":
            raise ValueError("kit stock is for kit readers only; clear it")
        request["kit_stock"] = parse_whole(
            "kit stock", values["kit_stock"], minimum=1, maximum=MAX_PROVISION_KIT_STOCK
        )
    return request


def _availability_text(availability: str | None) -> Text:
    if availability == "online":
        return Text("online", style="green")
    if availability == "offline":
        return Text("offline", style="bold red")
    return Text("--")


def _battery_text(battery_mv: object) -> str:
    return f"{battery_mv} mV" if isinstance(battery_mv, int) else "--"


def _temperature_text(temperature_c: object) -> str:
    return f"{temperature_c:.1f} C" if isinstance(temperature_c, int | float) else "--"


def _ago(now: float, last_seen: object) -> str:
    if not isinstance(last_seen, int | float):
        return "--"
    return f"{format_age(now - last_seen)} ago"
