"""NovaEdge vs nginx, one worker each, in front of the same fast backend.
A program that prints figures, not a test.

    python loadtests/bench_nginx.py            # full: 8 cells x 2 rounds, 10 s runs (~8 min)
    python loadtests/bench_nginx.py --quick    # 64 connections only, 5 s runs (~3 min)
    python loadtests/bench_nginx.py --profile-only   # just the py-spy / strace section

Pinning (the machine has 2 cores): the proxy under test on CPU 0; the backend
nginx and wrk (-t1) on CPU 1. Both proxies stay up for the whole run (the idle
one costs nothing) and are measured in alternating order, one wrk run at a time.

Cells: connections {64, 256} x response {tiny: 3 bytes, 16k: 16 KiB} x request
headers {minimal: Host only, 44-byte head; browser: 13 browser headers + Host,
841-byte head}.

Per run: requests/s, p50/p99 from wrk, and the proxy's CPU time per request:
utime+stime from /proc/<pid>/stat (nginx: master + worker) before and after
the run, divided by the requests wrk completed. This machine may be shared
with other work, so each run also records "wait" (the proxy runnable but
waiting for its CPU, /proc/<pid>/task/*/schedstat) and "noise" (CPU used by
processes that are not ours, /proc/stat minus our children); a run with too
much of either is repeated once and the quieter of the two kept.

Targets (issue 2), NovaEdge over nginx with the same headers on the wire:
CPU/request <= 1.25x (64 conns, tiny, minimal), <= 1.5x (64 conns, tiny,
browser); p99 <= 1.5x at the same load. "nginx-bare" (nginx's default
headers, no X-Forwarded-*/Via/X-Request-Id) and "py-floor" (bench/floor_proxy.py,
the least a uvloop+httptools proxy can cost) are reference rows in the c64 tiny
cells: what the header work costs nginx, and how close Python can get.

Observability cost (issue 7): "novaedge-observe" is the same build with
metrics and the access log ON (the log written to a file in the run's temp
dir), measured in the c64 tiny minimal cell only, in the same alternating
runs; the report states its CPU us/request over plain "novaedge" (which runs
with both off): "observe cost in the core bench: +X us/req". --no-observe
leaves it out.

Same offered load (paced): the matrix runs every proxy flat out, where a
slower proxy also gets less batching per epoll wakeup (more kernel CPU per
request) and its p99 is mostly queueing. After it, the c64 tiny minimal cell
is run again with every row (nginx-matched, novaedge, novaedge-observe) at
one request rate, wrk's Lua delay() holding its 64 connections to a send
schedule (bench/wrk.py; latency is timed from the send, think time excluded):
"Same offered load (paced, N req/s)" gives achieved req/s (should agree within
5%), p50/p90/p99/max, CPU us/req and the ratios to nginx at that load, and
"observe cost at equal load: +X us/req". The rate is --paced-rate, by default
--paced-fraction (0.6) of the slowest row's saturated req/s in this run,
rounded (10000 when the matrix did not run that cell). --no-paced skips it
(about 1 min in --quick).

Writes the report to artifacts/bench_nginx.txt (and the profile's raw stacks
and flame graph beside it).
"""
from __future__ import annotations

import argparse
import atexit
import itertools
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import profile, servers, wrk  # noqa: E402
from bench.servers import Cpu  # noqa: E402

ARTIFACTS = servers.REPO / "artifacts"
PROXY_CPU, LOAD_CPU = 0, 1
TARGET_CPU = {"minimal": 1.25, "browser": 1.5}
TARGET_P99 = 1.5
PATHS = {"tiny": "/tiny", "16k": "/16k"}
REFERENCES = ("nginx-bare", "py-floor")
NOVAEDGES = ("novaedge", "candidate")
OBSERVE = "novaedge-observe"      # novaedge with metrics + access log on
OBSERVE_CELL = "c64 tiny minimal"
PACED_DEFAULT_RATE = 10000   # req/s when no saturated run of the cell gives one
PACED_SPREAD = 0.05          # achieved req/s of the paced rows should agree within this


