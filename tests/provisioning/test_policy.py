"""Topic filters, matching and the site's grants (MQTT 5 section 4.7)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning import Access, AccessPolicy, AclRule, topic_matches
from provisioning.acl import validate_filter
from provisioning.site_access import (
    ReaderGrant,
    box_username,
    reader_username,
    site_policy,
    terminal_username,
)

ROOT = "nightbox/test"


@pytest.mark.parametrize(
    "topic_filter",
    [
        "a",
        "a/b/c",
        "#",
        "+",
        "a/#",
        "a/+/c",
        "+/+",
        "/",
        "/#",
        "a//b",
        "$SYS/#",
        "$SYS/broker/+",
        "sport tennis/player 1",
    ],
)
def test_validate_filter_accepts(topic_filter: str) -> None:
    validate_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("", "empty topic filter"),
        ("a#", "'#' must be the whole last level"),
        ("a/#/b", "'#' must be the whole last level"),
        ("#/a", "'#' must be the whole last level"),
        ("##", "'#' must be the whole last level"),
        ("a+", "'+' must be a whole level"),
        ("a/b+/c", "'+' must be a whole level"),
        ("+a/b", "'+' must be a whole level"),
        ("a/++", "'+' must be a whole level"),
        ("a\x00b", "null character"),
        ("a/b\nuser observer", "line break"),
    ],
)
def test_validate_filter_rejects(topic_filter: str, expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)) as caught:
        validate_filter(topic_filter)

    if topic_filter:
        assert repr(topic_filter) in str(caught.value)


def test_acl_rule_rejects_invalid_filter() -> None:
    with pytest.raises(ValueError, match="'#' must be the whole last level"):
        AclRule(Access.READ, "a/#/b")


# The wildcard rules of MQTT 5 section 4.7, with its sport/tennis examples.
TOPIC_MATCHES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("a/+/c", "a//c", True),
    ("sport/tennis", "sport/tennis", True),
    ("sport/tennis", "sport/tennis/", False),
    ("sport/tennis", "Sport/Tennis", False),
    ("#", "$SYS/broker/clients", False),
    ("+/broker/clients", "$SYS/broker/clients", False),
    ("$SYS/#", "$SYS/broker/clients", True),
    ("$SYS/broker/+", "$SYS/broker/clients", True),
    ("$SYS/#", "$SYS", True),
    ("nightbox/test/#", "nightbox/other/events/x", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), TOPIC_MATCHES)
def test_topic_matches_spec_examples(
    topic_filter: str, topic: str, expected: bool
) -> None:
    assert topic_matches(topic_filter, topic) is expected


_LEVEL = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_characters="+#/\x00", exclude_categories=("Cs",)
    ),
    max_size=6,
)
_TOPIC = st.lists(_LEVEL, min_size=1, max_size=6).map("/".join).filter(bool)


@settings(max_examples=100, deadline=None)
@given(_TOPIC)
def test_topic_matches_itself_and_wildcards(topic: str) -> None:
    levels = topic.split("/")
    system = topic.startswith("$")

    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) is not system
    assert topic_matches("/".join("+" for _ in levels), topic) is not system
    assert topic_matches(levels[0] + "/#", topic)
    assert not topic_matches(topic + "/+", topic)


def test_access_permits() -> None:
    assert Access.READWRITE.permits(Access.READ)
    assert Access.READWRITE.permits(Access.WRITE)
    assert Access.READ.permits(Access.READ)
    assert not Access.READ.permits(Access.WRITE)
    assert Access.WRITE.permits(Access.WRITE)
    assert not Access.WRITE.permits(Access.READ)


def test_access_policy_allows() -> None:
    policy = AccessPolicy(
        {
            "alice": [
                AclRule(Access.READ, "a/#"),
                AclRule(Access.WRITE, "a/+/in"),
            ],
            "bob": [AclRule(Access.READWRITE, "b")],
        }
    )

    assert policy.allows("alice", "a/x/y", Access.READ)
    assert not policy.allows("alice", "a/x/y", Access.WRITE)
    assert policy.allows("alice", "a/x/in", Access.WRITE)
    assert not policy.allows("alice", "a/x/y/in", Access.WRITE)
    assert not policy.allows("alice", "b", Access.READ)
    assert policy.allows("bob", "b", Access.READ)
    assert policy.allows("bob", "b", Access.WRITE)
    assert not policy.allows("bob", "b/c", Access.READ)
    assert not policy.allows("carol", "a/x/y", Access.READ)
    assert not policy.allows(None, "a/x/y", Access.READ)


def test_access_policy_usernames_and_rules() -> None:
    rules = [AclRule(Access.READ, "a/#")]
    policy = AccessPolicy({"zed": rules, "amy": []})

    assert policy.usernames == ("zed", "amy")
    assert policy.rules_for("zed") == tuple(rules)
    assert policy.rules_for("nobody") == ()


def test_render_mosquitto_acl_file() -> None:
    policy = AccessPolicy(
        {
            "alice": [
                AclRule(Access.READ, "a/#"),
                AclRule(Access.WRITE, "a/+/in"),
            ],
            "bob": [AclRule(Access.READWRITE, "b")],
        }
    )

    assert policy.render_mosquitto() == (
        "# Generated by Nightbox provisioning; every other topic is denied.\n"
        "\n"
        "user alice\n"
        "topic read a/#\n"
        "topic write a/+/in\n"
        "\n"
        "user bob\n"
        "topic readwrite b\n"
    )


def test_render_mosquitto_empty_policy() -> None:
    rendered = AccessPolicy({}).render_mosquitto()

    assert rendered == (
        "# Generated by Nightbox provisioning; every other topic is denied.\n"
    )


@pytest.fixture
def policy() -> AccessPolicy:
    return site_policy(
        "test",
        "box-1",
        [
            ReaderGrant("exit-1", "exit"),
            ReaderGrant("exit-2", "exit"),
            ReaderGrant("kit-1", "kit"),
        ],
    )


def test_site_policy_usernames(policy: AccessPolicy) -> None:
    assert set(policy.usernames) == {
        "box-box-1",
        "observer",
        "operator",
        "homeassistant",
        "terminal-desk",
        "terminal-console",
        "reader-exit-1",
        "reader-exit-2",
        "reader-kit-1",
    }
    assert box_username("box-1") == "box-box-1"
    assert reader_username("kit-1") == "reader-kit-1"
    assert terminal_username("desk") == "terminal-desk"


R, W = Access.READ, Access.WRITE
SITE_GRANTS = [
    ("box-box-1", f"{ROOT}/events/checkout", W, True),
    ("box-box-1", f"{ROOT}/reader/exit-1/sightings", R, True),
    ("box-box-1", f"{ROOT}/reader/kit-1/reply", W, True),
    # The box reads Home Assistant's status to publish its discovery configs.
    ("box-box-1", "homeassistant/status", R, True),
    ("box-box-1", "zigbee2mqtt/bridge/state", R, False),
    ("box-box-1", "nightbox/other/events/checkout", W, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/sightings", W, True),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/status", W, True),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/availability", W, True),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/reply", R, True),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/cmnd/restart", R, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/reply", W, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/sightings", R, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-2/sightings", W, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-2/availability", W, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-2/reply", R, False),
    ("reader-exit-1", f"{ROOT}/api/kits/issue", W, False),
    ("reader-exit-1", f"{ROOT}/api/optin/register", W, False),
    ("reader-exit-1", f"{ROOT}/reader/exit-1/api/kits/issue", W, False),
    ("reader-exit-1", f"{ROOT}/reader/kit-1/api/kits/issue", W, False),
    ("reader-exit-1", f"{ROOT}/events/checkout", R, False),
    ("reader-kit-1", f"{ROOT}/reader/kit-1/api/kits/issue", W, True),
    ("reader-kit-1", f"{ROOT}/reader/kit-1/sightings", W, True),
    ("reader-kit-1", f"{ROOT}/reader/kit-1/reply", R, True),
    ("reader-kit-1", f"{ROOT}/api/kits/issue", W, False),
    ("reader-kit-1", f"{ROOT}/reader/kit-1/api/optin/register", W, False),
    ("reader-kit-1", f"{ROOT}/reader/kit-2/api/kits/issue", W, False),
    ("reader-kit-1", f"{ROOT}/reader/kit-1/api/kits/issue", R, False),
    ("terminal-desk", f"{ROOT}/terminal/desk/api/optin/register", W, True),
    ("terminal-desk", f"{ROOT}/terminal/desk/api/kits/issue", W, True),
    ("terminal-desk", f"{ROOT}/terminal/desk/api/wallet/charge", W, True),
    ("terminal-desk", f"{ROOT}/terminal/desk/api/wallet/charge/x", W, False),
    ("terminal-desk", f"{ROOT}/terminal/desk/api/wallet/charge", R, False),
    ("terminal-desk", f"{ROOT}/terminal/bar-1/api/wallet/charge", W, False),
    ("terminal-desk", f"{ROOT}/api/optin/register", W, False),
    ("terminal-desk", f"{ROOT}/api/wallet/charge", W, False),
    ("terminal-desk", f"{ROOT}/reader/kit-1/api/kits/issue", W, False),
    ("terminal-desk", f"{ROOT}/terminal/desk/reply", R, True),
    ("terminal-desk", f"{ROOT}/terminal/desk/availability", W, True),
    ("terminal-desk", f"{ROOT}/reader/exit-1/sightings", W, False),
    ("terminal-console", f"{ROOT}/terminal/console/api/console/unlock", W, True),
    ("terminal-console", f"{ROOT}/terminal/console/reply", R, True),
    ("terminal-console", f"{ROOT}/events/checkout", R, True),
    ("terminal-console", f"{ROOT}/box/box-1/tele/state", R, True),
    ("terminal-console", f"{ROOT}/box/box-1/console/jobs/0a1b", R, True),
    ("terminal-console", f"{ROOT}/box/box-1/console/jobs/0a1b", W, False),
    ("terminal-console", f"{ROOT}/terminal/desk/reply", R, False),
    ("terminal-console", f"{ROOT}/terminal/desk/api/wallet/charge", W, False),
    ("terminal-console", f"{ROOT}/terminal/desk/api/wallet/charge", R, False),
    ("observer", f"{ROOT}/events/checkout", R, True),
    ("observer", f"{ROOT}/reader/exit-1/sightings", R, True),
    ("observer", f"{ROOT}/box/box-1/availability", R, True),
    ("observer", f"{ROOT}/events/checkout", W, False),
    ("observer", f"{ROOT}/api/kits/issue", W, False),
    ("observer", f"{ROOT}/observer/observer/api/kits/issue", W, False),
    ("observer", "homeassistant/status", R, False),
    ("reader-ghost", f"{ROOT}/reader/ghost/sightings", W, False),
]


@pytest.mark.parametrize(("username", "topic", "access", "expected"), SITE_GRANTS)
def test_site_policy_grants(
    policy: AccessPolicy, username: str, topic: str, access: Access, expected: bool
) -> None:
    assert policy.allows(username, topic, access) is expected


@pytest.mark.parametrize(
    "event_type", ["checkout", "kit_issued", "coupon_issued", "fault_raised"]
)
def test_site_policy_only_box_writes_events(
    policy: AccessPolicy, event_type: str
) -> None:
    topic = f"{ROOT}/events/{event_type}"

    writers = [name for name in policy.usernames if policy.allows(name, topic, W)]

    assert writers == ["box-box-1"]


@pytest.mark.parametrize(
    "path", ["api/kits/issue", "api/optin/register", "api/wallet/charge"]
)
def test_site_policy_only_box_writes_shared_api(
    policy: AccessPolicy, path: str
) -> None:
    topic = f"{ROOT}/{path}"

    writers = [name for name in policy.usernames if policy.allows(name, topic, W)]

    assert writers == ["box-box-1"]


def test_site_policy_renders_every_user(policy: AccessPolicy) -> None:
    rendered = policy.render_mosquitto()

    for username in policy.usernames:
        assert f"\nuser {username}\n" in rendered
    # Each device writes requests only under its own topic: the kit reader
    # one action, the desk every action.
    assert f"topic write {ROOT}/reader/kit-1/api/kits/issue\n" in rendered
    assert f"topic write {ROOT}/terminal/desk/api/+/+\n" in rendered
    assert f"{ROOT}/api/" not in rendered
