"""proxy/balance/_pick.c's Selector.pick and Selector.on_done must do what the
Python methods (Selector._pick_py, _on_done_py: the reference) do: the same
backend or error, the same Decision, the same random draws and the same
backend and pool state after, on twin nodes fed the same random requests."""
from __future__ import annotations

import asyncio
import os
import random
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.balance.selector import Decision
from proxy.config import parse_config
from proxy.context import RequestContext
from proxy.features import build_hooks
from proxy.node import Node
from proxy.selection import Selector

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-south-1"]


def test_the_c_version_is_built_and_used() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert Selector.pick is not Selector._pick_py, "proxy/balance/_pick.c was not built"  # type: ignore[attr-defined]
    assert Selector.on_done is not Selector._on_done_py  # type: ignore[attr-defined]


@pytest.fixture(autouse=True, scope="module")
def _loop():
    # Node() asks for the current event loop; earlier asyncio tests may have closed it.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def _node(sizes: list[int], policy: str, cap: int | None, algorithm: str, affinity: bool) -> Node:
    regions = {REGIONS[i]: [f"127.0.{i}.{j + 1}:80" for j in range(n)] for i, n in enumerate(sizes)}
    balance: dict[str, object] = {"algorithm": algorithm}
    pool: dict[str, object] = {"regions": regions, "balance": balance}
    if affinity:
        balance["affinity"] = {"client_ip": True}
        balance["algorithm"] = "hash"
    route: dict[str, object] = {"name": "r", "pool": "p",
                                "policy": {"policy": policy, "max_inflight_per_backend": cap}}
    if policy == "weighted":
        route["policy"] = {"policy": "weighted", "weights": {r: i + 1 for i, r in enumerate(regions)},
                           "max_inflight_per_backend": cap}
    elif policy == "failover":
        route["policy"] = {"policy": "failover", "order": list(regions),
                           "max_inflight_per_backend": cap}
    cfg = parse_config({"node": {"name": "n", "region": "us-east-1"}, "pools": {"p": pool},
                        "routes": [route], "metrics": {"enabled": False},
                        "access_log": {"enabled": False}})
    node = Node(cfg, hooks=build_hooks(cfg, 0))
    assert node.hooks.residency_active is False   # else every pick is Python's
    return node


def _ctx(node: Node, geo: object) -> RequestContext:
    ctx = RequestContext("id", 0.0, "GET", "h", "/", "", "1.1", "10.0.0.1", 1, geo, [], "l")
    ctx.route = node.snapshot.router.match("h", "/", "GET", None, None)
    return ctx


def _warm(node: Node, now: float) -> None:
    """Rank the plans as the first pick would (a fresh plan is always Python's)."""
    bal = node.selector.balancer
    for plan in node.selector.plans.values():
        bal._refresh(plan, now)


def _backends(node: Node) -> list[tuple[object, ...]]:
    return [(b.id, b.ewma_ms, b.stamp, b.samples, b.in_flight, b.consecutive_5xx,
             b.consecutive_conn, b.up, b.ejected_until) for b in node.selector.cluster.backends()]


def _pools(node: Node) -> list[tuple[object, ...]]:
    return [(rp.region, rp.in_flight, rp.available) for pools in node.selector.cluster.pools.values()
            for rp in pools.values()]


def _outcome(r: object) -> object:
    return r if isinstance(r, tuple) else ("backend", r.id)  # type: ignore[attr-defined]


def _note(ctx: RequestContext) -> object:
    d = ctx.policy_note
    if isinstance(d, Decision):
        return (type(d).__name__, d.region, d.backend.id if d.backend else None, d.why,
                getattr(d, "reason", None))
    return d


def _call(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as e:   # both must raise the same
        return ("raise", type(e).__name__, str(e))


ops = st.lists(st.tuples(
    st.sampled_from(["pick", "pick", "pick", "done", "done", "advance", "slow", "load", "saturate"]),
    st.floats(0.0, 0.5), st.sampled_from(["ok", "ok", "5xx", "timeout", "cancelled"]),
    st.integers(0, 300)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 4), min_size=1, max_size=4),
       policy=st.sampled_from(["latency", "latency", "failover", "geo", "weighted"]),
       cap=st.sampled_from([None, 1, 2, 100]),
       algorithm=st.sampled_from(["p2c_ewma", "p2c_ewma", "round_robin", "least_inflight"]),
       affinity=st.sampled_from([False, False, False, True]),
       located=st.booleans(), seed=st.integers(0, 2**32), ops=ops)