@dataclass(frozen=True)
class Cell:
    conns: int
    size: str
    headers: str

    @property
    def label(self) -> str:
        return f"c{self.conns} {self.size} {self.headers}"

    @property
    def is_target(self) -> bool:
        return self.conns == 64 and self.size == "tiny"


PACED_CELL = Cell(64, "tiny", "minimal")   # the paced section's cell (= OBSERVE_CELL)


@dataclass(frozen=True)
class Run:
    cell: Cell
    proxy: str
    round: int
    res: wrk.WrkResult
    cpu: Cpu
    wait_pct: float    # the proxy runnable but waiting for CPU 0, % of the run
    noise_pct: float   # CPU used by processes that are not ours, % of one core
    load_pct: float    # backend nginx + wrk CPU, % of one core (CPU 1 is theirs)

    @property
    def cpu_us(self) -> float:
        return self.cpu.total / self.res.requests * 1e6 if self.res.requests else float("nan")


def measure(p: servers.Child, cell: Cell, scripts: dict[str, Path], duration: float, rnd: int,
            ours: list[servers.Child]) -> Run:
    """One wrk run against ``p``; ``ours`` are all our long-lived children
    (backend, both proxies): with wrk (our only reaped child, so RUSAGE_CHILDREN
    is its time) they are subtracted from the machine's busy time to give noise."""
    url = f"http://127.0.0.1:{p.port}{PATHS[cell.size]}"
    before = {c.name: c.cpu_time().total for c in ours}
    c0, w0 = p.cpu_time(), p.wait_time()
    k0, b0 = resource.getrusage(resource.RUSAGE_CHILDREN), servers.machine_busy()
    res = wrk.run(url, cell.conns, duration, scripts[cell.headers], LOAD_CPU)
    c1, w1 = p.cpu_time(), p.wait_time()
    k1, b1 = resource.getrusage(resource.RUSAGE_CHILDREN), servers.machine_busy()
    spent = {c.name: c.cpu_time().total - before[c.name] for c in ours}
    cpu = c1 - c0
    wrk_cpu = (k1.ru_utime - k0.ru_utime) + (k1.ru_stime - k0.ru_stime)
    d = res.duration_s or duration
    load = (wrk_cpu + spent["backend"]) / d
    noise = max(0.0, (b1 - b0) - sum(spent.values()) - wrk_cpu) / d
    return Run(cell, p.name, rnd, res, cpu, (w1 - w0) / d * 100, noise * 100, load * 100)


@dataclass(frozen=True)
class Agg:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_us: float
    usr_us: float
    sys_us: float
    cpu_pct: float
    wait_pct: float
    noise_pct: float
    load_pct: float
    spread: str
    errors: int


def aggregate(runs: list[Run]) -> Agg:
    reqs = sum(r.res.requests for r in runs)
    dur = sum(r.res.duration_s for r in runs)
    usr = sum(r.cpu.user for r in runs)
    sys_ = sum(r.cpu.sys for r in runs)
    per = sorted(r.cpu_us for r in runs)
    return Agg(rps=reqs / dur, p50_ms=statistics.median(r.res.p50_us for r in runs) / 1000,
               p90_ms=statistics.median(r.res.p90_us for r in runs) / 1000,
               p99_ms=statistics.median(r.res.p99_us for r in runs) / 1000,
               max_ms=max(r.res.max_us for r in runs) / 1000,
               cpu_us=(usr + sys_) / reqs * 1e6, usr_us=usr / reqs * 1e6, sys_us=sys_ / reqs * 1e6,
               cpu_pct=(usr + sys_) / dur * 100, wait_pct=max(r.wait_pct for r in runs),
               noise_pct=max(r.noise_pct for r in runs),
               load_pct=statistics.mean(r.load_pct for r in runs),
               spread=f"{per[0]:.1f}-{per[-1]:.1f}" if len(per) > 1 else "",
               errors=sum(r.res.error_count for r in runs))


