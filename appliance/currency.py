"""The minor units of ISO 4217 currencies, in which every amount is kept."""

from __future__ import annotations

# ISO 4217 currencies whose minor unit is not a hundredth (ISO 4217 list
# one, "Minor unit" column). Every other currency has two decimals.
_MINOR_UNIT_DIGITS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


def minor_unit_digits(currency: str) -> int:
    """Return how many decimals ``currency`` has (2 for EUR, 0 for JPY)."""
    return _MINOR_UNIT_DIGITS.get(currency, 2)
