"""Wristband wallets on a double-entry ledger."""
