"""The Nightbox console: a terminal UI that shows and operates a box over MQTT.

``nightbox tui`` starts it (see ``tui.cli``). It talks to the box only over
the box's broker, as terminal ``console``, so it works the same on the box
and on a laptop on the venue's network.
"""
