"""The control-plane services a node runs, chosen from its config."""
from __future__ import annotations

from .control import ControlPlane


def install_services(control: ControlPlane) -> None:
    """Admin API, active health checks, gossip and anycast attach here."""
