"""A whole gossip cluster on the in-memory network and fake clock.

Shared by the unit tests and loadtests/gossip_sim.py. Latency between regions
comes from the great-circle distance between their metros (config/regions.yaml
coordinates): one-way = distance / (200 km/ms, light in fibre) x 1.5 (cables
do not follow great circles) + 1 ms, which gives ~75 ms us-east-1 <-> eu-west-1
and ~160 ms us-east-1 <-> ap-southeast-2 round trips, close to published
inter-region pings. Nodes of one region are 0.5 ms apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import GossipConfig
from .memnet import EventScheduler, MemoryNetwork
from .messages import MemberState
from .node import GossipNode

REGIONS_13 = (
    "us-east-1", "us-west-2", "ca-central-1", "eu-west-1", "eu-central-1", "eu-west-2",
    "ap-southeast-1", "ap-northeast-1", "ap-southeast-2", "ap-south-1", "sa-east-1",
    "me-south-1", "af-south-1",
)
SIM_KEY = "hex:" + "11" * 32


def load_region_coordinates(path: Path | None = None) -> dict[str, tuple[float, float]]:
    import yaml

    path = path or Path(__file__).resolve().parents[2] / "config" / "regions.yaml"
    data = yaml.safe_load(path.read_text())
    return {name: (float(r["lat"]), float(r["lon"])) for name, r in data["regions"].items()}


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def region_one_way_s(coords: dict[str, tuple[float, float]]) -> Callable[[str, str], float]:
    cache: dict[tuple[str, str], float] = {}

    def one_way(src: str, dst: str) -> float:
        key = (src, dst)
        if key not in cache:
            if src == dst:
                cache[key] = 0.0005
            else:
                cache[key] = (great_circle_km(coords[src], coords[dst]) / 200.0 * 1.5 + 1.0) / 1000.0
        return cache[key]

    return one_way


class SimCluster:
    def __init__(self, regions: tuple[str, ...] | list[str], n_nodes: int, *, seed: int = 1,
                 loss: float = 0.0, jitter: float = 0.05, config: dict[str, Any] | None = None,
                 one_way_s: Callable[[str, str], float] | None = None) -> None:
        self.rng = random.Random(seed)
        self.sched = EventScheduler()
        self.regions = tuple(regions)
        self.region_of: dict[str, str] = {}  # addr -> region
        self._one_way = one_way_s or region_one_way_s(load_region_coordinates())
        self.net = MemoryNetwork(self.sched, self.rng, self._latency, loss)
        self.jitter = jitter
        self.overrides = dict(config or {})
        self.nodes: dict[str, GossipNode] = {}
        self.addr: dict[str, str] = {}
        # round-robin over regions: node k is in regions[k % len(regions)]
        names = [f"{self.regions[k % len(self.regions)]}-{k // len(self.regions)}" for k in range(n_nodes)]
        for idx, name in enumerate(names):
            self.addr[name] = f"10.{idx // 250}.{idx % 250}.1:7946"
            self.region_of[self.addr[name]] = name.rsplit("-", 1)[0]
        self.seeds = (self.addr[names[0]],)
        for name in names:
            self.nodes[name] = self._make(name)

    def _latency(self, src: str, dst: str) -> float:
        base = self._one_way(self.region_of[src], self.region_of[dst])
        return base * (1.0 + self.jitter * self.rng.random())

    def _make(self, name: str) -> GossipNode:
        cfg = GossipConfig(
            enabled=True, node_name=name, region=name.rsplit("-", 1)[0], bind=self.addr[name],
            seeds=self.seeds, regions=self.regions, keys={"k1": SIM_KEY}, **self.overrides,
        )
        transport = self.net.transport(self.addr[name])
        return GossipNode(cfg, transport, self.sched, rng=random.Random(self.rng.random()))

    # ---- running ----

    @property
    def now(self) -> float:
        return self.sched.time()

    def start(self, spread_s: float = 0.5) -> None:
        for node in self.nodes.values():
            self.sched.call_later(self.rng.uniform(0, spread_s), node.start)

    def start_warm(self) -> None:
        """Start every node as if the cluster had already formed and settled:
        each knows every member (alive, incarnation 0) and every node's row with
        RTTs as its probes would measure them, and no broadcast is pending.

        Forming a 500-node cluster from cold makes every node send each of the
        ~1000 join updates 12 times (at its ~21 KB/s gossip cap that takes
        minutes of simulated time, and far longer of real time here), which is
        not what the steady-state figures are about; ``start`` does it cold.
        """
        entries = [node.membership.local.entry() for node in self.nodes.values()]
        now = self.now
        for name, node in self.nodes.items():
            node.membership.merge(entries, name, now)
            for dst in self.regions:
                rtt = 2 * self._one_way(node.region, dst) * (1 + self.jitter / 2)
                node.state.observe_rtt(dst, rtt, now)
            node.state.set_health(2, 2, int(self.sched.wall() * 1000))
            node.state.maybe_publish(now, len(self.nodes))
        rows = [(node.state.local, node.state.payloads[node.name]) for node in self.nodes.values()]
        for node in self.nodes.values():
            for row, payload in rows:
                node.state.merge(row, payload)
            node.membership.queue = type(node.membership.queue)(node.membership.cfg.retransmit_mult)
            node.start(join=False)

    def run(self, dt: float) -> None:
        self.sched.run_for(dt)

    def run_until(self, pred: Callable[[], bool], timeout: float, check_every: float = 0.05) -> float | None:
        """Advance until ``pred()`` holds (checked every ``check_every`` simulated s);
        the simulated time it took, or None."""
        start = self.now
        while self.now - start < timeout:
            self.sched.run_until(self.now + check_every)
            if pred():
                return self.now - start
        return None

    def kill(self, name: str) -> None:
        self.net.kill(self.addr[name])
        self.nodes[name].stop()

    def restart(self, name: str) -> GossipNode:
        self.nodes[name].stop()
        node = self.nodes[name] = self._make(name)
        node.start()
        return node

    def live(self, exclude: tuple[str, ...] = ()) -> list[GossipNode]:
        return [n for name, n in self.nodes.items() if n._running and name not in exclude]

    # ---- what the nodes believe ----

    def state_of(self, observer: str, member: str) -> MemberState | None:
        m = self.nodes[observer].membership.members.get(member)
        return None if m is None else m.state

    def all_see(self, member: str, state: MemberState, exclude: tuple[str, ...] = ()) -> bool:
        return all(self.state_of(n.name, member) == state for n in self.live(exclude + (member,)))

    def fully_joined(self) -> bool:
        total = len(self.nodes)
        return all(n.membership.num_live() == total for n in self.live())

    def views(self) -> dict[str, dict[str, tuple[str, int]]]:
        return {
            n.name: {m.name: (m.state.name, m.incarnation) for m in n.membership.members.values()}
            for n in self.live()
        }

    def bytes_per_node_per_s(self, since_bytes: dict[str, int], seconds: float) -> float:
        sent = sum(ep.bytes_out for ep in self.net.endpoints.values()) - sum(since_bytes.values())
        return sent / max(1, len(self.net.endpoints)) / seconds

    def bytes_out(self) -> dict[str, int]:
        return {addr: ep.bytes_out for addr, ep in self.net.endpoints.items()}
