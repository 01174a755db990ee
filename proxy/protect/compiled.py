"""One ProtectionConfig compiled for the hot path; immutable once built.

Built on every reload and swapped whole by Protection.apply_config. What
must outlive it (GCRA buckets, detector baselines, mitigations) lives in the
Protection object and the shared table, keyed by stable rule seeds.
"""
from __future__ import annotations

from collections.abc import Mapping

from proxy.protect.acl import Acl, compile_acl
from proxy.protect.config import AclConfig, ProtectionConfig
from proxy.protect.rules import K_ROUTE, Rule, compile_rule

_MAX_ROUTES = 4096          # memo of rules per route name (names come from config)


class CompiledProtection:
    def __init__(self, cfg: ProtectionConfig, route_acls: Mapping[str, AclConfig],
                 salt: int) -> None:
        self.cfg = cfg
        self.default_acl = compile_acl(cfg.acl)
        self.listener_acls: dict[str, Acl | None] = {
            name: compile_acl(a) for name, a in cfg.listeners.items()}
        self.route_acls: dict[str, Acl] = {}
        for name, a in route_acls.items():
            acl = compile_acl(a)
            if acl is not None:
                self.route_acls[name] = acl
        rules = [compile_rule(r, salt) for r in cfg.rate_limits]
        # Shadow rules first: they never refuse, so they see every request
        # that reaches the rules, as they would if they were enforcing.
        self.rules = tuple([r for r in rules if r.shadow] + [r for r in rules if not r.shadow])
        # Rules that need no route can run before routing; the rest need it.
        self.pre_rules = tuple(r for r in self.rules if r.routes is None and r.kind != K_ROUTE)
        self._route_only: dict[str, tuple[Rule, ...]] = {}
        self.all_by_route: dict[str, tuple[Rule, ...]] = {}     # memo of all_for

    def route_only(self, route: str) -> tuple[Rule, ...]:
        """Rules that need the route (for check_route after a pre-route check)."""
        rs = self._route_only.get(route)
        if rs is None:
            rs = tuple(r for r in self.rules if r not in self.pre_rules
                       and (r.routes is None or route in r.routes))
            if len(self._route_only) < _MAX_ROUTES:
                self._route_only[route] = rs
        return rs

    def all_for(self, route: str) -> tuple[Rule, ...]:
        """pre_rules + route_only(route): one pass when the route is known."""
        rs = self.all_by_route.get(route)
        if rs is None:
            rs = self.pre_rules + self.route_only(route)
            if len(self.all_by_route) < _MAX_ROUTES:
                self.all_by_route[route] = rs
        return rs
