"""Strict reading of form bodies: every rejection names the field."""

from __future__ import annotations

import pytest

from appliance.portal._forms import (
    MAX_FIELD_CHARS,
    FormError,
    parse_form,
    required,
)

FIELDS = frozenset({"email", "csrf", "consent"})


def test_plain_form_decoded() -> None:
    body = b"email=guest%40example.org&consent=yes&csrf=abc"
    assert parse_form(body, FIELDS) == {
        "email": "guest@example.org",
        "consent": "yes",
        "csrf": "abc",
    }


def test_plus_and_utf8_decoded() -> None:
    assert parse_form(b"email=J%C3%BCrgen+K", FIELDS) == {"email": "Jürgen K"}


def test_empty_body_has_no_fields() -> None:
    assert parse_form(b"", FIELDS) == {}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"email=a&email=b", "email", "twice"),
        (b"colour=red", "colour", "unknown field"),
        (b"email=%FF", "email", "UTF-8"),
        (b"%FF=1", None, "UTF-8"),
        (b"\xff\xfe", None, "UTF-8"),
        (b"email", "email", "no value"),
        (b"email=a%0Ab", "email", "control character"),
        (b"email=a%00b", "email", "control character"),
        (b"email=" + b"a" * (MAX_FIELD_CHARS + 1), "email", "longer than"),
    ],
)
def test_bad_bodies_name_field(body: bytes, field: str | None, words: str) -> None:
    with pytest.raises(FormError) as caught:
        parse_form(body, FIELDS)
    assert caught.value.status == 400
    assert caught.value.field == field
    assert words in caught.value.message


def test_messages_never_repeat_values() -> None:
    with pytest.raises(FormError) as caught:
        parse_form(b"email=secret%00value", FIELDS)
    assert "secret" not in caught.value.message


def test_required_names_field() -> None:
    with pytest.raises(FormError) as caught:
        required({"email": "  "}, "email", "an email address")
    assert caught.value.field == "email"
    assert "missing field 'email'" in caught.value.message
    assert required({"email": " a@b.org "}, "email", "x") == "a@b.org"
