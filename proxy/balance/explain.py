"""Render a routing decision as one compact response-header value.

Only called when a client asks for an explanation (the data plane decides
how, e.g. a debug request header from a trusted source); never on the normal
path. Example:

    policy=latency; region=eu-west-1; backend=10.0.1.10:8080; algo=p2c_ewma;
    cost_ms=5.2; inflight=1; scores=eu-west-1:4.1,eu-central-1:27.9,us-east-1:down

(one line in practice). Scores are ms for latency, km for geo (when the client
location is known), weights for weighted and positions for failover; a word
instead of a number says why the region was out (down, remote-down, absent,
denied).
"""
from __future__ import annotations

import re

from .selector import Decision

MAX_LEN = 1024
_UNSAFE = re.compile(r"[^\x21-\x7e ]")   # header values: visible ASCII and space


def explain(d: Decision) -> str:
    parts = [f"policy={d.policy}"]
    b = d.backend
    if b is None:
        parts.append("region=none")
        parts.append(f"reason={d.reason}")
    else:
        now = d.why[0]
        tau = b.pool.cfg.balance.ewma_decay_s if b.pool is not None else 10.0
        parts.append(f"region={d.region}")
        parts.append(f"backend={b.address}")
        parts.append(f"algo={d.plan.algorithm}")
        parts.append(f"cost_ms={b.cost_ms(now, tau):.1f}")
        parts.append(f"inflight={b.in_flight}")
        if b.pool is not None and b.pool.panic:
            parts.append("panic=1")
        if d.saturated_spill:
            parts.append("spill=saturated")
    scores = ",".join(f"{r}:{v}" for r, v in d.scores())
    parts.append(f"scores={scores}")
    out = _UNSAFE.sub("_", "; ".join(parts))
    return out if len(out) <= MAX_LEN else out[:MAX_LEN - 3] + "..."
