"""Config of the observability plane: the admin listener, the access log and
the metrics. Frozen pydantic models (extra keys are errors), meant to sit in
the node's `Config` as ``admin:``, ``access_log:`` and ``metrics:``.

```yaml
admin:
  listen: "127.0.0.1:9901"     # loopback by default: the admin API is not for the internet
  token: null                  # or a literal (>= 16 chars); else read from $NOVAEDGE_ADMIN_TOKEN
  token_env: NOVAEDGE_ADMIN_TOKEN
access_log:
  enabled: true
  path: "-"                    # "-" = stdout, else a file (reopened on SIGUSR1 for rotation)
  buffer_kib: 4096             # lines waiting for the writer beyond this are dropped and counted
  flush_ms: 100
metrics:
  enabled: true
  flush_interval_s: 1.0        # how often workers ship their counters to the control plane
```
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIN_TOKEN_LEN = 16


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdminConfig(_Frozen):
    enabled: bool = True
    listen: str = "127.0.0.1:9901"
    token: str | None = Field(None, min_length=MIN_TOKEN_LEN)
    token_env: str = "NOVAEDGE_ADMIN_TOKEN"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected host:port (got {v!r}); port 0 picks a free one")
        return v

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def resolved_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The configured token, else the one in ``token_env``; None if neither.

        A token from the environment gets the same length rule as one in the
        file: a short admin token is worse than none (it looks protected).
        """
        if self.token is not None:
            return self.token
        env = os.environ if environ is None else environ
        tok = env.get(self.token_env) or None
        if tok is not None and len(tok) < MIN_TOKEN_LEN:
            raise ValueError(f"${self.token_env}: admin token shorter than {MIN_TOKEN_LEN} characters")
        return tok


class AccessLogConfig(_Frozen):
    enabled: bool = True
    path: str = "-"
    buffer_kib: int = Field(4096, ge=64, le=1024 * 1024)
    flush_ms: int = Field(100, ge=1, le=10_000)


class MetricsConfig(_Frozen):
    enabled: bool = True
    flush_interval_s: float = Field(1.0, gt=0, le=60)
