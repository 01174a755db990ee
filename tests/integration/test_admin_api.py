"""The admin listener over real sockets on 127.0.0.1: auth, redaction, actions, endpoints."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from proxy.observe.admin import build_admin_app, start_admin
from proxy.observe.config import AdminConfig
from proxy.observe.auth import token_fingerprint
from proxy.observe.fake import SECRETS, FakeNodeView

TOKEN = "itest-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin() -> AsyncIterator[Callable[[str | None], TestClient]]:
    clients: list[TestClient] = []

    async def make(token: str | None) -> tuple[TestClient, FakeNodeView]:
        view = FakeNodeView()
        client = TestClient(TestServer(build_admin_app(view, token), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client, view

    yield make
    for c in clients:
        await c.close()


ACTIONS = ["/api/reload", "/api/drain", "/api/backends/eu-west-1/10.1.0.5:8080/eject",
           "/api/backends/eu-west-1/10.1.0.6:8080/restore"]


@pytest.mark.parametrize("path", ACTIONS)
async def test_actions_without_or_with_a_wrong_token_are_401(admin, path: str) -> None:
    client, view = await admin(TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
        resp = await client.post(path, headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert view.calls == [] and not view.draining


@pytest.mark.parametrize("path", ACTIONS)
async def test_no_token_configured_refuses_actions_even_from_loopback(admin, path: str) -> None:
    client, view = await admin(None)
    resp = await client.post(path, headers=BEARER)
    assert resp.status == 403
    assert "no admin token" in (await resp.json())["error"]
    assert view.calls == []
    assert (await client.get("/api/status")).status == 200   # reads from loopback still work


async def test_actions_with_the_token_run_and_are_logged_with_who(admin, caplog) -> None:
    client, view = await admin(TOKEN)
    caplog.set_level(logging.INFO, logger="novaedge.admin")
    resp = await client.post("/api/drain", headers=BEARER)
    assert resp.status == 200 and (await resp.json())["draining"] is True
    resp = await client.post("/api/backends/eu-west-1/10.1.0.5:8080/eject", headers=BEARER)
    assert resp.status == 200
    resp = await client.post("/api/backends/eu-west-1%2F10.1.0.5:8080/restore", headers=BEARER)  # encoded '/'
    assert resp.status == 200
    resp = await client.post("/api/backends/nope/eject", headers=BEARER)
    assert resp.status == 404
    assert view.calls == [("drain", None), ("eject", "eu-west-1/10.1.0.5:8080"),
                          ("restore", "eu-west-1/10.1.0.5:8080")]
    who = f"token:{token_fingerprint(TOKEN)}"
    logged = [r.getMessage() for r in caplog.records if r.name == "novaedge.admin"]
    assert any(f"drain by {who} from 127.0.0.1" in m for m in logged)
    assert any("eject eu-west-1/10.1.0.5:8080" in m and who in m for m in logged)
    assert TOKEN not in "\n".join(logged)
    audit = await (await client.get("/api/audit")).json()
    assert [(a["action"], a["status"], a["who"]) for a in audit][:2] == [("drain", 200, who),
                                                                        ("eject eu-west-1/10.1.0.5:8080", 200, who)]


async def test_refused_actions_are_logged_too(admin, caplog) -> None:
    client, _ = await admin(TOKEN)
    caplog.set_level(logging.INFO, logger="novaedge.admin")
    await client.post("/api/drain", headers={"Authorization": "Bearer guess-guess-guess-guess"})
    assert any("/api/drain by anonymous from 127.0.0.1: 401" in r.getMessage() for r in caplog.records)


async def test_failed_reload_is_422_and_keeps_running(admin) -> None:
    client, view = await admin(TOKEN)
    view.reload_ok = False
    resp = await client.post("/api/reload", headers=BEARER)
    assert resp.status == 422 and "unknown pool" in (await resp.json())["error"]
    view.reload_ok = True
    resp = await client.post("/api/reload", headers=BEARER)
    assert resp.status == 200 and (await resp.json())["generation"] == 8


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_config_endpoint_never_shows_secrets(admin, token: str | None) -> None:
    client, view = await admin(token)
    for path in ("/api/config", "/api/overview", "/api/status"):
        resp = await client.get(path, headers=BEARER if token else {})
        assert resp.status == 200
        body = await resp.text()
        for secret in (*SECRETS, TOKEN):
            assert secret not in body, (path, secret)
    cfg = await (await client.get("/api/config")).json()
    assert cfg["gossip"]["seeds"] == ["10.0.0.1:7946"]       # the rest is still there
    assert cfg["admin"]["token"] == "<redacted>"


async def test_reads_refuse_a_wrong_token_and_a_foreign_host(admin) -> None:
    client, _ = await admin(TOKEN)
    assert (await client.get("/api/status", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/api/status", headers={"Host": "rebind.example:9901"})).status == 403
    assert (await client.get("/api/status", headers={"Host": "rebind.example", **BEARER})).status == 200


async def test_read_endpoints(admin) -> None:
    client, view = await admin(None)
    regions = await (await client.get("/api/regions")).json()
    assert {r["id"]: r["health"] for r in regions} == {
        "us-east-1": "healthy", "eu-west-1": "degraded", "ap-northeast-1": "down"}
    matrix = await (await client.get("/api/matrix")).json()
    assert matrix["regions"] == ["us-east-1", "eu-west-1", "ap-northeast-1"]
    assert matrix["rtt_ms"]["eu-west-1"]["ap-northeast-1"] == 212.3
    assert len(await (await client.get("/api/members")).json()) == 5
    assert (await (await client.get("/api/mitigations")).json())[0]["action"] == "block"
    overview = await (await client.get("/api/overview")).json()
    assert set(overview) >= {"status", "regions", "matrix", "members", "mitigations", "traffic"}
    assert overview["traffic"]["rps"] > 0
    assert (await client.get("/api/nothing")).status == 404


async def test_metrics_and_page(admin) -> None:
    client, _ = await admin(None)
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await om.text()).endswith("# EOF\n")
    assert 'novaedge_gossip_members{state="dead"} 1.0' in text
    assert "novaedge_request_duration_seconds_bucket" in text
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "/api/overview" in await page.text()


async def test_start_admin_takes_the_token_from_the_environment() -> None:
    view = FakeNodeView()
    runner = await start_admin(view, AdminConfig(listen="127.0.0.1:0"), environ={"NOVAEDGE_ADMIN_TOKEN": TOKEN})
    try:
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        async with ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/api/drain") as r:
                assert r.status == 401
            async with s.post(f"http://127.0.0.1:{port}/api/drain", headers=BEARER) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200 and "novaedge_requests_total" in await r.text()
    finally:
        await runner.cleanup()
    assert view.draining
