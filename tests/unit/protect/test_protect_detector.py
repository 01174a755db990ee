"""3-sigma detector with a fake clock: the tick times are the clock."""
from __future__ import annotations

import math
import random
from collections.abc import Callable

from proxy.protect.config import DetectorConfig
from proxy.protect.detector import Anomaly, Detector


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def drive(det: Detector, seconds: int, rate_of: Callable[[int, str], float],
          keys: list[str], seed: int = 1, noise: bool = True) -> list[tuple[float, Anomaly]]:
    """Feed Poisson counts through observe() and tick once a second, as the
    data plane does. rate_of(s, key): mean req/s over the second (s-1, s]."""
    rng = random.Random(seed)
    out: list[tuple[float, Anomaly]] = []
    start = int(det.last_tick) if det.last_tick is not None else 0
    if det.last_tick is None:
        det.tick(0.0)
    for sec in range(start + 1, start + seconds + 1):
        for key in keys:
            rate = rate_of(sec, key)
            for _ in range(poisson(rng, rate) if noise else round(rate)):
                det.total += 1
                det.observe("ip", key)
        anomalies, g = det.tick(float(sec))
        out += [(float(sec), a) for a in anomalies]
        if g is not None:
            out.append((float(sec), g))
    return out


def cfg(**kw: object) -> DetectorConfig:
    base: dict[str, object] = {"enabled": True, "keys": ["ip"], "warmup_s": 30, "min_rate": 10}
    base.update(kw)
    return DetectorConfig.model_validate(base)


KEYS = [f"198.51.100.{i}" for i in range(40)]


def steady_rate(step: int, key: str) -> float:
    return 5.0 + 5 * (int(key.rsplit(".", 1)[1]) % 10)      # 5..50 req/s


def quiet_runs(rate_of: Callable[[int, str], float], seeds: int = 5) -> int:
    """False alarms over seeds x 40 keys x 300 s (counts set directly: fast)."""
    alarms = 0
    for seed in range(seeds):
        det = Detector(cfg(global_={"min_rate": 10}))
        rng = random.Random(seed)
        det.tick(0.0)
        for sec in range(1, 301):
            cur = det.cur["ip"]
            for key in KEYS:
                c = poisson(rng, rate_of(sec, key))
                if c:
                    cur[key] = c
                    det.total += c
            anomalies, g = det.tick(float(sec))
            alarms += len(anomalies) + (g is not None)
    return alarms


def test_quiet_on_steady_poisson_load() -> None:
    assert quiet_runs(steady_rate) == 0


def test_quiet_on_slowly_growing_load() -> None:
    # 8x over 300 s (0.7%/s compounded), and +1%/s of the start linearly.
    assert quiet_runs(lambda s, k: steady_rate(s, k) * 2 ** (s / 100)) == 0
    assert quiet_runs(lambda s, k: steady_rate(s, k) * (1 + 0.01 * s)) == 0


def step_rate(step_at: float, base: float, factor: float) -> Callable[[int], float]:
    """Mean rate over the second (s-1, s] for a step from base to base*factor at step_at."""
    def rate(s: int) -> float:
        hi = min(max(s - step_at, 0.0), 1.0)      # fraction of the second after the step
        return base * (1 - hi) + base * factor * hi
    return rate


def test_fires_within_two_seconds_of_a_10x_step() -> None:
    attacker = "203.0.113.9"
    for step_at in (60.0, 60.3, 60.97):            # where in the second the step lands
        det = Detector(cfg(global_={"enabled": False}))
        attack = step_rate(step_at, 20.0, 10.0)
        hits = drive(det, 70, lambda s, k: attack(s) if k == attacker else 20.0,
                     KEYS[:5] + [attacker])
        assert hits, step_at
        t, a = hits[0]
        assert a.key == attacker and a.kind == "ip"
        assert step_at < t <= step_at + 2.0, (step_at, t)
        assert a.rate > a.threshold > a.mean and a.sigma >= 0
        assert all(a.key == attacker for _, a in hits)


