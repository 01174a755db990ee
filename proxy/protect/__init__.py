"""The protect phase: CIDR ACLs, node-wide GCRA rate limits, 3-sigma detector.

See proxy/protect/engine.py for the contract with the data plane.
"""
from proxy.protect.acl import Acl, CidrSet, compile_acl, parse_ip
from proxy.protect.client import ClientState
from proxy.protect.config import (AclConfig, DetectorConfig, GlobalConfig, MitigationConfig,
                                  ProtectionConfig, RateLimitRule, RouteAcl)
from proxy.protect.detector import Anomaly, Detector
from proxy.protect.engine import Protection, Rejection, SharedState
from proxy.protect.mitigation import Mitigation, MitigationBook
from proxy.protect.ratelimit import GcraTable

__all__ = [
    "Acl", "AclConfig", "Anomaly", "CidrSet", "ClientState", "DetectorConfig", "Detector",
    "GcraTable", "GlobalConfig", "Mitigation", "MitigationBook", "MitigationConfig",
    "Protection", "ProtectionConfig", "RateLimitRule", "Rejection", "RouteAcl",
    "SharedState", "compile_acl", "parse_ip",
]
