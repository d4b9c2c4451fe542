"""Arbitrary bundle bodies and payloads: no exception, and no change unless ok.

Bodies are either arbitrary JSON objects or objects shaped like each type's
body with arbitrary values mixed with valid ones, so the checks deep inside
each item run too. Every body is signed with a trusted key and a fresh
version, so only the body decides the outcome.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bundle_box
import orjson
import pytest
from bundle_box import NOW, SITE, BundleBox, open_bundle_box, snapshot
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from economy.economy_site import MEMBER_BAND
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.remote.bundles import BUNDLE_TYPES
from appliance.signed_documents import sign_document
from appliance.wallet._ledger import ledger_check

# Versions only grow across the examples of a run, so no example is rejected
# as an old version.
_versions = itertools.count(1)
FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    # One store serves every example, and fresh versions keep them apart.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


def weighted(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Draw from ``common`` four times out of five and from ``rare`` otherwise."""
    return st.integers(0, 4).flatmap(lambda n: rare if n == 0 else common)


def mixed(valid: tuple[Any, ...], invalid: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """Return mostly ``valid`` values, else ``invalid`` ones or arbitrary JSON."""
    return weighted(st.sampled_from(valid), st.sampled_from(invalid) | leaves)


def items(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Return lists of objects with ``fields``, some missing, some not objects."""
    partial = st.fixed_dictionaries({}, optional=fields) | json_values
    return st.lists(weighted(st.fixed_dictionaries(fields), partial), max_size=4)


bands = mixed(("ib-1-7", "ib-1-8", "ib-1-9", MEMBER_BAND), ("IB 1", ""))
SHAPED_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "members": st.fixed_dictionaries(
        {"members": items(band=bands, tier=mixed(("gold",), ("platinum",)))}
    ),
    "topups": st.fixed_dictionaries(
        {
            "topups": items(
                id=mixed(("web-1", "web-2", "web-3", "web-4"), ("", "a b")),
                band=bands,
                amount=mixed((1, 450, 30_000), (50_001, 0, -5)),
                currency=mixed(("EUR",), ("USD", "eur")),
            )
        }
    ),
    "revocations": st.fixed_dictionaries(
        {
            "tokens": items(
                id=mixed(("tok-1", "tok-2", "tok-3"), ("", "a b")),
                reason=mixed(("lost", "stolen"), (" ", "a\nb")),
            )
        }
    ),
    "assets": st.fixed_dictionaries(
        {
            "assets": items(
                sha256=mixed(("a" * 64, "b" * 64, "c" * 64), ("A" * 64, "ab")),
                size=mixed((1, 1024), (0, -1)),
                item=mixed(("tee", "merch"), ("Tee",)),
                name=mixed(("tee.glb",), ("",)),
                type=mixed(("model/gltf-binary", "image/png"), ("text/html",)),
            )
        },
        optional={"budget_bytes": mixed((1 << 20, 10**9), (0, 1))},
    ),
    "config": st.fixed_dictionaries(
        {
            "config": json_values
            | st.just({"site": {"id": "test"}})
            | st.fixed_dictionaries(
                {
                    "sets": items(
                        id=mixed(("set-1",), ("",)),
                        starts_at=mixed(("2027-01-15T22:00:00",), ("tonight",)),
                        ends_at=mixed(("2027-01-16T02:00:00+01:00",), ("",)),
                    )
                }
            )
        }
    ),
}
bodies = st.sampled_from(BUNDLE_TYPES).flatmap(
    lambda bundle_type: st.tuples(
        st.just(bundle_type),
        weighted(
            SHAPED_BODIES[bundle_type],
            st.dictionaries(st.text(max_size=10), json_values, max_size=4),
        ),
    )
)


# The operator key fixture, bound to its fixture name so that pytest finds it.
operator_key = bundle_box.operator_key


@pytest.fixture
def box(tmp_path: Path, operator_key: Ed25519PrivateKey) -> Iterator[BundleBox]:
    opened = open_bundle_box(tmp_path, operator_key)
    yield opened
    opened.store.close()


def state(box: BundleBox) -> tuple[dict[str, list[tuple[Any, ...]]], bytes]:
    """Return the rows that bundles change and the bytes of the site file."""
    return snapshot(box.store), box.config_path.read_bytes()


@FUZZ_SETTINGS
@given(bundle=bodies)
def test_signed_bodies_never_raise(
    box: BundleBox, operator_key: Ed25519PrivateKey, bundle: tuple[str, dict[str, Any]]
) -> None:
    bundle_type, body = bundle
    version = next(_versions)
    document = sign_document(
        operator_key,
        kind="bundle",
        document_type=bundle_type,
        site=SITE,
        body=body,
        issued_at=NOW,
        validity_s=3600,
        version=version,
    )
    before = state(box)

    result = box.applier.apply(bundle_type, orjson.dumps(document))
    event(f"{bundle_type}: {result.get('reason', 'ok')}")

    assert result["kind"] == "bundle"
    assert result["type"] == bundle_type
    assert result["nonce"] == document["nonce"]
    if result["ok"]:
        assert result["result"]["version"] == version
    else:
        assert result["reason"] == "invalid", result
        assert result["message"]
        assert state(box) == before
    assert ledger_check(box.store).ok


@FUZZ_SETTINGS
@given(
    bundle_type=st.text(max_size=12) | st.sampled_from(BUNDLE_TYPES),
    data=st.binary(max_size=200)
    | json_values.map(orjson.dumps)
    | st.dictionaries(st.text(max_size=8), json_values).map(orjson.dumps),
)
def test_unsigned_payloads_rejected(
    box: BundleBox, bundle_type: str, data: bytes
) -> None:
    before = state(box)

    result = box.applier.apply(bundle_type, data)

    assert result["ok"] is False
    assert result["reason"] in ("malformed", "unknown-key", "too-large")
    assert state(box) == before
