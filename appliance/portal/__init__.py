"""The guest portal: the pages guests open on their phones by scanning a QR code."""

from appliance.portal.config import PortalConfig, parse_portal

__all__ = ["PortalConfig", "parse_portal"]
