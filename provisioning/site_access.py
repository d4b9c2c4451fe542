"""The broker accounts and topic grants of one site.

Deny by default: each client gets exactly the topics its role needs. Readers
may publish only their own sightings, status, availability and firmware
chunk requests, and read the box's clock and firmware manifest; only kit
readers may also send kit requests. Every device sends
requests only under its own ``<kind>/<id>/api/``, so the topic of a request
names its sender.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from provisioning.acl import Access, AccessPolicy, AclRule

OBSERVER = "observer"
DESK = "desk"
# The terminal UI: on the box itself or on a laptop on the venue network.
CONSOLE = "console"
OPERATOR = "operator"
HOMEASSISTANT = "homeassistant"
# Home Assistant's default MQTT discovery prefix.
HOMEASSISTANT_PREFIX = "homeassistant"


@dataclass(frozen=True, slots=True)
class ReaderGrant:
    """A reader and its role, as the site configuration lists it."""

    reader_id: str
    role: str


def box_username(box_id: str) -> str:
    """Return the broker username of the box's own services."""
    return f"box-{box_id}"


def reader_username(reader_id: str) -> str:
    """Return the broker username of a reader."""
    return f"reader-{reader_id}"


def terminal_username(terminal_id: str) -> str:
    """Return the broker username of a terminal (opt-in desk, POS, kit tablet)."""
    return f"terminal-{terminal_id}"


def site_policy(
    site: str,
    box_id: str,
    readers: Iterable[ReaderGrant],
    terminals: Iterable[str] = (),
) -> AccessPolicy:
    """Build the ACL of a site: one box, its readers, terminals, a desk, an observer.

    The desk and the console are always terminals; ``terminals`` adds the
    site's other terminals (POS phones, kit tablets, creator stations). The
    console also reads what the observer reads, the box's telemetry and its
    console jobs. The site also has an operator account for remote
    management on the local network and a Home Assistant account.
    """
    root = f"nightbox/{site}"
    box_root = f"{root}/box/{box_id}"
    grants: dict[str, list[AclRule]] = {
        box_username(box_id): [
            AclRule(Access.READWRITE, f"{root}/#"),
            # Home Assistant discovery configs, and Home Assistant's status.
            AclRule(Access.READWRITE, f"{HOMEASSISTANT_PREFIX}/#"),
        ],
        # Dashboards and the demo's scoring see what the site publishes, but
        # not requests and replies, which carry tokens, guests' contacts and
        # pick-up codes.
        OBSERVER: [
            AclRule(Access.READ, f"{root}/events/#"),
            AclRule(Access.READ, f"{root}/+/+/status"),
            AclRule(Access.READ, f"{root}/+/+/availability"),
            AclRule(Access.READ, f"{root}/reader/+/sightings"),
            AclRule(Access.READ, f"{root}/creators/+/figures"),
            AclRule(Access.READ, f"{root}/box/health"),
            AclRule(Access.READ, f"{root}/firmware/manifest"),
        ],
        # Signed commands are verified by the box; the ACL keeps every other
        # account of the site off the command topics.
        OPERATOR: [
            AclRule(Access.WRITE, f"{root}/box/+/cmnd/+"),
            AclRule(Access.READ, f"{root}/box/+/stat/+"),
            AclRule(Access.READ, f"{root}/box/+/tele/+"),
            AclRule(Access.READ, f"{root}/box/+/availability"),
        ],
        HOMEASSISTANT: [
            AclRule(Access.READ, f"{HOMEASSISTANT_PREFIX}/#"),
            AclRule(Access.WRITE, f"{HOMEASSISTANT_PREFIX}/status"),
            AclRule(Access.READ, f"{box_root}/tele/+"),
            AclRule(Access.READ, f"{box_root}/availability"),
        ],
    }
    for terminal in dict.fromkeys([DESK, CONSOLE, *terminals]):
        # A terminal may send any request on its own topic; its edge token's
        # scopes decide which of them the box carries out.
        grants[terminal_username(terminal)] = [
            *_device_rules(root, "terminal", terminal),
            AclRule(Access.WRITE, f"{root}/terminal/{terminal}/api/+/+"),
        ]
    # The console shows the live night, so it reads what the observer reads,
    # but like the observer never another device's requests or replies.
    grants[terminal_username(CONSOLE)].extend(
        [
            *grants[OBSERVER],
            AclRule(Access.READ, f"{root}/box/+/tele/+"),
            AclRule(Access.READ, f"{box_root}/console/#"),
        ]
    )
    for reader in readers:
        rules = _device_rules(root, "reader", reader.reader_id)
        rules.append(
            AclRule(Access.WRITE, f"{root}/reader/{reader.reader_id}/sightings")
        )
        # The box's time beacon, which readers without a real-time clock
        # date their sightings from.
        rules.append(AclRule(Access.READ, f"{root}/clock"))
        # Firmware updates: the box's retained manifest, and the chunks the
        # reader asks for on its own topics.
        rules.append(AclRule(Access.READ, f"{root}/firmware/manifest"))
        rules.append(
            AclRule(Access.WRITE, f"{root}/reader/{reader.reader_id}/firmware/get")
        )
        rules.append(
            AclRule(Access.READ, f"{root}/reader/{reader.reader_id}/firmware/chunk")
        )
        if reader.role == "kit":
            rules.append(
                AclRule(
                    Access.WRITE, f"{root}/reader/{reader.reader_id}/api/kits/issue"
                )
            )
        grants[reader_username(reader.reader_id)] = rules
    return AccessPolicy(grants)


def _device_rules(root: str, kind: str, device_id: str) -> list[AclRule]:
    base = f"{root}/{kind}/{device_id}"
    return [
        AclRule(Access.WRITE, f"{base}/availability"),
        AclRule(Access.WRITE, f"{base}/status"),
        AclRule(Access.READ, f"{base}/reply"),
    ]
