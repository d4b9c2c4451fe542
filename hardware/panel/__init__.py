"""The box's panel button, through gpiozero, which turns a press into a clip.

``create_panel_button`` returns None when no pin is configured. Tests and
laptops pass gpiozero's own ``MockFactory`` as ``pin_factory`` (or set
``GPIOZERO_PIN_FACTORY=mock``), and press the button by driving its pin.
"""

from hardware.panel._button import (
    DEFAULT_BOUNCE_S,
    PanelButton,
    PanelError,
    create_panel_button,
)

__all__ = ["DEFAULT_BOUNCE_S", "PanelButton", "PanelError", "create_panel_button"]