def test_the_c_pick_and_on_done_match_the_python_ones(sizes, policy, cap, algorithm, affinity,
                                                       located, seed, ops) -> None:
    c, py = (_node(sizes, policy, cap, algorithm, affinity) for _ in range(2))
    geo = types.SimpleNamespace(lat=48.8, lon=2.3, country="FR", continent="EU") if located else None
    now = 1000.0
    _warm(c, now)
    _warm(py, now)
    picked: dict[Node, list[object]] = {c: [], py: []}
    state = random.getstate()
    for kind, x, outcome, n in ops:
        if kind == "advance":
            now += x * 2
            continue
        if kind == "saturate":
            # a region at exactly its cap (in flight == healthy x cap), or one under it
            for node in (c, py):
                rps = [rp for pools in node.selector.cluster.pools.values() for rp in pools.values()]
                rp = rps[n % len(rps)]
                rp.in_flight = len(rp.view) * (cap or 1) - (n % 2)
            continue
        if kind in ("slow", "load"):
            for node in (c, py):
                bs = list(node.selector.cluster.backends())
                if bs:
                    b = bs[n % len(bs)]
                    if kind == "slow":
                        b.slow_start_at, b.slow_until = now - x, now + x
                    else:
                        b.in_flight += n % 5
                        if b.pool is not None:
                            b.pool.in_flight += n % 5
            continue
        results = []
        for node, pick, done in ((c, Selector.pick, Selector.on_done),
                                 (py, Selector._pick_py, Selector._on_done_py)):  # type: ignore[attr-defined]
            random.seed(seed)
            if kind == "pick":
                ctx = _ctx(node, geo)
                r = _call(pick, node.selector, ctx, set(), now)
                if r[0] == "ok" and not isinstance(r[1], tuple):
                    picked[node].append(r[1])
                results.append((r if r[0] == "raise" else _outcome(r[1]), _note(ctx)))
            elif picked[node]:
                b = picked[node].pop(n % len(picked[node]))
                results.append(_call(done, node.selector, b, x, outcome, now))
            else:
                results.append(None)
            results.append(random.random())   # the same draws were made
        assert results[:2] == results[2:], (kind, results)
        assert _backends(c) == _backends(py)
        assert _pools(c) == _pools(py)
    random.setstate(state)


def test_odd_arguments_go_to_python() -> None:
    c, py = _node([2, 1], "latency", 100, "p2c_ewma", False), _node([2, 1], "latency", 100, "p2c_ewma", False)
    for args in [("not a ctx", set(), 1.0), (None, set(), 1.0)]:
        assert _call(Selector.pick, c.selector, *args)[:2] == _call(Selector._pick_py, py.selector, *args)[:2]  # type: ignore[attr-defined]
    # a retry (non-empty exclude), an int clock, a frozenset: all Python's, same answers
    for exclude, now in [({"us-east-1/127.0.0.1:80"}, 5.0), (set(), 5), (frozenset(), 5.0)]:
        random.seed(3)
        ctx_c = _ctx(c, None)
        got = _call(Selector.pick, c.selector, ctx_c, exclude, now)
        random.seed(3)
        ctx_p = _ctx(py, None)
        want = _call(Selector._pick_py, py.selector, ctx_p, exclude, now)  # type: ignore[attr-defined]
        assert (_outcome(got[1]), _note(ctx_c)) == (_outcome(want[1]), _note(ctx_p))
    # on_done with an int latency or an unknown outcome: Python's
    b_c = next(iter(c.selector.cluster.backends()))
    b_p = next(iter(py.selector.cluster.backends()))
    for args in [(1, "ok", 6.0), (0.1, "bogus", 6.0), (0.1, "ok", 6)]:
        assert _call(Selector.on_done, c.selector, b_c, *args) == \
            _call(Selector._on_done_py, py.selector, b_p, *args)  # type: ignore[attr-defined]
    assert _backends(c) == _backends(py)
    assert _pools(c) == _pools(py)


def test_a_stand_in_random_and_odd_backend_values_follow_python() -> None:
    """Values that are not plain floats take the number protocol, as in Python."""
    from proxy.balance import pool as pool_mod
    c, py = _node([3], "latency", None, "p2c_ewma", False), _node([3], "latency", None, "p2c_ewma", False)
    for node in (c, py):
        _warm(node, 1000.0)
        for i, b in enumerate(node.selector.cluster.backends()):
            b.ewma_ms = [5, 7.5, True][i]           # an int, a float, a bool
            b.stamp = 999.0
    draws = iter([0.1, 0.9, 0.5, 0.2] * 4)
    saved = pool_mod._random
    try:
        pool_mod._random = lambda: next(draws)
        got = _call(Selector.pick, c.selector, _ctx(c, None), set(), 1000.0)
        draws = iter([0.1, 0.9, 0.5, 0.2] * 4)
        want = _call(Selector._pick_py, py.selector, _ctx(py, None), set(), 1000.0)  # type: ignore[attr-defined]
    finally:
        pool_mod._random = saved
    assert _outcome(got[1]) == _outcome(want[1])


