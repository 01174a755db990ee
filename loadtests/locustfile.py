"""Locust scenarios for a NovaEdge node (the load-testing teams' entry point).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \
           --headless -u 50 -r 10 -t 60s          # bounded: users, rate, time

Traffic goes only where --host points (keep it on 127.0.0.0/8 or your own lab).
Three kinds of client:
- Browser: page loads with a dozen browser headers, cookies for affinity;
- ApiClient: JSON reads and writes with an Idempotency-Key on writes;
- Abuser (weight 0 unless NOVAEDGE_LOCUST_ABUSE=1): hammers one path, to see
  the rate limits and the 3-sigma detector answer 429.
Every response is checked: 2xx/3xx pass; 429 passes for the Abuser; the
node's own errors (X-NovaEdge-Error) are reported with their reason.
"""
from __future__ import annotations

import os
import random
import uuid

from locust import HttpUser, between, task

BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "Referer": "http://127.0.0.1/",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "same-origin",
    "Upgrade-Insecure-Requests": "1",
    "Cache-Control": "max-age=0",
}


def _check(resp: object, allow: tuple[int, ...] = ()) -> None:
    status = resp.status_code  # type: ignore[attr-defined]
    if 200 <= status < 400 or status in allow:
        resp.success()  # type: ignore[attr-defined]
    else:
        reason = resp.headers.get("X-NovaEdge-Error", "")  # type: ignore[attr-defined]
        resp.failure(f"{status} {reason}".strip())  # type: ignore[attr-defined]


class Browser(HttpUser):
    weight = 6
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.client.cookies.set("sid", uuid.uuid4().hex)

    @task(5)
    def page(self) -> None:
        path = random.choice(["/", "/products", "/products/42", "/about"])
        with self.client.get(path, headers=BROWSER_HEADERS, catch_response=True, name="page") as r:
            _check(r)

    @task(1)
    def asset(self) -> None:
        with self.client.get(f"/static/app.{random.randint(1, 20)}.js", headers=BROWSER_HEADERS,
                             catch_response=True, name="asset") as r:
            _check(r)


class ApiClient(HttpUser):
    weight = 3
    wait_time = between(0.1, 0.5)

    @task(4)
    def read(self) -> None:
        with self.client.get(f"/api/items/{random.randint(1, 1000)}", catch_response=True,
                             name="api read") as r:
            _check(r)

    @task(1)
    def write(self) -> None:
        with self.client.post("/api/items", json={"name": "x", "n": random.randint(1, 9)},
                              headers={"Idempotency-Key": uuid.uuid4().hex},
                              catch_response=True, name="api write") as r:
            _check(r)


class Abuser(HttpUser):
    weight = 1 if os.environ.get("NOVAEDGE_LOCUST_ABUSE") == "1" else 0
    wait_time = between(0.0, 0.01)

    @task
    def hammer(self) -> None:
        with self.client.get("/api/items/1", catch_response=True, name="abuse") as r:
            _check(r, allow=(429,))
