"""The upstream broker's grants for boxes, collectors and operators."""

from __future__ import annotations

import pytest

from provisioning import Access, AccessPolicy
from provisioning.fleet_access import (
    COLLECTOR,
    FleetBox,
    fleet_policy,
    operator_username,
    upstream_box_username,
)

R, W = Access.READ, Access.WRITE
BOX = upstream_box_username("club", "box-1")
OPERATOR = operator_username("ops")
CLUB_BOX = "nightbox/club/box/box-1"
ANNEX_BOX = "nightbox/annex/box/box-2"

FLEET_GRANTS = [
    (BOX, f"{CLUB_BOX}/events/checkout", W, True),
    (BOX, f"{CLUB_BOX}/stat/result", W, True),
    (BOX, f"{CLUB_BOX}/cmnd/status", R, True),
    (BOX, f"{ANNEX_BOX}/events/checkout", W, False),
    (BOX, f"{CLUB_BOX}/events/checkout", R, False),
    (COLLECTOR, f"{CLUB_BOX}/events/checkout", R, True),
    (COLLECTOR, f"{ANNEX_BOX}/availability", R, True),
    (COLLECTOR, f"{ANNEX_BOX}/tele/state", R, True),
    (COLLECTOR, f"{ANNEX_BOX}/tele/sync", R, True),
    # Results may carry the box's configuration (config-get), and the
    # collector does not store them.
    (COLLECTOR, f"{CLUB_BOX}/stat/result", R, False),
    (COLLECTOR, f"{CLUB_BOX}/cmnd/status", W, False),
    (OPERATOR, f"{CLUB_BOX}/stat/result", R, True),
    (OPERATOR, f"{CLUB_BOX}/events/checkout", R, True),
    (OPERATOR, f"{CLUB_BOX}/cmnd/status", W, True),
    (OPERATOR, "nightbox/club/bundle/members", W, True),
    (OPERATOR, f"{CLUB_BOX}/events/checkout", W, False),
    # Clips: each box writes its own, operators read every box's, and the
    # collector, which does not store clips, reads none.
    (BOX, f"{CLUB_BOX}/clips/chunk", W, True),
    (BOX, f"{CLUB_BOX}/clips/manifest", W, True),
    (BOX, f"{ANNEX_BOX}/clips/chunk", W, False),
    (BOX, f"{CLUB_BOX}/clips/chunk", R, False),
    (OPERATOR, f"{ANNEX_BOX}/clips/chunk", R, True),
    (OPERATOR, f"{CLUB_BOX}/clips/manifest", R, True),
    (OPERATOR, f"{CLUB_BOX}/clips/chunk", W, False),
    (COLLECTOR, f"{CLUB_BOX}/clips/chunk", R, False),
    (COLLECTOR, f"{CLUB_BOX}/clips/manifest", R, False),
]


@pytest.fixture
def policy() -> AccessPolicy:
    boxes = [FleetBox("club", "box-1"), FleetBox("annex", "box-2")]
    return fleet_policy(boxes, operators=["ops"])


@pytest.mark.parametrize(("username", "topic", "access", "expected"), FLEET_GRANTS)
def test_fleet_policy_grants(
    policy: AccessPolicy, username: str, topic: str, access: Access, expected: bool
) -> None:
    assert policy.allows(username, topic, access) is expected
