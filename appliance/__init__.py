"""Nightbox appliance services."""
