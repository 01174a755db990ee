"""The GeoIP database replaced under load, through the real node: a few
thousand requests from clients bound to 127.x addresses that the database
maps to countries. Answers (the X-Client-Country the backend received) switch
exactly at the swap, with zero errors; a corrupt replacement is refused and
the answers stay."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from geodb import build_city_db
from tests.support.backend import TestBackend
from tests.support.node import node_config, run_node

OLD = {2: "DE", 3: "US", 4: "JP", 5: "BR"}
NEW = {2: "FR", 3: "CA", 4: "AU", 5: "ZA"}


def entries(mapping: dict[int, str]) -> list[dict[str, object]]:
    return [{"network": f"127.{o}.0.0/16", "country": c} for o, c in mapping.items()]


async def ask(port: int, octet: int, i: int) -> str:
    src = f"127.{octet}.{(i // 250) % 250 + 1}.{i % 250 + 1}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: geo\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    headers = dict(json.loads(body)["headers"])
    return headers["X-Client-Country"]


async def test_database_swap_under_load_through_the_node(tmp_path: Path) -> None:
    db = tmp_path / "city.mmdb"
    build_city_db(entries(OLD), db)
    backend = await TestBackend.start("b")
    results: list[tuple[float, float, int, str]] = []   # (sent, answered, octet, country)
    errors: list[str] = []
    try:
        cfg = node_config([backend.address], geoip={"city": str(db), "reload_interval_s": 0.05})
        async with run_node(cfg) as node:
            port = node.listeners[0].port
            swap_at = 0.0

            async def worker(w: int, n: int) -> None:
                for k in range(n):
                    octet = 2 + (w + k) % 4
                    sent = time.monotonic()
                    try:
                        country = await ask(port, octet, w * 1000 + k)
                    except Exception as e:  # noqa: BLE001 - every failure is counted
                        errors.append(repr(e))
                        continue
                    results.append((sent, time.monotonic(), octet, country))

            load = [asyncio.create_task(worker(w, 150)) for w in range(16)]   # 2400 requests
            while len(results) < 600:
                await asyncio.sleep(0.01)
            build_city_db(entries(NEW), tmp_path / "new.mmdb")
            os.replace(tmp_path / "new.mmdb", db)             # as geoipupdate does
            swap_at = time.monotonic()
            await asyncio.gather(*load)
            assert errors == []
            assert len(results) == 2400
            for _s, _a, octet, country in results:
                assert country in (OLD[octet], NEW[octet])
            first_new = min(a for _s, a, o, c in results if c == NEW[o])
            assert first_new > swap_at
            # Exactly at the swap: once a new answer was out, no request sent after
            # it got an old one.
            stale = [(s, o, c) for s, _a, o, c in results if s > first_new and c == OLD[o]]
            assert stale == []
            print(f"\nswap seen {first_new - swap_at:.3f}s after the rename; "
                  f"{sum(c == NEW[o] for *_x, o, c in results)} new answers")

            # A corrupt replacement is refused: answers stay, no errors.
            (tmp_path / "bad.mmdb").write_bytes(db.read_bytes()[:1000])
            os.replace(tmp_path / "bad.mmdb", db)
            await asyncio.sleep(0.3)
            after = await asyncio.gather(*(ask(port, 2 + i % 4, 5000 + i) for i in range(200)))
            assert all(c == NEW[2 + i % 4] for i, c in enumerate(after))
            geo = node.hooks.geo.db   # type: ignore[attr-defined]
            assert geo.reloads_failed >= 1 and geo.reloads_ok >= 1
    finally:
        await backend.stop()
