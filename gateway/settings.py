"""The gateway's settings: one frozen dataclass, read from ``MODELYARD_GATEWAY_*``.

Apart from :mod:`gateway.app` so the request path, the balancer and the process entry points
read one definition (``gateway.app`` re-exports it for existing imports).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

_BOOL_WORDS = {"1": True, "true": True, "on": True, "yes": True}
_BOOL_WORDS.update({"0": False, "false": False, "off": False, "no": False})

# A listening socket handed down by the supervisor (`make run`'s devstack holds the gateway's
# across restarts): connections made while a crashed gateway restarts wait in its backlog and
# are answered by the next process instead of being refused. systemd's socket activation
# does the same; its LISTEN_FDS protocol needs the child's pid before exec, which a Procfile
# line run through /bin/sh does not give the supervisor, hence a variable naming the fd.
INHERITED_FD_ENV = "MODELYARD_GATEWAY_FD"


def _env_number(environ: Mapping[str, str], name: str, default: float, cast: type) -> Any:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    if cast is bool:
        try:
            return _BOOL_WORDS[raw.strip().lower()]
        except KeyError:
            raise ValueError(f"{name} must be 1/0 (or true/false, on/off), got {raw!r}") from None
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {cast.__name__}, got {raw!r}") from None


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the gateway can be told; ``from_env`` reads ``MODELYARD_GATEWAY_<FIELD>``."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_timeout_s: float = 60.0
    upstream_connect_timeout_s: float = 2.0
    upstream_pool_size: int = 512
    # Below uvicorn's default server keep-alive (5 s), so the gateway drops an idle pooled
    # connection before the model server does and never writes into one being closed.
    upstream_keepalive_s: float = 4.0
    routes_reread_interval_s: float = 5.0
    startup_route_wait_s: float = 3.0
    metrics_flush_interval_s: float = 2.0
    metrics_max_pending_cells: int = 100_000
    sample_rate: float = 0.1
    # Per deployment and gateway process; 10,000 stream entries then span an hour's drift
    # window (see gateway.sampling). 0 lifts the cap.
    sample_max_per_s: float = 2.5
    sample_max_rows: int = 100
    sample_buffer_size: int = 1000
    sample_stream_maxlen: int = 10_000
    sample_flush_interval_s: float = 0.5
    # The prediction log (gateway.prediction_log): every answer gets an inference id and is
    # logged, up to log_full_per_s per deployment and process, then a log_sample_rate share
    # (marked sampled). prediction_log=0 turns ids and the log off.
    prediction_log: bool = True
    log_full_per_s: float = 200.0
    log_sample_rate: float = 0.1
    log_buffer_size: int = 20_000
    log_flush_interval_s: float = 0.5
    retry_after_s: int = 5
    redis_timeout_s: float = 2.0
    # Replicas (see gateway.balancer): an ejected replica is probed (GET /readyz) after
    # eject_probe_initial_s, then at doubling intervals up to eject_probe_max_s; the cap keeps
    # a repaired replica back in traffic within a quarter second of answering again.
    eject_probe_initial_s: float = 0.1
    eject_probe_max_s: float = 0.25
    # Mean/peak requests in flight per replica, written to Redis for the autoscaler this
    # often (gateway.replica_reports); 0 turns the reports off.
    inflight_report_interval_s: float = 1.0
    # Repair requests (gateway.repairs) go to the Celery broker, REDIS_URL's server like the
    # platform's; a broker that does not answer within this gives up that request.
    repair_send_timeout_s: float = 1.0
    # Shadow mirroring (gateway.shadow): jobs wait in a queue of shadow_queue_size (full ->
    # dropped and counted), shadow_workers send them (so at most that many upstream connections
    # go to shadows), each with shadow_timeout_s; comparisons reach Redis this often.
    shadow_queue_size: int = 1000
    shadow_workers: int = 16
    shadow_timeout_s: float = 5.0
    shadow_flush_interval_s: float = 1.0
    # Where that work runs (gateway.shadow_process): in a process of its own per gateway
    # process, at nice shadow_nice and (Linux) in SCHED_IDLE, so it takes only CPU that live
    # requests leave; shadow_process=0 runs it on the gateway's event loop, competing with them.
    shadow_process: bool = True
    shadow_nice: int = 19
    shadow_sched_idle: bool = True
    # Per-request metric recording (Redis buffers, roll-ups, /metrics series); off only for
    # benchmarks or when metrics are taken elsewhere.
    metrics: bool = True
    # Slow clients (see gateway.server): the headers, then the body, must arrive within these;
    # past max_connections a new connection is answered 503 and closed. 0 turns one off.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 4096
    # When set, GET /metrics wants "Authorization: Bearer <token>" (it names every deployment
    # and version); empty leaves it open, for a gateway scraped on a private network.
    metrics_token: str = ""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, str) and value < 0:
                raise ValueError(f"gateway setting {item.name} must be >= 0, got {value!r}")
        if not 0.0 <= self.log_sample_rate <= 1.0:
            raise ValueError(
                f"gateway setting log_sample_rate must be in [0, 1], got {self.log_sample_rate}"
            )
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(
                f"gateway setting sample_rate must be in [0, 1], got {self.sample_rate}"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> GatewaySettings:
        """Read ``MODELYARD_GATEWAY_*`` (and ``REDIS_URL``); a bad value stops start-up."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            if item.name == "redis_url":
                values["redis_url"] = environ.get("REDIS_URL") or item.default
                continue
            name = f"MODELYARD_GATEWAY_{item.name.upper()}"
            default = item.default
            if isinstance(default, str):
                values[item.name] = environ.get(name, default)
                continue
            if not isinstance(default, int | float):  # bool is an int
                raise TypeError(f"GatewaySettings.{item.name} needs a str or number default")
            kind: type = (
                bool if isinstance(default, bool) else int if isinstance(default, int) else float
            )
            values[item.name] = _env_number(environ, name, default, kind)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``from_env`` return these settings (for worker processes)."""
        env = {"REDIS_URL": self.redis_url}
        for item in fields(self):
            if item.name != "redis_url":
                value = getattr(self, item.name)
                if isinstance(value, bool):
                    value = int(value)
                env[f"MODELYARD_GATEWAY_{item.name.upper()}"] = str(value)
        return env
