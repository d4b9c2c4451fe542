"""Ids in requests and tokens: a trailing line break is not part of an id.

Python's ``$`` also matches before a final newline, so each pattern must
anchor at the true end of the text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import ManualClock
from appliance.errors import PayloadError
from appliance.kits import _validation
from appliance.requests import idempotency_key
from appliance.store import Store
from appliance.tokens import EdgeTokens, TokenError, load_or_create_key
from appliance.wallet import _amounts


@pytest.mark.parametrize(
    ("check", "data"),
    [
        (_validation.band_id, {"band": "ib-1-7\n"}),
        (idempotency_key, {"idempotency_key": "abcdefgh\n"}),
        (lambda data: _amounts.identifier(data, "item"), {"item": "beer\n"}),
        (lambda data: _amounts.currency(data, "EUR"), {"currency": "EUR\n"}),
    ],
    ids=["band", "idempotency-key", "item", "currency"],
)
def test_request_id_trailing_newline(
    check: Callable[[dict[str, Any]], Any], data: dict[str, Any]
) -> None:
    with pytest.raises(PayloadError) as error:
        check(data)

    assert "\\n" in str(error.value)


def test_token_subject_trailing_newline(tmp_path: Path) -> None:
    clock = ManualClock(1_800_000_000.0)
    store = Store(tmp_path / "nightbox.sqlite3", clock)
    key = load_or_create_key(tmp_path / "secrets" / "key.pem")
    tokens = EdgeTokens(
        key, store, clock, issuer="nightbox:club:box-1", audience="club"
    )
    try:
        with pytest.raises(TokenError) as error:
            tokens.issue("bar-1\n", ["pos:charge"], 600)
    finally:
        store.close()

    assert error.value.reason == "malformed"
    assert "'bar-1\\n'" in error.value.message
