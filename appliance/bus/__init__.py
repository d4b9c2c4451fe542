"""The Nightbox MQTT bus."""
