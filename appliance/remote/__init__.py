"""The box beyond the venue: store-and-forward sync and remote management."""
