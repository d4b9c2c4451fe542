"""Edge tokens: the scoped, short-lived credentials of terminals."""

from appliance.tokens._tokens import (
    CLOCK_SKEW_S,
    MAX_TTL_S,
    REASONS,
    SCOPES,
    EdgeTokens,
    IssuedToken,
    TokenClaims,
    TokenError,
    box_tokens,
    load_or_create_key,
    parse_scopes,
)

__all__ = [
    "CLOCK_SKEW_S",
    "MAX_TTL_S",
    "REASONS",
    "SCOPES",
    "EdgeTokens",
    "IssuedToken",
    "TokenClaims",
    "TokenError",
    "box_tokens",
    "load_or_create_key",
    "parse_scopes",
]
