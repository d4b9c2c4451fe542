"""The terminal UI's side on the box: the admin PIN and the console requests."""