class Report:
    """Prints and keeps every line for artifacts/bench_nginx.txt."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")


def verdict(ratio: float, limit: float, target: bool) -> str:
    ok = ratio <= limit
    return ("PASS" if ok else "FAIL") if target else ("(pass)" if ok else "(fail)")


def table(out: Report, cells: list[Cell], runs: list[Run]) -> list[str]:
    out(f"{'cell':<20} {'proxy':<14} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU us/req':>10} {'usr+sys':>11} {'runs':>11} {'CPU%':>5} {'load%':>5} {'wait%':>5} "
        f"{'noise%':>6}  "
        f"{'CPU x':>6} {'p99 x':>6}  verdict (CPU, p99)")
    headline: list[str] = []
    for cell in cells:
        by = {name: aggregate([r for r in runs if r.cell == cell and r.proxy == name])
              for name in dict.fromkeys(r.proxy for r in runs if r.cell == cell)}
        base = by.get("nginx-matched")
        for name, a in by.items():
            ratios = verdicts = ""
            if name != "nginx-matched" and base is not None:
                cx, px = a.cpu_us / base.cpu_us, a.p99_ms / base.p99_ms
                ratios = f"{cx:6.2f} {px:6.2f}"
                if name in NOVAEDGES:
                    vc = verdict(cx, TARGET_CPU[cell.headers], cell.is_target)
                    vp = verdict(px, TARGET_P99, cell.is_target)
                    verdicts = f"{vc}, {vp}"
                    if cell.is_target:
                        headline.append(f"  {name:<9} CPU/req {cell.label:<18} {cx:5.2f}x (target <= "
                                        f"{TARGET_CPU[cell.headers]}x) {vc}")
                        headline.append(f"  {name:<9} p99     {cell.label:<18} {px:5.2f}x (target <= "
                                        f"{TARGET_P99}x) {vp}")
            else:
                ratios = f"{'':6} {'':6}"
            err = f"  ERRORS: {a.errors}" if a.errors else ""
            out(f"{cell.label:<20} {name:<14} {a.rps:8.0f} {a.p50_ms:7.2f} {a.p99_ms:7.2f} "
                f"{a.cpu_us:10.1f} {a.usr_us:5.1f}+{a.sys_us:<5.1f} {a.spread:>11} {a.cpu_pct:5.0f} "
                f"{a.load_pct:5.0f} {a.wait_pct:5.1f} {a.noise_pct:6.0f}  {ratios}  {verdicts}{err}")
        out()
    return headline


def run_matrix(out: Report, args: argparse.Namespace, proxies: dict[str, servers.Child],
               cells: list[Cell], scripts: dict[str, Path], ours: list[servers.Child]) -> list[Run]:
    plan = []
    for rnd in range(args.rounds):
        for i, cell in enumerate(cells):
            names = ["nginx-matched", *[n for n in NOVAEDGES if n in proxies]]
            if cell.is_target:   # reference rows only where the targets are
                names[1:1] = [n for n in REFERENCES if n in proxies]
            if cell.label == OBSERVE_CELL and OBSERVE in proxies:
                names.insert(names.index("novaedge") + 1, OBSERVE)
            if (rnd + i) % 2:
                names.reverse()   # alternate who goes first, cell by cell and round by round
            plan += [(rnd, cell, n) for n in names]
    per_run = args.duration + 1.5
    total = len(plan) * per_run
    out(f"{len(plan)} runs of {args.duration:g} s, about {total / 60:.1f} min; noisy runs repeated "
        f"once while the whole stays under {args.budget:g} min")
    out()
    return run_plan(out, args, proxies, plan, scripts, ours, args.budget * 60)


def run_plan(out: Report, args: argparse.Namespace, proxies: dict[str, servers.Child],
             plan: list[tuple[int, Cell, str]], scripts: dict[str, Path], ours: list[servers.Child],
             budget_s: float, tag: str = "") -> list[Run]:
    """Measures ``plan`` (round, cell, proxy) in order, printing a line per run;
    a noisy run is repeated once (the quieter kept) while the plan stays under
    ``budget_s``. ``tag`` marks the progress lines (the paced section's)."""
    runs: list[Run] = []
    per_run = args.duration + 1.5
    t_start = time.monotonic()
    for k, (rnd, cell, name) in enumerate(plan, 1):
        r = measure(proxies[name], cell, scripts, args.duration, rnd, ours)
        note = ""
        left = (len(plan) - k) * per_run
        noisy = r.noise_pct > args.max_noise or r.wait_pct > args.max_wait
        if noisy and time.monotonic() - t_start + left + per_run > budget_s:
            note = "  (noisy, not repeated: time budget)"
        elif noisy:
            time.sleep(1.0)
            again = measure(proxies[name], cell, scripts, args.duration, rnd, ours)
            note = f"  (repeated: noise {r.noise_pct:.0f}%, wait {r.wait_pct:.1f}%)"
            r = again if again.noise_pct + again.wait_pct < r.noise_pct + r.wait_pct else r
        runs.append(r)
        out(f"  [{k:>2}/{len(plan)} {time.monotonic() - t_start:5.0f}s] round {rnd + 1} {tag}{cell.label:<20} "
            f"{name:<14} {r.res.rps:8.0f} req/s  p50 {r.res.p50_us / 1000:6.2f} ms  "
            f"p99 {r.res.p99_us / 1000:6.2f} ms  {r.cpu_us:6.1f} us/req  load {r.load_pct:3.0f}%  wait {r.wait_pct:4.1f}%  noise {r.noise_pct:3.0f}%"
            f"{'  errors ' + str(r.res.errors) if r.res.error_count else ''}{note}")
    return runs


def observe_cost(out: Report, runs: list[Run]) -> None:
    """The observe row against plain novaedge, the per-request CPU difference."""
    def rows(name: str) -> list[Run]:
        return [r for r in runs if r.cell.label == OBSERVE_CELL and r.proxy == name]
    obs, plain = rows(OBSERVE), rows("novaedge")
    if not obs or not plain:
        return
    a, b = aggregate(obs), aggregate(plain)
    # each round measures both back to back: the per-round differences show the spread
    per = sorted(o.cpu_us - p.cpu_us for o, p in zip(sorted(obs, key=lambda r: r.round),
                                                       sorted(plain, key=lambda r: r.round)))
    spread = f", per round {per[0]:+.1f} to {per[-1]:+.1f}" if len(per) > 1 else ""
    out(f"Observability (issue 7), {OBSERVE_CELL}: {OBSERVE} {a.cpu_us:.1f} us/req "
        f"(usr {a.usr_us:.1f} + sys {a.sys_us:.1f}), novaedge {b.cpu_us:.1f} us/req "
        f"(usr {b.usr_us:.1f} + sys {b.sys_us:.1f}); req/s {a.rps:.0f} vs {b.rps:.0f}")
    out(f"  observe cost in the core bench: {a.cpu_us - b.cpu_us:+.1f} us/req{spread} "
        f"(usr {a.usr_us - b.usr_us:+.1f}, sys {a.sys_us - b.sys_us:+.1f}; metrics + access log to a file; "
        f"target < 3 us/req)")
    out("  (both rows run the CPU flat out: a slower proxy also pays more kernel TCP work per request, "
        "so the sys part is partly that, not the log's writes)")
    out()


def paced_names(proxies: dict[str, servers.Child]) -> list[str]:
    names = ["nginx-matched", *[n for n in NOVAEDGES if n in proxies]]
    if OBSERVE in proxies:
        names.insert(names.index("novaedge") + 1, OBSERVE)
    return names


def paced_rate(args: argparse.Namespace, names: list[str], saturated: list[Run]) -> tuple[int, str]:
    """--paced-rate, or --paced-fraction of the slowest paced row's saturated
    req/s in this run's PACED_CELL, rounded to 100; else PACED_DEFAULT_RATE."""
    if args.paced_rate:
        return args.paced_rate, "--paced-rate"
    sat = {n: aggregate(rows).rps for n in names
           if (rows := [r for r in saturated if r.cell == PACED_CELL and r.proxy == n])}
    if not sat:
        return PACED_DEFAULT_RATE, f"default: no saturated {PACED_CELL.label} runs to take it from"
    slow = min(sat, key=lambda n: sat[n])
    rate = max(100, int(round(args.paced_fraction * sat[slow], -2)))
    return rate, (f"{args.paced_fraction:.0%} of the slowest saturated req/s above ({slow} "
                  f"{sat[slow]:.0f}), rounded")


def paced_section(out: Report, args: argparse.Namespace, proxies: dict[str, servers.Child],
                  workdir: Path, ours: list[servers.Child], saturated: list[Run]) -> None:
    """PACED_CELL again, every row at the same offered request rate (wrk's delay()
    hook, bench/wrk.py): at saturation a slower proxy also gets less batching
    per wakeup (more kernel CPU per request) and its p99 is mostly queueing; at
    equal load CPU/req and p99 compare like for like (issue 2's "p99 at the same
    load", issue 7's observe cost)."""
    cell, names = PACED_CELL, paced_names(proxies)
    rate, why = paced_rate(args, names, saturated)
    scripts = {cell.headers: wrk.write_script(workdir / f"paced-{cell.headers}.lua",
                                              wrk.HEADER_SETS[cell.headers], rate, cell.conns)}
    plan = [(rnd, cell, n) for rnd in range(args.rounds)
            for n in (reversed(names) if rnd % 2 else names)]   # alternate who goes first, as the matrix
    per_run = args.duration + 1.5
    out(f"== Same offered load (paced, {rate} req/s): {cell.label}, {', '.join(names)} ==")
    out(f"Rate: {why}. wrk's delay() hook keeps one send schedule for its {cell.conns} connections, "
        f"one request every 1/{rate} s, so each connection waits about {cell.conns}/{rate} s = "
        f"{cell.conns / rate * 1000:.1f} ms between requests; latency is timed from the send (think time "
        f"not in it). wrk's timers tick in whole ms, so requests leave in bursts of about {rate / 1000:.0f} "
        f"each ms: p50 includes waiting behind the rest of the burst, which grows with CPU/req. "
        f"{len(plan)} runs of {args.duration:g} s (about {len(plan) * per_run / 60:.1f} min), "
        f"rows alternating first round by round.")
    out()
    runs = run_plan(out, args, proxies, plan, scripts, ours, 2 * len(plan) * per_run, tag="paced ")
    out()
    by = {n: aggregate([r for r in runs if r.proxy == n]) for n in names}
    base = by["nginx-matched"]
    out(f"  {'proxy':<17} {'req/s':>7} {'vs asked':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'CPU us/req':>10} {'usr+sys':>11} {'runs':>11} {'CPU%':>5} {'wait%':>5} "
        f"{'noise%':>6}  {'CPU x':>6} {'p99 x':>6}")
    for n, a in by.items():
        ratios = f"{a.cpu_us / base.cpu_us:6.2f} {a.p99_ms / base.p99_ms:6.2f}" if n != "nginx-matched" else ""
        err = f"  ERRORS: {a.errors}" if a.errors else ""
        out(f"  {n:<17} {a.rps:7.0f} {(a.rps / rate - 1) * 100:+7.1f}% {a.p50_ms:7.2f} {a.p90_ms:7.2f} "
            f"{a.p99_ms:7.2f} {a.max_ms:7.2f} {a.cpu_us:10.1f} {a.usr_us:5.1f}+{a.sys_us:<5.1f} "
            f"{a.spread:>11} {a.cpu_pct:5.0f} {a.wait_pct:5.1f} {a.noise_pct:6.0f}  {ratios}{err}")
    lo, hi = min(a.rps for a in by.values()), max(a.rps for a in by.values())
    ok = hi / lo - 1 <= PACED_SPREAD and all(abs(a.rps / rate - 1) <= PACED_SPREAD for a in by.values())
    out(f"  achieved req/s {lo:.0f} to {hi:.0f} (asked {rate}): rows {hi / lo - 1:.1%} apart, "
        + ("same load, comparable" if ok else
           f"NOT within {PACED_SPREAD:.0%}: a row fell behind the schedule, its figures are not at equal load"))
    for n in names:
        if n != "nginx-matched":
            px = by[n].p99_ms / base.p99_ms
            out(f"  p99 at equal load: {n:<17} {px:5.2f}x nginx-matched (issue 2 target <= {TARGET_P99}x) "
                f"{verdict(px, TARGET_P99, ok)}; CPU/req {by[n].cpu_us / base.cpu_us:5.2f}x")
    if OBSERVE in by:
        o, b = by[OBSERVE], by["novaedge"]
        per = sorted(x.cpu_us - y.cpu_us for x, y in zip(sorted((r for r in runs if r.proxy == OBSERVE),
                                                                 key=lambda r: r.round),
                                                          sorted((r for r in runs if r.proxy == "novaedge"),
                                                                 key=lambda r: r.round)))
        spread = f", per round {per[0]:+.1f} to {per[-1]:+.1f}" if len(per) > 1 else ""
        out(f"  observe cost at equal load: {o.cpu_us - b.cpu_us:+.1f} us/req (usr {o.usr_us - b.usr_us:+.1f}, "
            f"sys {o.sys_us - b.sys_us:+.1f}){spread}; {OBSERVE} {o.cpu_us:.1f} vs novaedge {b.cpu_us:.1f} us/req")
    out("  (p50/p90/p99: median of the runs; max: of all runs; x = this row / nginx-matched at the same rate)")
    out()


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(servers.REPO))
    except ValueError:
        return str(p)


