"""Exit check-outs: sightings in, one check-out per band per exit window out."""

from appliance.checkout._batches import Batch, Sighting, parse_batch
from appliance.checkout._health import Fault, HealthMonitor
from appliance.checkout._tracker import (
    Crossing,
    ExitTracker,
    Thresholds,
    corrected_rssi,
)
from appliance.checkout.service import CheckoutService

__all__ = [
    "Batch",
    "CheckoutService",
    "Crossing",
    "ExitTracker",
    "Fault",
    "HealthMonitor",
    "Sighting",
    "Thresholds",
    "corrected_rssi",
    "parse_batch",
]
