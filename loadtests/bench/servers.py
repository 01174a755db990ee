"""The processes under test, each started as a pinned child and stopped by pid.

- `Backend`: nginx, 1 worker, ``/tiny`` (a 3-byte ``return 200``) and ``/16k``
  (a 16 KiB static file), pinned to the load CPU.
- `NginxProxy`: nginx, 1 worker, ``proxy_pass`` to an upstream block with
  ``keepalive 64``; ``headers="matched"`` adds the request/response headers
  NovaEdge adds (X-Forwarded-*, X-Real-IP, Via, X-Request-Id) so both proxies
  put the same bytes on the wire; ``headers="bare"`` is nginx's default.
- `NovaEdge`: ``python -m proxy run <generated yaml>``, 1 worker.

CPU time is read from /proc/<pid>/stat (utime+stime, clock ticks) summed over
the process and its descendants: nginx's master and worker, NovaEdge's one
process (workers: 1 serves in the supervisor process itself).
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
NGINX = "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIXTEEN_K = 16 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cpu:
    """CPU time in seconds; ``a - b`` gives the time spent in between."""
    user: float
    sys: float

    @property
    def total(self) -> float:
        return self.user + self.sys

    def __sub__(self, other: "Cpu") -> "Cpu":
        return Cpu(self.user - other.user, self.sys - other.sys)


def _descendants(pid: int) -> list[int]:
    out = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except FileNotFoundError:
            continue
        for k in kids:
            out.extend(_descendants(int(k)))
    return out


def proc_cpu(pid: int) -> Cpu:
    """utime+stime of ``pid`` and every live descendant (all threads included)."""
    user = sys_ = 0
    for p in _descendants(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # comm may hold spaces
        user += int(fields[11])   # field 14 of proc(5): utime
        sys_ += int(fields[12])   # field 15: stime
    return Cpu(user / CLK_TCK, sys_ / CLK_TCK)


def proc_wait(pid: int) -> float:
    """Seconds ``pid`` and its descendants spent runnable but waiting for a CPU
    (/proc/<pid>/task/<tid>/schedstat, second field, ns): time other
    processes took from it."""
    ns = 0
    for p in _descendants(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                ns += int(Path(f"/proc/{p}/task/{tid}/schedstat").read_text().split()[1])
            except (FileNotFoundError, IndexError, ValueError):
                continue
    return ns / 1e9


def machine_busy() -> float:
    """Seconds all CPUs spent in user+nice+system since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / CLK_TCK


def _http_ok(port: int, path: str) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status == 200
    except OSError:
        return False


