"""The admin listener: status page, /metrics and the JSON API (aiohttp).

    GET  /                              status page (static; its data comes from /api/overview)
    GET  /metrics                       Prometheus text format, the node's totals
    GET  /api/status | config | regions | members | matrix | mitigations | traffic | overview | audit
    POST /api/reload | /api/drain
    POST /api/backends/{id}/eject | /api/backends/{id}/restore     (id may hold '/': "eu-west-1/10.1.0.5:8080")

Access rules are in auth.py. Every action, allowed or refused, is logged on
"novaedge.admin" with the peer and who asked, and kept in /api/audit.
"""
from __future__ import annotations

import collections
import importlib.resources
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from .auth import Kind, decide
from .config import AdminConfig
from .redact import redact
from .view import NodeView

log = logging.getLogger("novaedge.admin")

VIEW_KEY: web.AppKey[NodeView] = web.AppKey("novaedge_view", NodeView)
AUDIT_KEY = web.AppKey[collections.deque[dict[str, Any]]]("novaedge_audit")
WHO_KEY: web.RequestKey[str] = web.RequestKey("novaedge_who", str)

# The page may only talk to its own origin and load nothing from elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _default(o: Any) -> Any:
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


try:
    import orjson

    def _dumps(data: Any) -> str:
        return orjson.dumps(data, default=_default).decode()
except ImportError:  # pragma: no cover - orjson is optional
    def _dumps(data: Any) -> str:
        return json.dumps(data, default=_default)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps, headers=JSON_HEADERS)


def region_health(backends: list[Mapping[str, Any]]) -> str:
    """All backends usable: healthy; none: down; some: degraded; no backends: unknown."""
    if not backends:
        return "unknown"
    up = sum(1 for b in backends if b.get("healthy") and not b.get("ejected"))
    if up == len(backends):
        return "healthy"
    return "down" if up == 0 else "degraded"


def _regions(view: NodeView) -> list[dict[str, Any]]:
    out = []
    for r in view.regions():
        d = dict(r)
        d.setdefault("health", region_health(list(d.get("backends", []))))
        out.append(d)
    return out


def _matrix(view: NodeView, regions: list[dict[str, Any]]) -> dict[str, Any]:
    m = view.latency_matrix()
    order = [r["id"] for r in regions if "id" in r]
    seen = set(order)
    for src, row in m.items():
        for rid in (src, *row):
            if rid not in seen:
                seen.add(rid)
                order.append(rid)
    return {"regions": order, "rtt_ms": m}


def _kind(request: web.Request) -> Kind:
    if request.method in ("GET", "HEAD"):
        return "public" if request.path == "/" else "read"
    return "action"


def build_admin_app(view: NodeView, token: str | None, *,
                    extra_hosts: frozenset[str] = frozenset()) -> web.Application:
    """The admin aiohttp app over `view`. `token` None: read-only, loopback only."""
    page = importlib.resources.files("proxy.observe").joinpath("static/status.html").read_bytes()

    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        kind = _kind(request)
        d = decide(kind, token=token, authorization=request.headers.get("Authorization"),
                   peer=request.remote, host=request.headers.get("Host"), extra_hosts=extra_hosts)
        request[WHO_KEY] = d.who
        if not d.ok:
            if kind == "action":
                _audit(request, request.path, d.status, d.reason)
            headers = dict(JSON_HEADERS)
            if d.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="novaedge-admin"'
            return web.json_response({"error": d.reason}, status=d.status, headers=headers)
        return await handler(request)

    app = web.Application(middlewares=[guard])
    app[VIEW_KEY] = view
    app[AUDIT_KEY] = collections.deque(maxlen=200)

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def metrics(request: web.Request) -> web.Response:
        # the library negotiates text format vs OpenMetrics from Accept, as Prometheus asks
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(view.metrics.registry),
                            headers={"Content-Type": content_type, **JSON_HEADERS})

    async def status(request: web.Request) -> web.Response:
        return _json(view.status())

    async def config(request: web.Request) -> web.Response:
        return _json(redact(view.effective_config()))

    async def regions(request: web.Request) -> web.Response:
        return _json(_regions(view))

    async def members(request: web.Request) -> web.Response:
        return _json(view.members())

    async def matrix(request: web.Request) -> web.Response:
        return _json(_matrix(view, _regions(view)))

    async def mitigations(request: web.Request) -> web.Response:
        return _json(view.mitigations())

    async def traffic(request: web.Request) -> web.Response:
        return _json(view.metrics.traffic())

    async def overview(request: web.Request) -> web.Response:
        regs = _regions(view)
        return _json({"generated_at": time.time(), "status": view.status(), "regions": regs,
                      "matrix": _matrix(view, regs), "members": view.members(),
                      "mitigations": view.mitigations(), "traffic": view.metrics.traffic()})

    async def audit(request: web.Request) -> web.Response:
        entries = request.app[AUDIT_KEY]
        return _json(list(entries))

    async def reload(request: web.Request) -> web.Response:
        return await _act(request, "reload", None, view.reload)

    async def drain(request: web.Request) -> web.Response:
        return await _act(request, "drain", None, view.drain)

    async def eject(request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        return await _act(request, "eject", bid, lambda: view.eject(bid))

    async def restore(request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        return await _act(request, "restore", bid, lambda: view.restore(bid))

    r = app.router
    r.add_get("/", index)
    r.add_get("/metrics", metrics)
    for path, h in (("status", status), ("config", config), ("regions", regions), ("members", members),
                    ("matrix", matrix), ("mitigations", mitigations), ("traffic", traffic),
                    ("overview", overview), ("audit", audit)):
        r.add_get(f"/api/{path}", h)
    r.add_post("/api/reload", reload)
    r.add_post("/api/drain", drain)
    r.add_post("/api/backends/{id:.+}/eject", eject)
    r.add_post("/api/backends/{id:.+}/restore", restore)
    return app


def _audit(request: web.Request, action: str, status: int, detail: str) -> None:
    entry = {"time": time.time(), "action": action, "peer": request.remote,
             "who": request.get(WHO_KEY, "anonymous"), "status": status, "detail": detail}
    request.app[AUDIT_KEY].append(entry)
    level = logging.INFO if status < 400 else logging.WARNING
    log.log(level, "admin action %s by %s from %s: %d %s", action, entry["who"], entry["peer"],
            status, detail)


async def _act(request: web.Request, action: str, target: str | None,
               run: Callable[[], Awaitable[Mapping[str, Any]]]) -> web.Response:
    name = action if target is None else f"{action} {target}"
    try:
        result = dict(await run())
    except KeyError:
        _audit(request, name, 404, "unknown backend")
        return _json({"error": f"unknown backend {target!r}"}, status=404)
    except Exception as e:  # the action failed; the listener must not
        log.exception("admin action %s failed", name)
        _audit(request, name, 500, repr(e))
        return _json({"error": f"{action} failed: {e}"}, status=500)
    status = 422 if result.get("ok") is False else 200
    _audit(request, name, status, "ok" if status == 200 else str(result.get("error", "failed")))
    return _json(result, status=status)


async def start_admin(view: NodeView, config: AdminConfig,
                      environ: Mapping[str, str] | None = None) -> web.AppRunner:
    """Serve the admin app on config.listen; `await runner.cleanup()` to stop."""
    token = config.resolved_token(environ)
    host, port = config.host_port()
    if token is None:
        log.warning("admin API without a token: read-only, loopback peers only")
    runner = web.AppRunner(build_admin_app(view, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("admin listening on %s", config.listen)
    return runner
