"""Observability and admin plane: metrics, access log, admin API, status page.

Wiring (what the node calls):

    # each worker, on its loop
    alog = open_access_log(cfg.access_log.path, cfg.access_log.buffer_kib, cfg.access_log.flush_ms)
    alog.start()                                   # writer thread + 100 ms flush timer
    loop.add_signal_handler(signal.SIGUSR1, alog.reopen)
    metrics = WorkerMetrics(worker_id, access_log=alog)
    flusher = asyncio.create_task(run_flusher(metrics, channel.send, cfg.metrics.flush_interval_s))
    ...  metrics.begin()            when a request head is complete (or pass the level
                                    to drain(inflight=...), as the node does: it counts them)
    ...  metrics.observe(ctx); alog.log(ctx)      when it ends, also on error
         (or both in one pass: finish.observe_and_log(metrics, alog, ctx), in C when built,
          as proxy.features's finisher() does)
    ...  flusher.cancel(); await alog.close()     at shutdown

    # control plane, once per node
    agg = MetricsAggregator()                      # NodeView.metrics returns it
    on a worker's message:  agg.apply(deltas);  on its exit:  agg.forget_worker(worker_id)
    agg.set_gossip_members(...), set_latency_matrix(...), set_geoip(...), config_reload(ok), ...
    runner = await start_admin(node_view, cfg.admin)          # ... await runner.cleanup()

    # single process: the same, with run_flusher(metrics, agg.apply)
"""
from .accesslog import AccessLog, open_access_log
from .admin import build_admin_app, start_admin
from .aggregate import MetricsAggregator
from .config import AccessLogConfig, AdminConfig, MetricsConfig
from .metrics import LATENCY_BOUNDS, WorkerMetrics, run_flusher
from .redact import redact
from .view import NodeView

__all__ = [
    "AccessLog", "AccessLogConfig", "AdminConfig", "LATENCY_BOUNDS", "MetricsAggregator",
    "MetricsConfig", "NodeView", "WorkerMetrics", "build_admin_app", "open_access_log", "redact",
    "run_flusher", "start_admin",
]