def profile_section(out: Report, args: argparse.Namespace, proxies: dict[str, servers.Child],
                    scripts: dict[str, Path], workdir: Path, ours: list[servers.Child]) -> None:
    nova = proxies["novaedge"]
    url = f"http://127.0.0.1:{nova.port}/tiny"
    secs = args.profile_seconds
    hs = args.profile_headers
    cell = Cell(64, "tiny", hs)
    # The CPU to attribute, measured without the profiler attached.
    clean = [measure(nova, cell, scripts, 5.0, 0, ours) for _ in range(2)]
    reqs = sum(r.res.requests for r in clean)
    usr = sum(r.cpu.user for r in clean) / reqs * 1e6
    sys_ = sum(r.cpu.sys for r in clean) / reqs * 1e6
    out(f"== Profile: NovaEdge under c64 tiny {hs}: {usr:.1f} us user + {sys_:.1f} us sys CPU per request "
        f"(2 x 5 s, no profiler; wait {max(r.wait_pct for r in clean):.0f}%, "
        f"noise {max(r.noise_pct for r in clean):.0f}%) ==")
    if not profile.pyspy_available():
        out("  py-spy not installed: pip install py-spy (skipped)")
    else:
        raw_path = args.out.with_name(f"{args.out.stem}_profile.txt")
        native = True
        load = wrk.start(url, 64, secs + 4, scripts[hs], LOAD_CPU)
        time.sleep(1.5)
        try:
            raw = profile.pyspy(nova.pid, secs, raw_path, LOAD_CPU, native=True)
        except RuntimeError as e:   # native unwinding unavailable: Python frames only
            out(f"  py-spy --native failed ({str(e).splitlines()[0]}); Python frames only")
            native = False
            wrk.finish(load, secs + 30)
            load = wrk.start(url, 64, secs + 4, scripts[hs], LOAD_CPU)
            time.sleep(1.5)
            raw = profile.pyspy(nova.pid, secs, raw_path, LOAD_CPU, native=False)
        res = wrk.finish(load, secs + 30)
        prof = profile.summarize(raw, usr, sys_ if native else 0.0)
        out(f"py-spy record{' --native' if native else ''} -r 200 for {secs:g} s: {prof.samples} samples "
            f"({prof.samples / (200 * secs) * 100:.0f}% busy), {prof.kernel_samples} in syscalls; load meanwhile "
            f"{res.rps:.0f} req/s; raw stacks: {_rel(raw_path)}")
        out("Samples in libc syscall wrappers carry the measured sys time, the others the user time, so each")
        out("figure is CPU microseconds per request (py-spy samples wall time; this undoes its bias to syscalls).")
        for title, which, n in (("self (the function's own code)", "self", args.top),
                                ("inclusive (with what it calls; Python functions)", "total", args.top),
                                ("self by file", "file", 15)):
            out(f"  {title}:")
            out(f"  {'us/req':>7} {'share':>6}")
            for name, us, share in prof.top(which, n):
                out(f"  {us:7.2f} {share * 100:5.1f}%  {name}")
        svg = args.out.with_name(f"{args.out.stem}_profile.svg")
        load = wrk.start(url, 64, secs + 4, scripts[hs], LOAD_CPU)
        time.sleep(1.5)
        profile.pyspy_svg(nova.pid, secs, svg, LOAD_CPU)
        wrk.finish(load, secs + 30)
        out(f"flame graph (Python frames): {_rel(svg)}")
        out()
    if not profile.strace_available():
        out("strace not installed: syscall counts skipped")
        return
    out(f"== Syscalls per request, c64 tiny {hs}, strace -c for 5 s (slows both proxies; counts stay right) ==")
    counts: dict[str, dict[str, float]] = {}
    for name in ("nginx-matched", "novaedge"):
        p = proxies[name]
        st = profile.StraceCount(p.pid, workdir / f"strace-{name}.txt", LOAD_CPU)
        res = wrk.run(f"http://127.0.0.1:{p.port}/tiny", 64, 5, scripts[hs], LOAD_CPU)
        calls = st.stop()
        counts[name] = {k: v / res.requests for k, v in calls.items()} if res.requests else {}
    names = sorted(set(itertools.chain(*counts.values())),
                   key=lambda k: -max(c.get(k, 0.0) for c in counts.values()))
    out(f"  {'syscall':<16} {'nginx':>8} {'novaedge':>9}")
    for k in names:
        a, b = counts["nginx-matched"].get(k, 0.0), counts["novaedge"].get(k, 0.0)
        if max(a, b) >= 0.01:
            out(f"  {k:<16} {a:8.2f} {b:9.2f}")
    out(f"  {'total':<16} {sum(counts['nginx-matched'].values()):8.2f} {sum(counts['novaedge'].values()):9.2f}")
    out()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 connections only, 5 s runs")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default 10, --quick 5)")
    ap.add_argument("--rounds", type=int, default=2, help="measured runs per cell and proxy")
    ap.add_argument("--conns", default=None, help="comma list (default 64,256; --quick 64)")
    ap.add_argument("--no-refs", action="store_true",
                    help="skip the reference rows (nginx-bare, py-floor) in the c64 tiny cells")
    ap.add_argument("--budget", type=float, default=12.0,
                    help="minutes: repeat noisy runs only while the matrix stays under this")
    ap.add_argument("--max-noise", type=float, default=10.0,
                    help="repeat a run once when other processes used more than this %% of a core")
    ap.add_argument("--max-wait", type=float, default=3.0,
                    help="repeat a run once when the proxy waited for its CPU more than this %% of it")
    ap.add_argument("--no-observe", action="store_true",
                    help=f"skip the {OBSERVE} row (metrics + access log on) in the c64 tiny minimal cell")
    ap.add_argument("--no-paced", action="store_true",
                    help=f"skip the same-offered-load section ({PACED_CELL.label} at one fixed req/s)")
    ap.add_argument("--paced-rate", type=int, default=None,
                    help="req/s offered to every row in the paced section (default: --paced-fraction of "
                         f"the slowest row's saturated req/s in this run, else {PACED_DEFAULT_RATE})")
    ap.add_argument("--paced-fraction", type=float, default=0.6,
                    help="the paced rate as a fraction of the slowest saturated req/s (default 0.6)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy and strace section")
    ap.add_argument("--profile-only", action="store_true", help="only the py-spy and strace section")
    ap.add_argument("--profile-seconds", type=float, default=10.0)
    ap.add_argument("--profile-headers", choices=sorted(wrk.HEADER_SETS), default="minimal",
                    help="header set of the profiled load (c64, tiny)")
    ap.add_argument("--top", type=int, default=25, help="functions listed in the profile")
    ap.add_argument("--keepalive", type=int, default=64, help="nginx upstream keepalive")
    ap.add_argument("--out", type=Path, default=ARTIFACTS / "bench_nginx.txt")
    ap.add_argument("--novaedge-root", type=Path, default=servers.REPO,
                    help="measure the NovaEdge in another checkout instead of this one")
    ap.add_argument("--candidate", type=Path, default=None,
                    help="another NovaEdge checkout (a candidate fix) measured beside it in every cell")
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 5.0 if args.quick else 10.0
    if args.conns is None:
        args.conns = "64" if args.quick else "64,256"
    args.conns = [int(c) for c in str(args.conns).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = servers.missing_tools()
    if missing:
        for m in missing:
            print(f"bench_nginx: {m}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    children: list[servers.Child] = []

    def cleanup() -> None:
        for c in reversed(children):
            c.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    out = Report()
    backend = servers.Backend(workdir / "backend", LOAD_CPU)
    backend.start()
    children.append(backend)
    proxies: dict[str, servers.Child] = {
        "nginx-matched": servers.NginxProxy(workdir / "nginx-matched", PROXY_CPU, backend.port,
                                            "matched", args.keepalive),
        "novaedge": servers.NovaEdge(workdir / "novaedge", PROXY_CPU, backend.port,
                                     args.novaedge_root.resolve()),
    }
    if args.candidate is not None and not args.profile_only:
        proxies["candidate"] = servers.NovaEdge(workdir / "candidate", PROXY_CPU, backend.port,
                                                args.candidate.resolve(), name="candidate")
    if not args.no_observe and not args.profile_only and 64 in args.conns:
        proxies[OBSERVE] = servers.NovaEdge(workdir / OBSERVE, PROXY_CPU, backend.port,
                                            args.novaedge_root.resolve(), name=OBSERVE, observe=True)
    if not args.no_refs and not args.profile_only:
        proxies["nginx-bare"] = servers.NginxProxy(workdir / "nginx-bare", PROXY_CPU, backend.port,
                                                   "bare", args.keepalive)
        proxies["py-floor"] = servers.FloorProxy(workdir / "py-floor", PROXY_CPU, backend.port)
    for p in proxies.values():
        p.start()
        children.append(p)
    scripts = {name: wrk.write_script(workdir / f"{name}.lua", hs) for name, hs in wrk.HEADER_SETS.items()}

    out(f"NovaEdge vs nginx: proxy pinned to CPU {PROXY_CPU}; backend nginx (1 worker) and wrk -t1 on CPU "
        f"{LOAD_CPU}; {servers.nginx_version() and 'nginx ' + servers.nginx_version()}, "
        f"{profile.python_info()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for name, p in proxies.items():
        out(f"  {name:<14} {p.describe()}")
    out("  backend        nginx 1 worker, access_log off: /tiny = return 200 \"ok\\n\" (3 bytes), "
        "/16k = 16384-byte static file (sendfile)")
    for name, hs in wrk.HEADER_SETS.items():
        out(f"  headers {name:<7} {len(hs) + 1} headers, request head {wrk.request_head_bytes(hs, '/tiny', 8080)} bytes")
    out()
    # Warm up: both connection pools, the allocators, the caches.
    for p in proxies.values():
        wrk.run(f"http://127.0.0.1:{p.port}/tiny", max(args.conns), 2, scripts["browser"], LOAD_CPU)

    if not args.profile_only:
        cells = [Cell(c, s, h) for c in args.conns for s in ("tiny", "16k") for h in ("minimal", "browser")]
        runs = run_matrix(out, args, proxies, cells, scripts, children)
        out()
        out(f"Summary: {args.rounds} run(s) of {args.duration:g} s per row; p50/p99 the median of the runs; "
            f"CPU us/req = proxy utime+stime / requests over all runs (runs: min-max per run); "
            f"CPU% = the proxy's, of one core")
        out("  load% = backend + wrk CPU (CPU 1: near 100 means the load side, not the proxy, sets req/s); "
            "wait% = proxy runnable but waiting for CPU 0 (max of runs); noise% = CPU of processes not ours "
            "(max of runs); x = this row / nginx-matched")
        out()
        headline = table(out, cells, runs)
        out("Targets (issue 2), NovaEdge / nginx-matched:")
        for line in headline or ["  (no c64 tiny cell measured)"]:
            out(line)
        out()
        observe_cost(out, runs)
        out.save(args.out)
        if not args.no_paced:
            paced_section(out, args, proxies, workdir, children, runs)
    out.save(args.out)
    if not args.no_profile:
        profile_section(out, args, proxies, scripts, workdir, children)
        out.save(args.out)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
