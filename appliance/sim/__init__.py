"""A simulated night: guests with wristbands, exits with readers, a kit station."""
