"""The site configuration of a simulated night."""

from __future__ import annotations

from pathlib import Path

from appliance.config import (
    BrokerConfig,
    BrokerMode,
    CheckoutConfig,
    ReaderConfig,
    SiteConfig,
)
from appliance.sim._bands import SITE_ALT_PREFIX, SITE_NAMESPACE, SITE_UUID
from appliance.sim._economy import demo_commerce
from appliance.sim._world import NightPlan

KIT_STATION = "kit-1"


def exit_reader_id(index: int) -> str:
    """Return the reader id of exit ``index`` (0-based)."""
    return f"exit-{index + 1}"


def demo_config(plan: NightPlan, data_dir: Path, broker_mode: BrokerMode) -> SiteConfig:
    """Return the configuration of the demo site for ``plan``.

    Kit stock covers about three quarters of the guests expected at the kit
    station, so it runs low and then out during the night.
    """
    expected_visits = sum(1 for guest in plan.guests if guest.kit_visit_s is not None)
    readers = [
        ReaderConfig(exit_reader_id(index), "exit") for index in range(plan.exits)
    ]
    readers.append(
        ReaderConfig(KIT_STATION, "kit", kit_stock=max(1, int(expected_visits * 0.75)))
    )
    registrations = [
        registration
        for guest in plan.guests
        if (registration := guest.band.registration()) is not None
    ]
    return SiteConfig(
        site_id="demo",
        site_name="Nightbox demo night",
        box_id="box-1",
        data_dir=data_dir,
        ibeacon_uuid=SITE_UUID,
        altbeacon_prefix=SITE_ALT_PREFIX,
        eddystone_namespace=SITE_NAMESPACE,
        bands=tuple(registrations),
        readers=tuple(readers),
        checkout=CheckoutConfig(stall_s=12.0),
        broker=BrokerConfig(mode=broker_mode),
        kit_low_stock=10,
        commerce=demo_commerce(plan),
    )
