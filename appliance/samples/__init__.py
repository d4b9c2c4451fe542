"""Sample site configuration and capture shipped with Nightbox."""
