"""Stand-in for MicroPython's ``network`` module: a WLAN driven by the test."""

STA_IF = 0
AP_IF = 1
_interfaces = {}


class WLAN:
    """A Wi-Fi interface; ``connect`` joins at once unless ``reachable`` is False."""

    def __new__(cls, interface=STA_IF):
        wlan = _interfaces.get(interface)
        if wlan is None:
            wlan = object.__new__(cls)
            wlan.is_active = False
            wlan.up = False
            wlan.reachable = True
            wlan.joins = []
            _interfaces[interface] = wlan
        return wlan

    def __init__(self, interface=STA_IF):
        pass

    def active(self, value=None):
        if value is None:
            return self.is_active
        self.is_active = bool(value)

    def connect(self, ssid, key=None):
        self.joins.append(ssid)
        self.up = self.reachable and self.is_active

    def disconnect(self):
        self.up = False

    def isconnected(self):
        return self.up

    def set_up(self, up):
        """Drive the link up or down."""
        self.up = up
        self.reachable = up


def clear():
    """Forget every interface."""
    _interfaces.clear()
