"""Signed bundles applied to a real store: each type's effect, each rejection.

Bundles are signed with an Ed25519 key generated per test, which the box's
configuration trusts. The store is a real SQLite file in the test's folder,
and a rejected bundle must leave every table as it was.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bundle_box
import orjson
import pytest
from bundle_box import NOW, SITE, SITE_TOML, BundleBox, open_bundle_box, snapshot
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from economy.economy_site import MEMBER_BAND

from appliance.commerce._pricing import Pricing
from appliance.config import load_config
from appliance.remote.bundles import MAX_BUNDLE_BYTES, BundleApplier
from appliance.signed_documents import CLOCK_SKEW_S, key_id, sign_document
from appliance.store import Store
from appliance.tokens import TokenError
from appliance.wallet._ledger import ledger_check

# The operator key fixture, bound to its fixture name so that pytest finds it.
operator_key = bundle_box.operator_key


@pytest.fixture
def box(tmp_path: Path, operator_key: Ed25519PrivateKey) -> Iterator[BundleBox]:
    opened = open_bundle_box(tmp_path, operator_key)
    yield opened
    opened.store.close()


def signed(
    key: Ed25519PrivateKey,
    bundle_type: str,
    body: dict[str, Any],
    version: int = 1,
    **changes: Any,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "kind": "bundle",
        "document_type": bundle_type,
        "site": SITE,
        "body": body,
        "issued_at": NOW,
        "validity_s": 3600,
        "version": version,
    }
    fields.update(changes)
    return sign_document(key, **fields)


def payload(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


def events(store: Store, event_type: str) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT body FROM outbox WHERE type = ? ORDER BY seq", (event_type,)
    )
    return [orjson.loads(body) for (body,) in rows]


def apply(setup: BundleBox, document: dict[str, Any]) -> dict[str, Any]:
    return setup.applier.apply(document["type"], payload(document))


def balance(store: Store, band: str) -> int | None:
    row = store.query_one("SELECT balance FROM wallets WHERE band = ?", (band,))
    return None if row is None else int(row[0])


# Members


def test_members_replace_bundle_rows(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    first = signed(
        operator_key,
        "members",
        {
            "members": [
                {"band": "ib-1-7", "tier": "gold"},
                {"band": "ib-1-8", "tier": "gold"},
            ]
        },
    )
    second = signed(
        operator_key,
        "members",
        {
            "members": [
                {"band": "ib-1-8", "tier": "gold"},
                {"band": MEMBER_BAND, "tier": "gold"},
            ]
        },
        version=2,
    )

    result = apply(box, first)
    replaced = apply(box, second)

    assert result["ok"] is True
    assert result["result"] == {
        "version": 1,
        "members": 2,
        "replaced": 0,
        "configured_skipped": 0,
    }
    assert replaced["result"]["replaced"] == 2
    assert replaced["result"]["configured_skipped"] == 1
    rows = box.store.query("SELECT band, tier, source FROM members ORDER BY band")
    assert rows == [("ib-1-8", "gold", "bundle"), (MEMBER_BAND, "gold", "config")]


def test_members_bundle_grants_tier(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    pricing = Pricing(box.config.commerce)
    kit_bundle = box.config.commerce.item("kit-bundle")
    apply(
        box,
        signed(
            operator_key, "members", {"members": [{"band": "ib-1-7", "tier": "gold"}]}
        ),
    )

    with box.store.transaction() as transaction:
        tier = pricing.tier_of(transaction, "ib-1-7")
        price = pricing.price(
            transaction,
            band="ib-1-7",
            item=kit_bundle,
            list_amount=1500,
            data={},
            use="charges",
            now=NOW,
        )

    assert tier is not None
    assert tier.id == "gold"
    # The drops service opens early access to tiers with early_access.
    assert tier.early_access is True
    assert price.discount == 300


def test_members_event_has_counts(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = signed(
        operator_key, "members", {"members": [{"band": "ib-1-7", "tier": "gold"}]}, 4
    )

    apply(box, document)

    (event,) = events(box.store, "bundle_applied")
    assert event == {
        "type": "members",
        "version": 4,
        "key": key_id(operator_key.public_key()),
        "nonce": document["nonce"],
        "counts": {"members": 1, "replaced": 0, "configured_skipped": 0},
    }


# Top-ups


def topup(topup_id: str, band: str = "ib-1-7", amount: int = 2000) -> dict[str, Any]:
    return {"id": topup_id, "band": band, "amount": amount, "currency": "EUR"}


def test_topups_credit_wallets(box: BundleBox, operator_key: Ed25519PrivateKey) -> None:
    document = signed(
        operator_key,
        "topups",
        {
            "topups": [
                topup("web-1"),
                topup("web-2", amount=500),
                topup("web-3", "ib-1-8"),
            ]
        },
    )

    result = apply(box, document)

    assert result["ok"] is True
    assert result["result"] == {
        "version": 1,
        "credited": 3,
        "already_applied": 0,
        "amount": 4500,
        "currency": "EUR",
    }
    assert balance(box.store, "ib-1-7") == 2500
    assert balance(box.store, "ib-1-8") == 2000
    check = ledger_check(box.store)
    assert check.ok, check.to_json()
    assert box.store.query(
        "SELECT SUM(amount) FROM ledger_entries WHERE account = 'tender:online'"
    ) == [(-4500,)]
    credited = events(box.store, "wallet_topup")
    assert [event["topup_id"] for event in credited] == ["web-1", "web-2", "web-3"]
    assert {event["method"] for event in credited} == {"online"}


def test_topup_repeated_credited_once(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    apply(box, signed(operator_key, "topups", {"topups": [topup("web-1")]}))
    second = signed(
        operator_key, "topups", {"topups": [topup("web-1"), topup("web-2")]}, version=2
    )

    result = apply(box, second)

    assert result["ok"] is True
    assert result["result"]["credited"] == 1
    assert result["result"]["already_applied"] == 1
    assert balance(box.store, "ib-1-7") == 4000
    assert box.store.query("SELECT id FROM online_topups ORDER BY id") == [
        ("web-1",),
        ("web-2",),
    ]
    assert ledger_check(box.store).ok


def test_topup_id_reused_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    apply(box, signed(operator_key, "topups", {"topups": [topup("web-1")]}))
    before = snapshot(box.store)
    second = signed(
        operator_key,
        "topups",
        {"topups": [topup("web-2"), topup("web-1", amount=999)]},
        version=2,
    )

    result = apply(box, second)

    assert result["reason"] == "invalid"
    assert "topups[1].id = 'web-1' was applied before as 2000" in result["message"]
    assert snapshot(box.store) == before


def test_topup_night_limit_rolls_back(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    # The site allows 60,000 per band per night: the first two top-ups fit,
    # the third does not, and the whole bundle is rejected.
    document = signed(
        operator_key,
        "topups",
        {
            "topups": [
                topup("web-1", amount=30_000),
                topup("web-2", amount=30_000),
                topup("web-3", amount=1),
            ]
        },
    )
    before = snapshot(box.store)

    result = apply(box, document)

    assert result["reason"] == "invalid"
    assert "topups[2]" in result["message"]
    assert "wallet.night_topup_limit = 60000" in result["message"]
    assert snapshot(box.store) == before


# Revocations


def test_revoked_token_refused(box: BundleBox, operator_key: Ed25519PrivateKey) -> None:
    issued = box.tokens.issue("bar-1", ["pos:charge"], 3600)
    other = box.tokens.issue("bar-2", ["pos:charge"], 3600)
    box.tokens.verify(issued.token, "pos:charge", "bar-1")
    document = signed(
        operator_key,
        "revocations",
        {"tokens": [{"id": issued.claims.token_id, "reason": "phone lost"}]},
    )

    result = apply(box, document)

    assert result["ok"] is True
    assert result["result"] == {"version": 1, "revoked": 1, "already_revoked": 0}
    with pytest.raises(TokenError) as error:
        box.tokens.verify(issued.token, "pos:charge", "bar-1")
    assert error.value.reason == "revoked"
    assert box.tokens.verify(other.token, "pos:charge", "bar-2").subject == "bar-2"
    assert box.store.query("SELECT id, reason FROM revoked_tokens") == [
        (issued.claims.token_id, "phone lost")
    ]


def test_revocation_repeated_counted(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    box.tokens.revoke("tok-1", "revoked at the desk")
    document = signed(
        operator_key,
        "revocations",
        {
            "tokens": [
                {"id": "tok-1", "reason": "lost"},
                {"id": "tok-2", "reason": "lost"},
            ]
        },
    )

    result = apply(box, document)

    assert result["result"]["revoked"] == 1
    assert result["result"]["already_revoked"] == 1
    assert box.store.query("SELECT reason FROM revoked_tokens WHERE id = 'tok-1'") == [
        ("revoked at the desk",)
    ]


# Assets


def asset(name: str, size: int = 1024) -> dict[str, Any]:
    return {
        "sha256": hashlib.sha256(name.encode()).hexdigest(),
        "size": size,
        "item": "tee",
        "name": name,
        "type": "model/gltf-binary",
    }


def test_asset_manifest_stored(box: BundleBox, operator_key: Ed25519PrivateKey) -> None:
    body = {"assets": [asset("tee.glb"), asset("cap.glb", 2048)], "budget_bytes": 10**8}

    result = apply(box, signed(operator_key, "assets", body, version=3))

    assert result["ok"] is True
    assert result["result"] == {"version": 3, "assets": 2, "bytes": 3072}
    rows = box.store.query("SELECT version, body, applied_at FROM asset_manifests")
    assert rows == [(3, orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode(), NOW)]


# Configuration


def test_config_bundle_replaces_file(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = tomllib.loads(SITE_TOML)
    document["wallet"]["max_charge"] = 15_000

    result = apply(box, signed(operator_key, "config", {"config": document}))

    assert result["ok"] is True
    assert result["result"] == {"version": 1, "restart_required": True}
    written = tomllib.loads(box.config_path.read_text(encoding="utf-8"))
    assert written["wallet"]["max_charge"] == 15_000
    previous = box.config_path.with_name("site.toml.previous")
    assert previous.read_text(encoding="utf-8") == SITE_TOML
    assert box.store.query("SELECT type, version FROM bundle_versions") == [
        ("config", 1)
    ]


def test_config_date_times_from_iso(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = tomllib.loads(SITE_TOML)
    document["items"] = [{"id": "tee", "name": "Tee", "price": 3500}]
    document["drops"] = [
        {
            "id": "tee-drop",
            "item": "tee",
            "price": 3500,
            "quantity": 10,
            "starts_at": "2027-01-15T22:00:00+01:00",
            "ends_at": "2027-01-16T02:00:00",
        }
    ]

    result = apply(box, signed(operator_key, "config", {"config": document}))

    assert result["ok"] is True
    (drop,) = load_config(box.config_path).commerce.drops
    assert drop.starts_at == NOW + 13 * 3600
    # A date-time without an offset is read in site.timezone (UTC here).
    assert drop.ends_at == NOW + 18 * 3600


def test_config_bad_date_time_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = tomllib.loads(SITE_TOML)
    document["sets"] = [{"id": "set-1", "starts_at": "tonight", "ends_at": "late"}]

    result = apply(box, signed(operator_key, "config", {"config": document}))

    assert result["reason"] == "invalid"
    assert (
        "config.sets[0].starts_at = 'tonight' is not an ISO 8601" in (result["message"])
    )
    assert box.config_path.read_text(encoding="utf-8") == SITE_TOML


def test_config_for_other_box_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = tomllib.loads(SITE_TOML)
    document["box"]["id"] = "box-2"
    before = snapshot(box.store)

    result = apply(box, signed(operator_key, "config", {"config": document}))

    assert result["reason"] == "invalid"
    assert "box.id = 'box-2' differs from this box's id" in result["message"]
    assert box.config_path.read_text(encoding="utf-8") == SITE_TOML
    assert snapshot(box.store) == before


def test_config_other_box_named_first(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = tomllib.loads(SITE_TOML)
    document["box"]["id"] = "box-2"
    document["sets"] = [{"id": "set-1", "starts_at": "tonight", "ends_at": "late"}]

    result = apply(box, signed(operator_key, "config", {"config": document}))

    assert result["reason"] == "invalid"
    assert "box.id = 'box-2' differs from this box's id" in result["message"]
    assert box.config_path.read_text(encoding="utf-8") == SITE_TOML


@pytest.mark.parametrize(
    ("table", "value", "key"),
    [
        ("box", {"id": "box-1", "data_dir": "../../tmp/evil"}, "box.data_dir"),
        ("sync", {"broker": "mqtts://elsewhere.example:8883"}, "sync"),
        ("fleet", {"operator_keys": []}, "fleet"),
        ("broker", {"mode": "external", "port": 1883}, "broker"),
    ],
)
def test_config_local_only_change_rejected(
    box: BundleBox,
    operator_key: Ed25519PrivateKey,
    table: str,
    value: dict[str, Any],
    key: str,
) -> None:
    document = tomllib.loads(SITE_TOML)
    document[table] = value
    before = snapshot(box.store)

    result = apply(box, signed(operator_key, "config", {"config": document}))

    assert result["reason"] == "invalid"
    assert f"{key} differs from the configuration file on the box" in result["message"]
    assert "can be changed only in that file" in result["message"]
    assert box.config_path.read_text(encoding="utf-8") == SITE_TOML
    assert snapshot(box.store) == before


def test_config_without_path_unavailable(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    applier = BundleApplier(
        box.store, box.config, box.clock, box.tokens, config_path=None
    )
    document = signed(operator_key, "config", {"config": tomllib.loads(SITE_TOML)})
    before = snapshot(box.store)

    result = applier.apply("config", payload(document))

    assert result["reason"] == "unavailable"
    assert "nightbox run --config" in result["message"]
    assert snapshot(box.store) == before


# Rejections of the document


def test_same_bundle_again_replayed(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = signed(operator_key, "topups", {"topups": [topup("web-1")]})
    apply(box, document)
    before = snapshot(box.store)

    result = apply(box, document)

    assert result["ok"] is False
    assert result["reason"] == "replayed"
    assert result["nonce"] == document["nonce"]
    assert snapshot(box.store) == before
    assert balance(box.store, "ib-1-7") == 2000


@pytest.mark.parametrize("version", [4, 5])
def test_older_version_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey, version: int
) -> None:
    apply(box, signed(operator_key, "members", {"members": []}, version=5))
    before = snapshot(box.store)
    older = signed(
        operator_key,
        "members",
        {"members": [{"band": "ib-1-7", "tier": "gold"}]},
        version=version,
    )

    result = apply(box, older)

    assert result["reason"] == "old-version"
    assert (
        f"version {version} is not newer than the applied version 5"
        in (result["message"])
    )
    assert snapshot(box.store) == before


def test_versions_count_per_type(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    apply(box, signed(operator_key, "members", {"members": []}, version=5))

    result = apply(box, signed(operator_key, "revocations", {"tokens": []}, version=1))

    assert result["ok"] is True


def test_tampered_body_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = signed(operator_key, "topups", {"topups": [topup("web-1")]})
    document["body"]["topups"][0]["amount"] = 50_000
    before = snapshot(box.store)

    result = apply(box, document)

    assert result["reason"] == "bad-signature"
    assert snapshot(box.store) == before


def test_other_site_rejected(box: BundleBox, operator_key: Ed25519PrivateKey) -> None:
    document = signed(operator_key, "members", {"members": []}, site="annex")

    result = apply(box, document)

    assert result["reason"] == "wrong-site"
    assert "'annex'" in result["message"]


def test_unknown_key_rejected(box: BundleBox) -> None:
    stranger = Ed25519PrivateKey.generate()

    result = apply(box, signed(stranger, "members", {"members": []}))

    assert result["reason"] == "unknown-key"
    assert key_id(stranger.public_key()) in result["message"]


def test_expired_bundle_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = signed(operator_key, "members", {"members": []})
    box.clock.advance_to(NOW + 3600 + CLOCK_SKEW_S + 1)

    result = apply(box, document)

    assert result["reason"] == "expired"
    assert "sign a new one" in result["message"]


def test_command_as_bundle_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = signed(operator_key, "members", {}, kind="command", version=None)

    result = apply(box, document)

    assert result["reason"] == "wrong-kind"


@pytest.mark.parametrize(
    "data",
    [b"", b"{not json", b'{"v": 1', b"\xff\xfe", b"[1, 2]", b"null"],
)
def test_malformed_payload_rejected(box: BundleBox, data: bytes) -> None:
    before = snapshot(box.store)

    result = box.applier.apply("members", data)

    assert result == {
        "kind": "bundle",
        "type": "members",
        "nonce": None,
        "ok": False,
        "reason": "malformed",
        "message": result["message"],
    }
    assert snapshot(box.store) == before


def test_oversized_payload_rejected(box: BundleBox) -> None:
    result = box.applier.apply("members", b" " * (MAX_BUNDLE_BYTES + 1))

    assert result["reason"] == "too-large"
    assert f"{MAX_BUNDLE_BYTES + 1} bytes" in result["message"]


def test_topic_type_mismatch_rejected(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    document = signed(operator_key, "members", {"members": []})

    result = box.applier.apply("topups", payload(document))

    assert result["reason"] == "malformed"
    assert "publish it on bundle/members" in result["message"]
    assert box.store.query("SELECT COUNT(*) FROM signed_nonces") == [(0,)]


def test_unknown_type_rejected(box: BundleBox, operator_key: Ed25519PrivateKey) -> None:
    document = signed(operator_key, "firmware", {"url": "x"})

    result = apply(box, document)

    assert result["reason"] == "unknown-type"
    assert "firmware" in result["message"]
    assert box.store.query("SELECT COUNT(*) FROM signed_nonces") == [(0,)]


def test_store_failure_reported(
    box: BundleBox, operator_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    box.store.close()

    with caplog.at_level(logging.WARNING, logger="appliance.remote.bundles"):
        result = apply(box, signed(operator_key, "members", {"members": []}))

    assert result["reason"] == "failed"
    assert "send it again" in result["message"]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


@pytest.mark.parametrize("version", [2**63, 2**64 - 1])
def test_version_above_max_malformed(
    box: BundleBox, operator_key: Ed25519PrivateKey, version: int
) -> None:
    document = signed(operator_key, "members", {"members": []}, version=version)

    result = apply(box, document)

    assert result["reason"] == "malformed"
    assert "maximum 9223372036854775807" in result["message"]
    assert result["nonce"] == document["nonce"]
    assert box.store.query("SELECT COUNT(*) FROM bundle_versions") == [(0,)]


def test_internal_error_names_nonce(
    box: BundleBox,
    operator_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(*arguments: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("appliance.remote._bundle_bodies.parse_members", fail)
    document = signed(operator_key, "members", {"members": []})

    with caplog.at_level(logging.WARNING, logger="appliance.remote.bundles"):
        result = apply(box, document)

    assert result["ok"] is False
    assert result["reason"] == "internal-error"
    assert "RuntimeError" in result["message"]
    assert result["nonce"] == document["nonce"]
    assert box.applier.counts == {"internal-error": 1}
    (record,) = caplog.records
    assert record.exc_info is not None


def test_store_failure_names_nonce(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    box.store.close()
    document = signed(operator_key, "members", {"members": []})

    result = apply(box, document)

    assert result["reason"] == "failed"
    assert result["nonce"] == document["nonce"]


# Invalid bodies


GOOD_MEMBER = {"band": "ib-1-7", "tier": "gold"}
GOOD_TOPUP = topup("web-1")
GOOD_TOKEN = {"id": "tok-1", "reason": "lost"}


@pytest.mark.parametrize(
    ("bundle_type", "body", "words"),
    [
        ("members", {}, "field 'members' must be a list"),
        ("members", {"members": [], "extra": 1}, "unknown field 'extra'"),
        ("members", {"members": [GOOD_MEMBER, "ib-1-8"]}, "members[1] must be an"),
        (
            "members",
            {"members": [GOOD_MEMBER, {"band": "ib-1-8", "tier": "platinum"}]},
            "members[1].tier = 'platinum' is not a tier of this site (gold)",
        ),
        (
            "members",
            {"members": [{"band": "IB 1", "tier": "gold"}]},
            "members[0].band = 'IB 1' is not a band id",
        ),
        (
            "members",
            {"members": [GOOD_MEMBER, GOOD_MEMBER]},
            "members[1].band = 'ib-1-7' repeats members[0]",
        ),
        (
            "members",
            {"members": [{"band": "ib-1-7", "tier": "gold", "email": "a@b.c"}]},
            "members[0] has unknown field 'email'",
        ),
        (
            "topups",
            {"topups": [GOOD_TOPUP, {**topup("web-2"), "currency": "USD"}]},
            "topups[1].currency = 'USD' is not this site's wallet currency",
        ),
        (
            "topups",
            {"topups": [topup("web-1", amount=-5)]},
            "topups[0].amount = -5 is invalid",
        ),
        ("topups", {"topups": [topup("web-1", amount=0)]}, "topups[0].amount = 0"),
        (
            "topups",
            {"topups": [{**GOOD_TOPUP, "amount": True}]},
            "topups[0].amount = True",
        ),
        (
            "topups",
            {"topups": [{**GOOD_TOPUP, "amount": 4.5}]},
            "topups[0].amount = 4.5",
        ),
        (
            "topups",
            {"topups": [topup("web-1", amount=50_001)]},
            "above wallet.max_topup = 50000",
        ),
        (
            "topups",
            {"topups": [GOOD_TOPUP, topup("web-1", "ib-1-8")]},
            "topups[1].id = 'web-1' repeats topups[0]",
        ),
        (
            "topups",
            {"topups": [{"id": "web-1", "band": "ib-1-7", "amount": 100}]},
            "topups[0].currency = None",
        ),
        ("topups", {"topups": [{**GOOD_TOPUP, "id": ""}]}, "topups[0].id = ''"),
        (
            "revocations",
            {"tokens": [GOOD_TOKEN, GOOD_TOKEN]},
            "tokens[1].id = 'tok-1' repeats tokens[0]",
        ),
        (
            "revocations",
            {"tokens": [{"id": "tok-1", "reason": "  "}]},
            "tokens[0].reason = '  ' is invalid",
        ),
        (
            "revocations",
            {"tokens": [{"id": "tok-1", "reason": "a\nb"}]},
            "without control characters",
        ),
        ("revocations", {"tokens": [{"id": "tok-1"}]}, "tokens[0].reason is missing"),
        (
            "assets",
            {"assets": [asset("a.glb"), asset("a.glb")]},
            "assets[1].sha256 repeats assets[0]",
        ),
        (
            "assets",
            {"assets": [asset("a.glb", size=-1)]},
            "assets[0].size = -1 is invalid",
        ),
        (
            "assets",
            {"assets": [{**asset("a.glb"), "sha256": "ABC"}]},
            "assets[0].sha256 = 'ABC' is not a SHA-256 digest",
        ),
        (
            "assets",
            {"assets": [{**asset("a.glb"), "type": "text/html"}]},
            "assets[0].type = 'text/html' is not a served media type",
        ),
        (
            "assets",
            {"assets": [{**asset("a.glb"), "item": "Tee Shirt"}]},
            "assets[0].item = 'Tee Shirt' is not an item id",
        ),
        (
            "assets",
            {"assets": [], "budget_bytes": 0},
            "body.budget_bytes = 0 is invalid",
        ),
        ("config", {"config": [1]}, "field 'config' must be the whole site"),
    ],
)
def test_invalid_item_rejects_bundle(
    box: BundleBox,
    operator_key: Ed25519PrivateKey,
    bundle_type: str,
    body: dict[str, Any],
    words: str,
) -> None:
    before = snapshot(box.store)

    result = apply(box, signed(operator_key, bundle_type, body))

    assert result["ok"] is False
    assert result["reason"] == "invalid"
    assert words in result["message"]
    assert snapshot(box.store) == before
    assert box.applier.counts == {"invalid": 1}


# Logging and counting


def test_rejections_logged_once_counted_all(
    box: BundleBox, operator_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    documents = [signed(operator_key, "members", {"members": []}) for _ in range(3)]
    for document in documents:
        document["body"] = {"members": [GOOD_MEMBER]}

    with caplog.at_level(logging.WARNING, logger="appliance.remote.bundles"):
        results = [apply(box, document) for document in documents]

    assert [result["reason"] for result in results] == ["bad-signature"] * 3
    assert box.applier.counts == {"bad-signature": 3}
    assert len(caplog.records) == 1
    assert documents[0]["nonce"] in caplog.text
    for document in documents:
        assert document["sig"] not in caplog.text


def test_applied_bundles_counted(
    box: BundleBox, operator_key: Ed25519PrivateKey
) -> None:
    apply(box, signed(operator_key, "members", {"members": []}))
    apply(box, signed(operator_key, "revocations", {"tokens": []}))

    assert box.applier.applied == {"members": 1, "revocations": 1}
    assert box.applier.counts == {}
