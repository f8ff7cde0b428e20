"""Container networks over CNI: see runtime.network.manager."""

from .manager import DEFAULT_NETWORK, NetworkManager, network_settings
from .ports import PortInUse

__all__ = ["DEFAULT_NETWORK", "NetworkManager", "PortInUse", "network_settings"]
