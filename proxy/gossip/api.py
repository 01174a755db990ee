"""A tiny local JSON API over a gossip node (the standalone CLI serves it; the
admin API can mount the same routes).

    GET  /gossip/state             matrix, region health, lag, members, counters
    POST /gossip/local-health      {"healthy_backends": 0, "total_backends": 3}
    POST /gossip/replication-lag   {"seconds": 1.5}
    POST /gossip/load              {"load": 0.4}

Unauthenticated by design: bind it to a loopback address or a unix socket
(the e2e test reaches nodes inside network namespaces through unix sockets,
which namespaces do not separate).
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from .node import GossipNode

NODE_KEY: web.AppKey[GossipNode] = web.AppKey("gossip_node", GossipNode)


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{key} must be a non-negative number"}),
                                 content_type="application/json")
    return float(value)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "expected a JSON object"}', content_type="application/json")
    return body


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].snapshot())


async def post_local_health(request: web.Request) -> web.Response:
    body = await _body(request)
    healthy, total = int(_number(body, "healthy_backends")), int(_number(body, "total_backends"))
    if healthy > total:
        raise web.HTTPBadRequest(text='{"error": "healthy_backends > total_backends"}',
                                 content_type="application/json")
    request.app[NODE_KEY].set_local_health(healthy, total)
    return web.json_response({"ok": True})


async def post_replication_lag(request: web.Request) -> web.Response:
    request.app[NODE_KEY].set_replication_lag(_number(await _body(request), "seconds"))
    return web.json_response({"ok": True})


async def post_load(request: web.Request) -> web.Response:
    request.app[NODE_KEY].set_load(_number(await _body(request), "load"))
    return web.json_response({"ok": True})


def add_routes(app: web.Application, node: GossipNode) -> None:
    app[NODE_KEY] = node
    app.router.add_get("/gossip/state", get_state)
    app.router.add_post("/gossip/local-health", post_local_health)
    app.router.add_post("/gossip/replication-lag", post_replication_lag)
    app.router.add_post("/gossip/load", post_load)


def make_app(node: GossipNode) -> web.Application:
    app = web.Application()
    add_routes(app, node)
    return app