def test_a_2x_step_needs_confirmation() -> None:
    # Exact counts, no noise: 2x of 20 req/s clears 3 sigma (20 + 3*sqrt(20)
    # = 33.4) but not 6 sigma (46.8), so it acts on the third such second.
    det = Detector(cfg(global_={"enabled": False}))
    hits = drive(det, 45, lambda s, k: 40.0 if s > 40 else 20.0, ["m"], noise=False)
    assert [t for t, _ in hits] == [43.0, 44.0, 45.0]


def test_warmup_and_floor_keep_it_quiet() -> None:
    # A key that starts at 2 req/s and jumps to 50x at 20 s: still warming up.
    det = Detector(cfg(warmup_s=30, global_={"enabled": False}))
    assert drive(det, 29, lambda s, k: 2.0 if s < 20 else 100.0, ["a"], noise=False) == []
    # The same jump once 30 samples are in acts at once (it clears 6 sigma).
    det = Detector(cfg(warmup_s=30, global_={"enabled": False}))
    hits = drive(det, 32, lambda s, k: 2.0 if s <= 30 else 100.0, ["a"], noise=False)
    assert [t for t, _ in hits] == [31.0, 32.0]
    # A quiet key 1 -> 9 req/s: 9x, but under the 10 req/s floor.
    det = Detector(cfg(warmup_s=5, global_={"enabled": False}))
    assert drive(det, 60, lambda s, k: 1.0 if s < 30 else 9.0, ["b"], noise=False) == []


def test_global_anomaly_on_node_total() -> None:
    det = Detector(cfg(keys=["ip"], min_rate=1e9,        # per-key detection off by floor
                       global_={"min_rate": 100, "k": 3}))
    many = [f"10.0.{i // 250}.{i % 250}" for i in range(500)]
    hits = drive(det, 60, lambda s, k: 0.5 if s <= 40 else 5.0, many)
    assert hits and all(a.kind == "global" for _, a in hits)
    assert hits[0][0] == 41.0


def test_attack_is_not_learned_as_the_baseline() -> None:
    det = Detector(cfg(global_={"enabled": False}))
    hits = drive(det, 160, lambda s, k: 10.0 if s <= 40 else 200.0, ["x"])
    # Anomalous every second of two minutes of attack: the baseline stays.
    assert [t for t, _ in hits] == [float(s) for s in range(41, 161)]
    mean, sigma = det.baseline("ip", "x") or (0.0, 0.0)
    assert 8 < mean < 12 and sigma < 5
    # With anomaly_learn, a lasting shift is learned and the anomaly ends.
    det = Detector(cfg(global_={"enabled": False}, anomaly_learn=0.2))
    hits = drive(det, 400, lambda s, k: 10.0 if s <= 40 else 100.0, ["x"])
    assert hits and hits[0][0] == 41.0 and hits[-1][0] < 300


def test_quiet_seconds_decay_the_baseline_lazily() -> None:
    det = Detector(cfg(global_={"enabled": False}))
    drive(det, 30, lambda s, k: 50.0, ["q"])
    m0, _ = det.baseline("ip", "q") or (0.0, 0.0)
    for t in range(31, 41):                  # ten quiet seconds: the key is not touched
        det.tick(float(t))
    assert det.baseline("ip", "q") is not None
    assert det.baseline("ip", "q")[0] == m0  # type: ignore[index]
    det.observe("ip", "q")
    det.tick(41.0)                           # reappears: the gap is applied first
    m1, _ = det.baseline("ip", "q") or (0.0, 0.0)
    assert m1 < m0 * 0.5


def test_tables_are_bounded_and_keep_existing_keys() -> None:
    det = Detector(cfg(max_keys=100, global_={"enabled": False}))
    drive(det, 20, lambda s, k: 20.0, ["heavy"])
    det.tick(21.0)
    for i in range(100_000):                 # a flood of one-shot keys in one second
        det.observe("ip", f"spoof-{i}")
    assert len(det.cur["ip"]) == 100
    det.tick(22.0)
    assert len(det.stats["ip"]) <= 100
    assert "heavy" in det.stats["ip"]
    assert det.dropped >= 100_000 - 100
