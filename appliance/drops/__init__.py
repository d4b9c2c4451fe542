"""Limited microdrops with reservations, per-guest limits and per-box quotas."""