class Child:
    """A pinned child process; `stop` ends it by its pid only."""
    name = "child"

    def __init__(self, workdir: Path, cpu: int) -> None:
        self.workdir = workdir
        self.cpu = cpu
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def cwd(self) -> Path:
        return REPO

    def describe(self) -> str:
        return ""

    def start(self, probe: str = "/tiny", timeout: float = 15.0) -> None:
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(["taskset", "-c", str(self.cpu), *self.argv()],
                                         cwd=self.cwd(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            if _http_ok(self.port, probe):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not answering 200 on :{self.port}{probe} after {timeout:.0f}s:\n"
                           + self.log.read_text(errors="replace")[-2000:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid   # taskset execs the program: same pid

    def cpu_time(self) -> Cpu:
        return proc_cpu(self.pid)

    def wait_time(self) -> float:
        return proc_wait(self.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _nginx_main(workdir: Path, http_block: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""   # temp dirs are ours; workers need them
    temps = "\n".join(f"    {d}_temp_path {workdir}/{d}_temp;"
                      for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
worker_rlimit_nofile 65536;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
{temps}
    keepalive_requests 1000000;    # wrk keeps its connections: never recycle them
    keepalive_timeout 75s;
{http_block}
}}
"""


class _Nginx(Child):
    def write_conf(self) -> Path:
        raise NotImplementedError

    def argv(self) -> list[str]:
        conf = self.write_conf()
        return [NGINX, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                "-c", str(conf), "-g", "daemon off;"]


class Backend(_Nginx):
    name = "backend"

    def __init__(self, workdir: Path, cpu: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, cpu)

    def write_conf(self) -> Path:
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        (www / "16k").write_bytes(bytes(ord("a") + i % 26 for i in range(SIXTEEN_K)))
        block = f"""    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location = /tiny {{ default_type text/plain; return 200 "ok\\n"; }}
        location = /16k {{ root {www}; default_type application/octet-stream; }}
    }}"""
        conf = self.workdir / "nginx.conf"
        conf.write_text(_nginx_main(self.workdir, block))
        return conf


# What NovaEdge adds to each request and response (proxy/request.py
# build_upstream_head, proxy/exchange.py response head), spelled in nginx.
MATCHED_HEADERS = """            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header Via "1.1 nginx";
            proxy_set_header X-Request-Id $request_id;
            add_header Via "1.1 nginx" always;
            add_header X-Request-Id $request_id always;
"""


class NginxProxy(_Nginx):
    def __init__(self, workdir: Path, cpu: int, backend_port: int, headers: str,
                 keepalive: int = 64) -> None:
        self.name = f"nginx-{headers}"
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, cpu)
        self.backend_port = backend_port
        self.headers = headers
        self.keepalive = keepalive

    def describe(self) -> str:
        extra = ("adds X-Forwarded-For/-Proto/-Host, X-Real-IP, Via, X-Request-Id "
                 "upstream and Via, X-Request-Id downstream (as NovaEdge does)"
                 if self.headers == "matched" else "nginx defaults: Host $proxy_host, no X-Forwarded-*")
        return (f"nginx {nginx_version()}: 1 worker, access_log off, proxy_pass to upstream "
                f"keepalive {self.keepalive}, proxy_http_version 1.1, Connection \"\"; {extra}")

    def write_conf(self) -> Path:
        hdrs = MATCHED_HEADERS if self.headers == "matched" else ""
        block = f"""    upstream backend {{
        server 127.0.0.1:{self.backend_port};
        keepalive {self.keepalive};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{hdrs}        }}
    }}"""
        conf = self.workdir / "nginx.conf"
        conf.write_text(_nginx_main(self.workdir, block))
        return conf


class NovaEdge(Child):
    name = "novaedge"

    def __init__(self, workdir: Path, cpu: int, backend_port: int, root: Path = REPO,
                 name: str = "novaedge", observe: bool = False) -> None:
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, cpu)
        self.backend_port = backend_port
        self.root = root   # another checkout (a worktree with a candidate fix) can be measured
        # observe: metrics and the access log on (the log to a file in workdir), to
        # measure what they cost per request beside the plain build
        self.observe = observe
        self.access_log = workdir / "access.log"
        self.config, self.switched_off = self._build_config()

    def _build_config(self) -> tuple[dict[str, Any], list[str]]:
        """The quick-start config (what `proxy proxy --to` builds), with every
        optional per-request feature this build knows about turned off (with
        `observe`, metrics and the access log on instead).

        Each optional key is tried with the build's own `check` command (in a
        child process, so two checkouts never share an imported `proxy`); keys
        its schema does not know yet (it forbids extra keys) are left out and
        reported as absent, so the bench runs on any build.
        """
        cfg: dict[str, Any] = {
            "node": {"region": "us-east-1"},
            "workers": 1,
            "listeners": [{"bind": f"127.0.0.1:{self.port}"}],
            "pools": {"default": {"regions": {"us-east-1": [f"127.0.0.1:{self.backend_port}"]}}},
            "routes": [{"name": "default", "pool": "default"}],
            "limits": {"drain_timeout_s": 1.0},
        }
        ok, msg = self._check(cfg)
        if not ok:
            raise RuntimeError(f"{self.root}: the quick-start config does not validate:\n{msg}")
        switched: list[str] = []
        observed = (("access_log", {"enabled": True, "path": str(self.access_log)},
                     f"access log ON to {self.access_log.name} in its temp dir"),
                    ("metrics", {"enabled": True}, "metrics ON"))
        off = (("access_log", {"enabled": False}, "access_log.enabled=false"),
               ("metrics", {"enabled": False}, "metrics.enabled=false"))
        optional = (*(observed if self.observe else off),
                    # the admin API's default port is fixed: two nodes would collide
                    ("admin", {"listen": "127.0.0.1:0"}, "admin API on an ephemeral port"))
        for key, value, said in optional:
            trial = dict(cfg, **{key: value})
            if self._check(trial)[0]:
                cfg = trial
                switched.append(said)
            else:
                switched.append(f"{key}: not in this build's config (so none)")
        return cfg, switched

    def _check(self, cfg: dict[str, Any]) -> tuple[bool, str]:
        path = self.workdir / "check.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        r = subprocess.run([sys.executable, "-m", "proxy", "check", str(path)], cwd=self.root,
                           capture_output=True, text=True, timeout=60, check=False)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def tree(self) -> str:
        """The commit measured, and whether proxy/ differs from it (read-only git)."""
        def git(*a: str) -> str:
            r = subprocess.run(["git", "-C", str(self.root), *a], capture_output=True, text=True, check=False)
            return r.stdout.strip() if r.returncode == 0 else ""
        head = git("rev-parse", "--short", "HEAD")
        if not head:
            stamp = self.root / "COMMIT"   # a `git archive` snapshot may say where it came from
            return f"snapshot of {stamp.read_text().strip()}" if stamp.exists() else "not a git checkout"
        dirty = git("status", "--porcelain", "--", "proxy")
        return f"commit {head}" + (f" + uncommitted changes in {len(dirty.splitlines())} file(s) under proxy/"
                                   if dirty else "")

    def describe(self) -> str:
        where = "" if self.root == REPO else f" from {self.root}"
        return (f"NovaEdge{where} (python -m proxy run, 1 worker, uvloop+httptools): "
                + "; ".join(self.switched_off)
                + "; adds X-Forwarded-For/-Proto/-Host, X-Real-IP, Via, X-Request-Id upstream, "
                  "Via and X-Request-Id downstream; " + self.tree())

    def argv(self) -> list[str]:
        path = self.workdir / "novaedge.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return [sys.executable, "-m", "proxy", "--log-level", "WARNING", "run", str(path)]

    def cwd(self) -> Path:
        return self.root


_VERSION: str | None = None


def nginx_version() -> str:
    global _VERSION
    if _VERSION is None:
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
        _VERSION = (out.stderr or out.stdout).strip().rpartition("/")[2] or "?"
    return _VERSION


def missing_tools() -> list[str]:
    """What is absent, each with the way to get it."""
    out = []
    if not os.access(NGINX, os.X_OK):
        out.append(f"nginx not found at {NGINX} (apt-get install nginx; .ci/run installs it)")
    if shutil.which("wrk") is None:
        out.append("wrk not found on PATH (apt-get install wrk; .ci/run installs it)")
    if shutil.which("taskset") is None:
        out.append("taskset not found (apt-get install util-linux)")
    return out


class FloorProxy(Child):
    """loadtests/bench/floor_proxy.py: the least a Python proxy can cost."""
    name = "py-floor"

    def __init__(self, workdir: Path, cpu: int, backend_port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, cpu)
        self.backend_port = backend_port

    def describe(self) -> str:
        return ("reference: ~150-line uvloop+httptools proxy (bench/floor_proxy.py), same headers on "
                "the wire as NovaEdge, no checks/timers/tasks: the floor for a Python hot path")

    def argv(self) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("floor_proxy.py")), str(self.port),
                str(self.backend_port)]
