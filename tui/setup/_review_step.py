"""Step 9: every value in one view, the files that will be written, then Write."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from tui.setup._document import build_document
from tui.setup._money import to_major_text
from tui.setup._step import StepScreen
from tui.setup._write import site_file_text


class ReviewStep(StepScreen):
    """Shows the site file that Write creates and the secrets beside it."""

    step = "review"
    next_label: ClassVar[str] = "Write"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Write"),
        Binding("escape", "back", "Back"),
    ]

    def compose_fields(self) -> ComposeResult:
        values = self.setup.values
        document = build_document(values)
        data_dir = (self.setup.config_path.parent / values.data_dir.strip()).resolve()
        network = (
            f"joined Wi-Fi {values.wifi_ssid!r}"
            if values.wifi_ssid
            else "no Wi-Fi joined (the box runs its own network)"
        )
        readers = ", ".join(reader["id"] for reader in document["readers"]) or "none"
        bands = (
            ", ".join(
                f"{key} {value}" for key, value in document.get("bands", {}).items()
            )
            or "none"
        )
        stations = [r for r in document["readers"] if r.get("role") == "kit"]
        kits = (
            ", ".join(f"{r['id']} {r.get('kit_stock', 0)}" for r in stations)
            or "no kit station"
        )
        items = (
            ", ".join(
                item["name"]
                + (
                    f" {to_major_text(item['price'], values.currency.strip())}"
                    if "price" in item
                    else " (price typed at the terminal)"
                )
                for item in document.get("items", [])
            )
            or "none"
        )
        terminals = ", ".join(t["id"] for t in document.get("terminals", []))
        summary = [
            f"Site: {values.site_id} ({values.site_name}), {values.timezone}, "
            f"night rollover at {values.rollover_hour.strip()}:00",
            f"Box: {values.effective_box_id}, clock "
            + ("trusted" if values.clock_trusted else "not trusted"),
            f"Network: {network}",
            "Admin PIN: set (stored as a hash)",
            f"Readers: {readers}",
            f"Kits in stock: {kits}; warning at {values.low_stock.strip()} left",
            f"Wristbands: {bands}",
            f"Wallet: {values.currency.strip()}, one charge up to "
            f"{values.max_charge.strip()}, per night up to "
            f"{values.night_limit.strip()}",
            f"Catalogue: {items}",
            f"Terminals: desk, console{', ' + terminals if terminals else ''}",
            "",
            f"Write creates {self.setup.config_path}",
            f"and in {data_dir}: secrets/broker.json (broker passwords of every "
            "account), secrets/edge-token-key.pem (token signing key) and "
            "secrets/console.json (the PIN's hash).",
            "",
            "The site file:",
        ]
        yield Static(Text("\n".join(summary)), id="review-summary")
        yield Static(Text(site_file_text(values)), id="review-toml")