def test_the_common_case_is_the_cs_and_matches() -> None:
    """A warm latency plan, p2c, a cap, slow start on one backend: every pick and
    on_done runs in C (none reaches the Python balancer) and matches Python."""
    c, py = _node([3, 2], "latency", 2, "p2c_ewma", False), _node([3, 2], "latency", 2, "p2c_ewma", False)
    for node in (c, py):
        _warm(node, 1000.0)
        b = next(iter(node.selector.cluster.backends()))
        b.slow_start_at, b.slow_until = 999.0, 1001.0
    fallbacks = []
    real = c.selector.balancer.pick
    c.selector.balancer.pick = lambda *a: fallbacks.append(a) or real(*a)  # type: ignore[method-assign]
    random.seed(11)
    got = []
    for i in range(300):
        now = 1000.0 + i * 1e-4
        ctx = _ctx(c, None)
        b = Selector.pick(c.selector, ctx, set(), now)
        b.in_flight += 1
        b.pool.in_flight += 1
        got.append((b.id, _note(ctx)))
        if i % 3 == 0:
            Selector.on_done(c.selector, b, 0.002 * (i % 5), "ok", now)
    random.seed(11)
    want = []
    for i in range(300):
        now = 1000.0 + i * 1e-4
        ctx = _ctx(py, None)
        b = Selector._pick_py(py.selector, ctx, set(), now)  # type: ignore[attr-defined]
        b.in_flight += 1
        b.pool.in_flight += 1
        want.append((b.id, _note(ctx)))
        if i % 3 == 0:
            Selector._on_done_py(py.selector, b, 0.002 * (i % 5), "ok", now)  # type: ignore[attr-defined]
    assert got == want
    assert _backends(c) == _backends(py) and _pools(c) == _pools(py)
    if not PURE:
        assert not fallbacks, f"{len(fallbacks)} of 300 picks went to the Python balancer"
    # keywords are Python's call convention: forwarded, same answer
    random.seed(12)
    k1 = Selector.pick(c.selector, ctx=_ctx(c, None), exclude=set(), now=1000.5)
    random.seed(12)
    k2 = Selector._pick_py(py.selector, ctx=_ctx(py, None), exclude=set(), now=1000.5)  # type: ignore[attr-defined]
    assert k1.id == k2.id


# -- cases from a review of the C (each failed before its fix) -------------------------

def _pick_both(c: Node, py: Node, seed: int = 5) -> tuple[object, object]:
    out = []
    for node, pick in ((c, Selector.pick), (py, Selector._pick_py)):  # type: ignore[attr-defined]
        random.seed(seed)
        ctx = _ctx(node, None)
        r = _call(pick, node.selector, ctx, set(), 1000.0)
        out.append((r if r[0] == "raise" or isinstance(r[1], tuple) else _outcome(r[1]), _note(ctx),
                    random.random()))
    return out[0], out[1]


def test_a_plan_whose_state_changes_under_a_comparison_is_python_s() -> None:
    """plan.valid_until with a __ge__ that rebinds plan.gen: the C must not use the
    old value (it was a borrowed reference, freed by then); odd values are Python's."""
    c, py = _node([3], "latency", None, "p2c_ewma", False), _node([3], "latency", None, "p2c_ewma", False)
    for node in (c, py):
        _warm(node, 1000.0)
        plan = node.selector.plans["r"]

        class ValidUntil:
            def __le__(self, other: object, plan: object = plan) -> bool:
                plan.gen = -1   # type: ignore[attr-defined]   # a stale plan: must be refreshed
                return False
            __ge__ = __le__
        plan.valid_until = ValidUntil()  # type: ignore[assignment]
    got, want = _pick_both(c, py)
    assert got == want
    assert c.selector.plans["r"].gen == py.selector.plans["r"].gen != -1


def test_odd_values_after_a_draw_follow_python() -> None:
    """round_robin: an empty first region (nothing drawn), then a float in-flight
    count in the next region: compared as Python compares it, no TypeError."""
    c, py = _node([2, 2], "latency", 5, "round_robin", False), _node([2, 2], "latency", 5, "round_robin", False)
    for node in (c, py):
        _warm(node, 1000.0)
        rps = node.selector.plans["r"].ranking
        rps[0].view = []
        rps[0].in_flight = -1
        rps[1].in_flight = 1.0
    got, want = _pick_both(c, py)
    assert got == want and got[0][0] == "backend"


def test_replaced_module_globals_are_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_done with cluster._exp or selection.on_done replaced, p2c with pool._exp
    replaced: Python's results (the C calls what Python would, or hands over)."""
    from proxy import selection
    from proxy.balance import cluster, pool
    for module, name, fake in ((cluster, "_exp", lambda x: 0.5), (pool, "_exp", lambda x: 0.25),
                               (selection, "on_done", lambda b, lat, out, now: None)):
        c, py = _node([3], "latency", None, "p2c_ewma", False), _node([3], "latency", None, "p2c_ewma", False)
        with monkeypatch.context() as m:
            m.setattr(module, name, fake)
            for node in (c, py):
                _warm(node, 1000.0)
                for b in node.selector.cluster.backends():
                    b.samples, b.ewma_ms, b.stamp = 3, 80.0, 999.0
            assert _pick_both(c, py)[0] == _pick_both(c, py)[1]
            for node, done in ((c, Selector.on_done), (py, Selector._on_done_py)):  # type: ignore[attr-defined]
                for b in node.selector.cluster.backends():
                    b.in_flight += 1
                    b.pool.in_flight += 1
                    done(node.selector, b, 0.01, "ok", 1000.5)
        assert _backends(c) == _backends(py), name


def test_the_c_is_set_up_once() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    from proxy.balance import _pick  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="already set up"):
        _pick.setup(*([object()] * 14))
