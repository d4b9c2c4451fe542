"""The accounts and topic grants of a fleet's upstream broker.

Every box logs in with its own account and may publish only under its own
``nightbox/<site>/box/<box>/`` (events, telemetry, results, availability,
clips) and read only the commands, bundles and asset blob chunks meant
for it. Collectors read the boxes' events, availability and telemetry, not
command results, which may carry a box's configuration, and not clips,
which they do not store. Operators send commands, bundles and asset blobs
and read everything the boxes publish, results and clips included.
Deny by default, as on the box's own broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from provisioning.acl import Access, AccessPolicy, AclRule

COLLECTOR = "collector"


@dataclass(frozen=True, slots=True)
class FleetBox:
    """One box of the fleet: its site and box id."""

    site: str
    box_id: str


def upstream_box_username(site: str, box_id: str) -> str:
    """Return the upstream broker username of one box."""
    return f"box-{site}.{box_id}"


def operator_username(name: str) -> str:
    """Return the upstream broker username of a fleet operator."""
    return f"operator-{name}"


def fleet_policy(
    boxes: Iterable[FleetBox],
    operators: Iterable[str] = (),
    collectors: Iterable[str] = (COLLECTOR,),
) -> AccessPolicy:
    """Build the ACL of an upstream broker for ``boxes``, operators, collectors."""
    grants: dict[str, list[AclRule]] = {}
    for box in boxes:
        base = f"nightbox/{box.site}/box/{box.box_id}"
        grants[upstream_box_username(box.site, box.box_id)] = [
            AclRule(Access.WRITE, f"{base}/events/#"),
            AclRule(Access.WRITE, f"{base}/availability"),
            AclRule(Access.WRITE, f"{base}/tele/+"),
            AclRule(Access.WRITE, f"{base}/stat/+"),
            # Clip chunks and manifests uploaded through sync.
            AclRule(Access.WRITE, f"{base}/clips/+"),
            AclRule(Access.READ, f"{base}/cmnd/+"),
            AclRule(Access.READ, f"{base}/bundle/+"),
            AclRule(Access.READ, f"nightbox/{box.site}/bundle/+"),
            # Asset blob chunks of the site, which the operator publishes.
            AclRule(Access.READ, f"nightbox/{box.site}/assets/#"),
        ]
    collected = [
        "nightbox/+/box/+/events/#",
        "nightbox/+/box/+/availability",
        "nightbox/+/box/+/tele/+",
    ]
    for collector in collectors:
        grants[collector] = [AclRule(Access.READ, topic) for topic in collected]
    for name in operators:
        grants[operator_username(name)] = [
            *(AclRule(Access.READ, topic) for topic in collected),
            AclRule(Access.READ, "nightbox/+/box/+/stat/+"),
            AclRule(Access.READ, "nightbox/+/box/+/clips/+"),
            AclRule(Access.WRITE, "nightbox/+/box/+/cmnd/+"),
            AclRule(Access.WRITE, "nightbox/+/box/+/bundle/+"),
            AclRule(Access.WRITE, "nightbox/+/bundle/+"),
            AclRule(Access.WRITE, "nightbox/+/assets/#"),
        ]
    return AccessPolicy(grants)
