"""Gossip between NovaEdge nodes: SWIM membership, region health, the latency
matrix and replication lag, with no central controller (see DESIGN.md,
"Between regions").

The proxy integrates through ``GossipNode`` (start it with ``start_gossip``)::

    node = await start_gossip(config.gossip)          # GossipConfig
    node.set_local_health(healthy_backends=3, total_backends=4)
    node.latency_matrix()["eu-west-1"]["us-east-1"]  # ms
    node.region_health()["us-east-1"].healthy
    await stop_gossip(node)
"""

from .config import GossipConfig
from .keyring import KeyRing
from .messages import MemberState
from .node import MemberInfo, GossipNode, start_gossip, stop_gossip
from .state import LatencyMatrix, NodeStateRow, RegionHealth

__all__ = [
    "GossipConfig",
    "GossipNode",
    "KeyRing",
    "LatencyMatrix",
    "MemberInfo",
    "MemberState",
    "NodeStateRow",
    "RegionHealth",
    "start_gossip",
    "stop_gossip",
]
