"""``twistd jumping``: the Jumping gateway or client as a twistd service."""

from twisted.application.service import ServiceMaker

jumping = ServiceMaker("Jumping VPN", "jumping.tap", "Jumping VPN gateway or client", "jumping")
