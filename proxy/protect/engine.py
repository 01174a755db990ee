"""The protect phase: ACLs, rate limits and 3-sigma mitigations, per request.

Contract for the data plane (one `Protection` per worker process, kept
across reloads):

  supervisor, before fork:  shared = SharedState(table_size, workers)
  each worker:              prot = Protection(shared); prot.apply_config(cfg, route_acls)
  on reload:                prot.apply_config(new_cfg, new_route_acls)
  on accept (after PROXY):  if not prot.permits_connection(listener, ip): close
                            client = prot.client(ip, geo)       # keep on the connection
  per request, after the route is matched, before any upstream work:
                            rej = prot.check(ctx, time.monotonic(), client)
                            if rej: answer rej.status, rej.headers, body rej.reason
  or split around routing (the node's `protect` and `route_check` hooks):
                            rej = prot.check(ctx, now, client)   # ctx.route is None
                            ... match the route, set ctx.route ...
                            rej = prot.check_route(ctx, now, client)
  at least once a second:   prot.tick(time.monotonic())      # the node's 0.25 s sweep is fine

`check` never awaits and never raises for odd input (unparsable address:
ACLs fail closed, rate limits key on the raw text). It appends verdicts to
ctx.verdicts ("acl:route:deny", "ratelimit:per-ip:reject",
"ratelimit:per-ip:shadow", "anomaly:block:ip", "anomaly:limit:prefix:shadow").

Order inside check: listener ACL, route ACL (both memoized per
connection), detector counting (offered load, so refused requests still
count), active mitigations, then rate-limit rules in config order, shadow
rules first. A request refused by a rule is refunded to the rules that
charged it before, so refused requests use no quota.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import xxhash

from proxy.protect.client import ClientState
from proxy.protect.compiled import CompiledProtection
from proxy.protect.config import AclConfig, ProtectionConfig
from proxy.protect.detector import Anomaly, Detector
from proxy.protect.mitigation import Mitigation, MitigationBook, limit_burst
from proxy.protect.ratelimit import GcraTable
from proxy.protect.rules import K_IP, K_PREFIX, Rule, limit_headers, rule_seed

log = logging.getLogger("novaedge.protect")
_xxh = xxhash.xxh3_64_intdigest
# ClientState cache for callers that pass none. ~0.9 KB an entry: at 65,536
# a spoofed flood kept ~60 MiB busy; the data plane passes its own memo.
_CLIENT_CACHE = 8_192
_LOG_BUDGET = 20                # request-level log lines per rule per second


_NO_PENDING: tuple[Any, Any] = (None, None)
_PRE, _ROUTE, _BOTH = 0, 1, 2       # which part of the phase a call covers


class SharedState:
    """Node-wide state. Build it in the supervisor BEFORE forking workers:
    the GCRA table's memory and locks are inherited by fork."""

    def __init__(self, table_size: int = 1 << 20, workers: int = 1,
                 shared: bool | None = None) -> None:
        self.workers = max(1, workers)
        self.table = GcraTable(table_size, shared=self.workers > 1 if shared is None else shared)
        self.salt = int.from_bytes(os.urandom(8), "big")


