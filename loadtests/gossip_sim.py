"""Gossip at scale on the in-memory network and a fake, event-driven clock.

Runs a cluster of N nodes (default 500) spread round-robin over the 13 regions,
with inter-region latencies from the region catalogue's coordinates (see
proxy/gossip/simcluster.py), the default GossipConfig (200 ms probes and
gossip), real HMAC-signed frames, and prints:

- convergence: simulated time for a health change (and a replication-lag
  change) published by one node to reach every node;
- detection: time from killing a node to the first suspicion, the first
  "dead" verdict, and every live node holding it dead;
- false positives: live nodes declared dead by anybody during 60 simulated
  seconds at 5 % packet loss (suspicions and refutations are shown too);
- bytes per node per second sent (UDP + push-pull), lossless and at 5 % loss.

The clock jumps from event to event, so nothing sleeps; CPU is the only cost
(500 nodes: ~2 min of CPU, 4 min wall on a busy 2-core host; --nodes 26: seconds).

    python loadtests/gossip_sim.py                   # 500 nodes, then 26
    python loadtests/gossip_sim.py --nodes 26 --no-small
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.gossip.messages import MemberState  # noqa: E402
from proxy.gossip.simcluster import REGIONS_13, SimCluster  # noqa: E402


def measure_convergence(c: SimCluster, rng: random.Random, trials: int, what: str) -> list[float]:
    """Simulated seconds from a setter call on one node until every live node's
    copy of that node's row shows the new value."""
    times = []
    for i in range(trials):
        origin = c.nodes[rng.choice([n.name for n in c.live()])]
        if what == "health":
            healthy = 0 if origin.state.local.healthy_backends else 2
            origin.set_local_health(healthy, 2)

            def seen(n: object, name: str = origin.name, h: int = healthy) -> bool:
                row = n.state.rows.get(name)  # type: ignore[attr-defined]
                return row is not None and row.healthy_backends == h
        else:
            lag = 5.0 + i

            origin.set_replication_lag(lag)

            def seen(n: object, name: str = origin.name, lag: float = lag) -> bool:
                row = n.state.rows.get(name)  # type: ignore[attr-defined]
                return row is not None and row.replication_lag_s == lag
        t = c.run_until(lambda: all(seen(n) for n in c.live()), 60, check_every=0.02)
        times.append(float("nan") if t is None else t)
        c.run(1.0)
    return times


def measure_detection(c: SimCluster, rng: random.Random) -> tuple[float, float, float, str]:
    victim = rng.choice([n.name for n in c.live()])
    c.kill(victim)
    t0 = c.now
    first_suspect = first_dead = float("nan")

    def check() -> bool:
        nonlocal first_suspect, first_dead
        states = [c.state_of(n.name, victim) for n in c.live()]
        if first_suspect != first_suspect and any(s != MemberState.ALIVE for s in states):
            first_suspect = c.now - t0
        if first_dead != first_dead and any(s == MemberState.DEAD for s in states):
            first_dead = c.now - t0
        return all(s == MemberState.DEAD for s in states)

    t_all = c.run_until(check, 60, check_every=0.05)
    return first_suspect, first_dead, float("nan") if t_all is None else t_all, victim


def stats_sum(c: SimCluster, key: str) -> int:
    return sum(n.membership.stats[key] for n in c.live())


def false_positives(c: SimCluster, seconds: float, loss: float) -> dict[str, float]:
    """Every "dead" verdict in this phase is false: the only killed node was
    already dead in every view before it started."""
    c.net.loss = loss
    before = {k: stats_sum(c, k) for k in ("suspected", "declared_dead", "refuted")}
    b0 = c.bytes_out()
    c.run(seconds)
    out = {k: float(stats_sum(c, k) - v) for k, v in before.items()}
    out["bytes_per_node_s"] = c.bytes_per_node_per_s(b0, seconds)
    out["nodes_falsely_dead"] = float(len({
        m.name for n in c.live() for m in n.membership.members.values()
        if m.state == MemberState.DEAD and c.nodes[m.name]._running
    }))
    c.net.loss = 0.0
    return out


def run(n_nodes: int, seed: int, loss_seconds: float) -> None:
    wall0 = time.perf_counter()
    rng = random.Random(seed)
    c = SimCluster(REGIONS_13, n_nodes, seed=seed)
    c.start_warm()
    c.run(5.0)
    print(f"\n== {n_nodes} nodes in {len(REGIONS_13)} regions (seed {seed}) ==")
    print(f"warm start + 5 s settle: {time.perf_counter() - wall0:.1f} s real")

    b0 = c.bytes_out()
    t_start = c.now
    for what, label in (("health", "health change (published at once)"),
                        ("lag", "replication-lag change (rate-limited publish)")):
        conv = measure_convergence(c, rng, 4, what)
        print(f"convergence of a {label} to all {n_nodes} nodes: "
              f"median {statistics.median(conv):.2f} s, max {max(conv):.2f} s  (trials: "
              + ", ".join(f"{t:.2f}" for t in conv) + ")")

    first_suspect, first_dead, all_dead, victim = measure_detection(c, rng)
    print(f"dead node {victim}: first suspected after {first_suspect:.2f} s, first declared dead "
          f"{first_dead:.2f} s, dead in every view {all_dead:.2f} s")
    c.run(max(0.0, 60.0 - (c.now - t_start)))
    lossless_bps = c.bytes_per_node_per_s(b0, c.now - t_start)
    print(f"bytes sent per node per second, lossless ({c.now - t_start:.0f} s incl. the above): "
          f"{lossless_bps:.0f} B/s")

    fp = false_positives(c, loss_seconds, 0.05)
    print(f"{loss_seconds:.0f} s at 5% loss: false dead verdicts {fp['declared_dead']:.0f} "
          f"(live nodes dead in some view at the end: {fp['nodes_falsely_dead']:.0f}); "
          f"suspect transitions {fp['suspected']:.0f} (summed over all views), refutations {fp['refuted']:.0f}; "
          f"{fp['bytes_per_node_s']:.0f} B/s per node")
    counters = [n.counters for n in c.live()]
    print("dropped frames (bad mac / unknown key / replay): "
          f"{sum(x['dropped_bad_mac'] for x in counters)} / {sum(x['dropped_unknown_key'] for x in counters)} / "
          f"{sum(x['dropped_replay'] for x in counters)}")
    print(f"simulated {c.now:.0f} s, {c.sched.events_run} events, {time.perf_counter() - wall0:.1f} s real")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--loss-seconds", type=float, default=60.0)
    ap.add_argument("--no-small", action="store_true", help="skip the 26-node run after the main one")
    args = ap.parse_args()
    run(args.nodes, args.seed, args.loss_seconds)
    if not args.no_small and args.nodes != 26:
        run(26, args.seed, args.loss_seconds)


if __name__ == "__main__":
    main()
