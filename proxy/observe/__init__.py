"""Observability and admin plane: metrics, access log, admin API, status page.

Data plane (per worker):   WorkerMetrics.begin()/observe(ctx), AccessLog.log(ctx),
                           run_flusher(metrics, send) -> deltas once a second
Control plane (per node):  MetricsAggregator.apply(deltas) and its set_*() gauges,
                           build_admin_app(view, token) / start_admin(view, AdminConfig)
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
