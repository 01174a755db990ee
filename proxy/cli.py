"""novaedge: check | run | proxy | demo."""
from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from .config import ConfigError, load_config, parse_config


def quick_config(listen: str, to: list[str], workers: str, region: str,
                 admin: str | None = None) -> dict[str, object]:
    backends = []
    for url in to:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"novaedge proxy: --to must be http://host:port (got {url!r})")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        backends.append(f"{host}:{parts.port or 80}")
    return {
        "node": {"region": region},
        "workers": workers if workers == "auto" else int(workers),
        "listeners": [{"bind": listen}],
        "pools": {"default": {"regions": {region: backends}}},
        "routes": [{"name": "default", "pool": "default"}],
        "admin": {"listen": admin} if admin else {"enabled": False},
        "access_log": {"enabled": False},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="novaedge", description="NovaEdge edge proxy")
    ap.add_argument("--log-level", default="INFO")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate a config file; print every error with its key path")
    c.add_argument("file")
    r = sub.add_parser("run", help="run a node from a config file")
    r.add_argument("file")
    p = sub.add_parser("proxy", help="quick start: one route to one or more backends, no file")
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--to", action="append", required=True, help="http://host:port (repeatable)")
    p.add_argument("--workers", default="1")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--admin", default=None, help="admin API address (default: none)")
    p.add_argument("--access-log", default=None, help="'-' for stdout or a file (default: none)")
    d = sub.add_parser("demo", help="a node on the built-in config, with demo backends in 3 regions")
    d.add_argument("--listen", default="127.0.0.1:8080")
    d.add_argument("--admin", default="127.0.0.1:9901")
    args = ap.parse_args(argv)

    from .runner import run, setup_logging
    setup_logging(args.log_level)
    if args.cmd in ("check", "run"):
        try:
            cfg = load_config(args.file)
        except ConfigError as e:
            print(f"{args.file}: {len(e.problems)} error(s):", file=sys.stderr)
            for line in e.problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        if args.cmd == "run":
            return run(cfg, args.file)
        print(f"{args.file}: OK ({len(cfg.routes)} routes, {len(cfg.pools)} pools, "
              f"{len(cfg.listeners)} listeners)")
        return 0
    if args.cmd == "proxy":
        try:
            data = quick_config(args.listen, args.to, args.workers, args.region, args.admin)
            if args.access_log:
                data["access_log"] = {"path": args.access_log}
            cfg = parse_config(data)
        except ConfigError as e:
            print("\n".join(e.problems), file=sys.stderr)
            return 1
        return run(cfg, None)
    if args.cmd == "demo":
        from .demo import run_demo
        return run_demo(args.listen, args.admin)
    return 2


if __name__ == "__main__":
    sys.exit(main())