class Rejection:
    __slots__ = ("status", "headers", "reason")

    def __init__(self, status: int, reason: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status          # 403 (ACL) or 429 (rate limit, anomaly)
        self.reason = reason          # short text for the body and the log
        self.headers = headers or []  # extra response headers

    def __repr__(self) -> str:
        return f"Rejection({self.status}, {self.reason!r})"


class _Fields:
    """Log argument rendered as JSON only if the record is emitted."""
    __slots__ = ("d",)

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    def __str__(self) -> str:
        return json.dumps(self.d, default=str, separators=(",", ":"))


class Protection:
    def __init__(self, shared: SharedState | None = None) -> None:
        # Without a SharedState (single process, tests) the table is ours and
        # is sized by the first config applied.
        self._own_table = shared is None
        self.shared = shared or SharedState(1024, workers=1)
        self.table = self.shared.table
        self.workers = self.shared.workers
        self._snap = CompiledProtection(ProtectionConfig(), {}, self.shared.salt)
        self._det: Detector | None = None
        self._book: MitigationBook | None = None
        self._counters: Counter[tuple[str, str]] = Counter()
        self._clients: dict[str, ClientState] = {}
        self._mit_rules: dict[str, Rule] = {}
        self._log_budget: dict[str, int] = {}
        self._budget_since = float("-inf")
        self._pending: tuple[Any, list[Rule] | None] = _NO_PENDING
        self._admit = self.table.admit
        self._c_prefix: dict[str, int] | None = None  # detector: prefixes watched?
        self._c_route: dict[str, int] | None = None   # detector: per-route counts

    # ---- control plane -------------------------------------------------

    def apply_config(self, cfg: ProtectionConfig,
                     route_acls: Mapping[str, AclConfig] | None = None) -> None:
        """Swap in a new config. Buckets of unchanged rules, detector
        baselines and active mitigations carry over."""
        if self._own_table:
            self._own_table = False
            if cfg.table_size != self.table.slots:
                self.shared.table = self.table = GcraTable(cfg.table_size)
                self._admit = self.table.admit
        elif cfg.table_size > self.table.slots:
            log.warning("protection.table_size %d > allocated %d slots: needs a restart",
                        cfg.table_size, self.table.slots)
        snap = CompiledProtection(cfg, route_acls or {}, self.shared.salt)
        d = cfg.detector
        if d.enabled:
            det = Detector(d, self.workers)
            old = self._det
            if old is not None:                  # keep baselines of kinds still watched
                for kind in det.kinds:
                    if kind in old.stats:
                        det.stats[kind] = old.stats[kind]
                det.gstats, det.ticks, det.last_tick = old.gstats, old.ticks, old.last_tick
                det.total, det.active = old.total, old.active     # the open period
            book = MitigationBook(d, self.workers)
            if self._book is not None:
                book.active, book.count = self._book.active, self._book.count
            self._det, self._book = det, book
        else:
            self._det, self._book = None, None
        cur = self._det.cur if self._det is not None else {}
        self._c_prefix, self._c_route = cur.get("prefix"), cur.get("route")
        self._mit_rules = {}
        self._snap = snap
        self._clients.clear()
        log.info("protection config applied %s", _Fields({
            "rules": [r.name for r in snap.rules], "detector": d.enabled,
            "acl": snap.default_acl is not None, "route_acls": len(snap.route_acls)}))

    def permits_connection(self, listener: str, client_ip: str) -> bool:
        """Listener ACL, for the data plane to close a connection at accept."""
        snap = self._snap
        acl = snap.listener_acls.get(listener, snap.default_acl)
        if acl is None or acl.permits(client_ip):
            return True
        self._counters[("acl:listener", "deny")] += 1
        self._log_req("acl:listener", "acl deny", {"ip": client_ip, "listener": listener})
        return False

    def client(self, client_ip: str, geo: Any = None) -> ClientState:
        """Per-connection memo to pass to every `check` of the connection."""
        return ClientState(client_ip, geo)

    # ---- request path --------------------------------------------------
    # Measured choices (loadtests/bench_protect.py): no allocation on the
    # admitted path (refunds are recomputed on the rare refusal instead of
    # recording charges); detector counting on the connection's ClientState
    # (one attribute increment instead of three dict updates: the detector's
    # share of a hot request went from ~340 to ~240 ns in a tight loop);
    # the listener ACL verdict and per-connection key hashes memoized on it.

    def check(self, ctx: Any, now: float, client: ClientState | None = None) -> Rejection | None:
        """The whole phase. With ctx.route unset (protect before routing) it
        does the route-independent part; then call `check_route` once the
        route is known. With ctx.route set it does both parts at once."""
        snap = self._snap
        ip = ctx.client_ip
        geo = ctx.geo
        if client is None or client.ip != ip or (client.geo is not geo and client.geo != geo):
            client = self._client_for(ip, geo)
        acl = snap.listener_acls.get(ctx.listener, snap.default_acl) \
            if snap.listener_acls else snap.default_acl
        if acl is not None:
            if client.lacl is not acl:           # once per connection (and reload)
                client.lacl_ok = client.permits(acl)
                client.lacl = acl
            if not client.lacl_ok:
                return self._acl_deny(ctx, "listener")
        route = ctx.route
        if route is not None:
            rname = route.name
            if snap.route_acls:
                racl = snap.route_acls.get(rname)
                if racl is not None:
                    memo = client.acl_memo
                    ok = memo.get(racl) if memo is not None else None
                    if ok is None:
                        ok = client.permits(racl)
                    if not ok:
                        return self._acl_deny(ctx, "route")
            rules = snap.all_by_route.get(rname)
            if rules is None:
                rules = snap.all_for(rname)
            part = _BOTH
        else:
            rname = None
            rules = snap.pre_rules
            part = _PRE

        det = self._det
        if det is not None:
            det.total += 1
            if client.dtick == det.ticks:
                client.dcount += 1
            else:
                self._det_register(det, client)
            if rname is not None and self._c_route is not None:
                d = self._c_route
                d[rname] = d.get(rname, 0) + 1     # route names come from config
            if self._book is not None and self._book.count:
                rej = self._mitigate(ctx, client, rname, now, part)
                if rej is not None:
                    return rej

        if not rules:
            if part == _PRE:
                self._pending = (ctx, None)
            return None
        keys = client.keys
        admit = self._admit
        shadow_hits: list[Rule] | None = None
        for rule in rules:
            # One attribute load and an unpack instead of five loads.
            per_conn, by_route, seed, interval, tau = rule.plan
            if per_conn:
                h = keys.get(seed)
            elif by_route:
                h = rule.route_keys.get(rname)
            else:
                h = None
            if h is None:
                h = rule.key_hash(ctx, client)
                if h is None:
                    continue
            wait = admit(h, now, interval, tau)
            if wait:
                if rule.shadow:
                    shadow_hits = self._shadow(ctx, rule, wait, shadow_hits)
                    continue
                return self._refuse(ctx, client, rules, rules.index(rule), wait, shadow_hits,
                                    False, None)
        if part == _PRE:
            # check_route follows synchronously (no await between the
            # phases): remember whom to refund if a route rule refuses.
            self._pending = (ctx, shadow_hits)
        return None

    def check_route(self, ctx: Any, now: float,
                    client: ClientState | None = None) -> Rejection | None:
        """The route-dependent part (route ACL, route-scoped and per-route
        rules, route anomalies), for a data plane that calls `check` before
        routing. Do not call it after a `check` that already saw the route."""
        route = ctx.route
        if route is None:
            return None
        snap = self._snap
        pending, self._pending = self._pending, _NO_PENDING
        pre_charged = pending[0] is ctx          # the pre-route part charged this request
        pre_hits: list[Rule] | None = pending[1] if pre_charged else None
        ip = ctx.client_ip
        if client is None or client.ip != ip or (client.geo is not ctx.geo
                                                 and client.geo != ctx.geo):
            client = self._client_for(ip, ctx.geo)
        rname = route.name
        racl = snap.route_acls.get(rname) if snap.route_acls else None
        if racl is not None and not client.permits(racl):
            if pre_charged:
                self._refund(ctx, client, snap.pre_rules, len(snap.pre_rules), pre_hits)
            return self._acl_deny(ctx, "route")
        det = self._det
        if det is not None:
            if self._c_route is not None:
                d = self._c_route
                d[rname] = d.get(rname, 0) + 1
            if self._book is not None and self._book.count:
                rej = self._mitigate(ctx, client, rname, now, _ROUTE)
                if rej is not None:
                    return rej
        rules = snap.route_only(rname)
        shadow_hits: list[Rule] | None = None
        for i, rule in enumerate(rules):
            h = rule.key_hash(ctx, client)
            if h is None:
                continue
            wait = self._admit(h, now, rule.interval, rule.tau)
            if wait:
                if rule.shadow:
                    shadow_hits = self._shadow(ctx, rule, wait, shadow_hits)
                    continue
                return self._refuse(ctx, client, rules, i, wait, shadow_hits, pre_charged,
                                    pre_hits)
        return None

    def _shadow(self, ctx: Any, rule: Rule, wait: float,
                hits: list[Rule] | None) -> list[Rule]:
        ctx.verdicts.append(rule.v_shadow)
        self._counters[(rule.name, "shadow")] += 1
        self._log_req(rule.name, "ratelimit shadow", self._rule_fields(rule, ctx, wait))
        return [rule] if hits is None else hits + [rule]

    def _refuse(self, ctx: Any, client: ClientState, rules: tuple[Rule, ...], i: int,
                wait: float, shadow_hits: list[Rule] | None, pre_charged: bool,
                pre_hits: list[Rule] | None) -> Rejection:
        """rules[i] refuses: give back what rules[:i] (and, after a split
        check, the pre-route rules) charged, then answer 429."""
        self._refund(ctx, client, rules, i, shadow_hits)
        if pre_charged:
            self._refund(ctx, client, self._snap.pre_rules, len(self._snap.pre_rules),
                         pre_hits)
        rule = rules[i]
        ctx.verdicts.append(rule.v_reject)
        self._counters[(rule.name, "reject")] += 1
        self._log_req(rule.name, "ratelimit reject", self._rule_fields(rule, ctx, wait))
        return Rejection(429, f"rate limit {rule.name} exceeded", limit_headers([(rule, wait)]))

    def _refund(self, ctx: Any, client: ClientState, rules: tuple[Rule, ...], n: int,
                skip: list[Rule] | None) -> None:
        for rule in rules[:n]:
            if skip and rule in skip:            # a shadow rule that did not charge
                continue
            h = rule.key_hash(ctx, client)
            if h is not None:
                self.table.refund(h, rule.interval)

    def _det_register(self, det: Detector, client: ClientState) -> None:
        """First request of this client in this detector period."""
        if self._c_prefix is not None and client.dprefix_of is not det.cfg:
            cfg = det.cfg
            client.dprefix = client.prefix(cfg.prefix_v4, cfg.prefix_v6)
            client.dprefix_of = cfg
        det.observe_client(client)

    def _client_for(self, ip: str, geo: Any) -> ClientState:
        cs = self._clients.get(ip)
        if cs is None or (cs.geo is not geo and cs.geo != geo):
            if len(self._clients) >= _CLIENT_CACHE:
                self._clients.clear()            # O(1) amortized; a flood just misses
            cs = self._clients[ip] = ClientState(ip, geo)
        return cs

    def _acl_deny(self, ctx: Any, where: str) -> Rejection:
        ctx.verdicts.append(f"acl:{where}:deny")
        self._counters[(f"acl:{where}", "deny")] += 1
        self._log_req(f"acl:{where}", "acl deny", {
            "ip": ctx.client_ip, "where": where, "listener": ctx.listener,
            "route": getattr(ctx.route, "name", None)})
        return Rejection(403, f"forbidden by {where} acl")

    def _mitigate(self, ctx: Any, client: ClientState, rname: str | None,
                  now: float, part: int) -> Rejection | None:
        """Active mitigations of the kinds this part of the phase covers."""
        assert self._book is not None and self._det is not None
        for kind, by_key in self._book.active.items():
            if not by_key or (part == _PRE and kind == "route") \
                    or (part == _ROUTE and kind != "route"):
                continue
            if kind == "ip" or kind == "global":
                key: str | None = ctx.client_ip
            elif kind == "prefix":
                if client.dprefix_of is not self._det.cfg:
                    cfg = self._det.cfg
                    client.dprefix = client.prefix(cfg.prefix_v4, cfg.prefix_v6)
                    client.dprefix_of = cfg
                key = client.dprefix
            elif kind == "country":
                key = getattr(client.geo, "country", None) if client.geo is not None else None
            else:
                key = rname
            if key is None:
                continue
            m = by_key.get("node" if kind == "global" else key)
            if m is None or m.until <= now:
                continue
            verdict = ("anomaly:strict-per-ip:global" if kind == "global"
                       else f"anomaly:{m.action}:{kind}")
            if m.shadow:
                ctx.verdicts.append(verdict + ":shadow")
                self._counters[(f"anomaly:{kind}", "shadow")] += 1
                continue
            if m.action == "block":
                wait = m.until - now
                ctx.verdicts.append(verdict)
                self._counters[(f"anomaly:{kind}", "block")] += 1
                self._log_req(f"anomaly:{kind}", "anomaly block", {
                    "kind": kind, "key": key, "level": m.level, "ttl_s": round(wait, 3)})
                retry = str(max(1, math.ceil(wait))).encode()
                return Rejection(429, f"blocked: anomalous {kind} traffic",
                                 [(b"retry-after", retry)])
            rule = self._mit_rule(kind, m.limit_rate,
                                  self._det.cfg.global_.strict_per_ip_burst
                                  if kind == "global" else limit_burst(m.limit_rate))
            h = _xxh(client.addr_bytes() if kind in ("ip", "global") else key.encode(),
                     rule.seed) or 1
            wait = self.table.admit(h, now, rule.interval, rule.tau)
            if wait:
                ctx.verdicts.append(verdict)
                self._counters[(f"anomaly:{kind}", "limit")] += 1
                self._log_req(f"anomaly:{kind}", "anomaly limit", {
                    "kind": kind, "key": key, "limit_rate": rule.rate, "level": m.level})
                return Rejection(429, f"rate limit {rule.name} exceeded",
                                 limit_headers([(rule, wait)]))
        return None

    def _mit_rule(self, kind: str, rate: float, burst: int) -> Rule:
        rule = self._mit_rules.get(kind)
        if rule is None or rule.rate != rate or rule.burst != burst:
            # The seed leaves the rate out: workers derive slightly different
            # rates from their own baselines but must share one bucket per key.
            name = "strict-per-ip" if kind == "global" else f"anomaly-{kind}"
            rule = Rule(name, K_IP if kind in ("ip", "global") else K_PREFIX,
                        rule_seed(self.shared.salt, "mitigation", kind), rate, burst)
            self._mit_rules[kind] = rule
        return rule

    # ---- once a second -------------------------------------------------

    def tick(self, now: float) -> None:
        """Call at least once a second (more often is fine: the detector's
        statistics roll over only when a second has passed, so its alpha and
        warm-up stay in seconds; mitigations lapse at every call)."""
        det, book = self._det, self._book
        if det is not None and book is not None:
            if det.last_tick is None or now - det.last_tick >= 1.0:
                anomalies, g = det.tick(now)
                for a in anomalies:
                    self._on_anomaly(a, book, now)
                if g is not None:
                    self._on_anomaly(g, book, now)
            for m in book.expire(now):
                self._counters[(f"anomaly:{m.kind}", "expire")] += 1
                log.info("mitigation expired %s", _Fields(m.as_dict(now)))
        if now - self._budget_since >= 1.0:
            self._budget_since = now
            for name, left in self._log_budget.items():
                if left < 0:
                    log.info("log lines suppressed %s", _Fields({"rule": name, "lines": -left}))
            self._log_budget.clear()

    def _on_anomaly(self, a: Anomaly, book: MitigationBook, now: float) -> None:
        event, m = book.on_anomaly(a, now)
        kind = a.kind
        self._counters[(f"anomaly:{kind}", "detect")] += 1
        if event != "refresh":
            self._counters[(f"anomaly:{kind}", event)] += 1
        fields = {"kind": kind, "key": a.key, "rate": round(a.rate, 3),
                  "mean": round(a.mean, 3), "sigma": round(a.sigma, 3),
                  "threshold": round(a.threshold, 3), "workers": self.workers,
                  "action": "strict-per-ip" if kind == "global" else m.action,
                  "level": m.level, "ttl_s": round(m.until - now, 3),
                  "limit_rate": m.limit_rate, "shadow": m.shadow, "event": event}
        log.log(logging.INFO if event == "refresh" else logging.WARNING,
                "anomaly %s", _Fields(fields))

    # ---- admin and metrics ---------------------------------------------

    def mitigations(self, now: float | None = None) -> list[dict[str, Any]]:
        """Active mitigations of this worker (for the admin API)."""
        if self._book is None:
            return []
        if now is None:
            now = time.monotonic()
        return self._book.listing(now)

    def counters(self) -> dict[tuple[str, str], int]:
        """Monotonic per-process counters, keyed (rule, action)."""
        out = dict(self._counters)
        out[("table", "evictions")] = self.table.evictions
        out[("table", "lock-timeouts")] = self.table.lock_timeouts
        if self._det is not None:
            out[("detector", "dropped-keys")] = self._det.dropped
        return out

    # ---- logging helpers -----------------------------------------------

    def _log_req(self, name: str, event: str, fields: dict[str, Any]) -> None:
        """Request-level decisions: at most _LOG_BUDGET lines per rule per
        second (a flood must not become a log flood); tick reports the rest."""
        left = self._log_budget.get(name, _LOG_BUDGET)
        self._log_budget[name] = left - 1
        if left > 0:
            log.info("%s %s", event, _Fields(fields))

    @staticmethod
    def _rule_fields(rule: Rule, ctx: Any, wait: float) -> dict[str, Any]:
        return {"rule": rule.name, "ip": ctx.client_ip, "rate": rule.rate,
                "burst": rule.burst, "wait_s": round(wait, 3), "shadow": rule.shadow,
                "route": getattr(ctx.route, "name", None)}
