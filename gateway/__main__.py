"""Run the gateway: ``python -m gateway --host 127.0.0.1 --port 8001 --redis-url redis://...``.

Every other setting comes from ``MODELYARD_GATEWAY_*`` environment variables (see
``gateway.app.GatewaySettings``). On SIGTERM/SIGINT uvicorn stops accepting, lets requests in
flight finish, and the app flushes its metrics and samples to Redis before the process exits.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from gateway.app import Gateway, GatewaySettings, create_app
from gateway.server import PROTOCOL_PATH, gc_settle, protocol_configure
from gateway.settings import INHERITED_FD_ENV

logger = logging.getLogger("modelyard.gateway")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _log_config(level: str) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gateway"] = {
        "format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    }
    config["handlers"]["gateway"] = {
        "formatter": "gateway",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    # uvicorn's own lines (start, shutdown) in the same format, not its "INFO:     ..." one.
    config["handlers"]["default"]["formatter"] = "gateway"
    # The root logger, so gateway.* and modelyard.* records reach stderr in every worker too.
    config["root"] = {"handlers": ["gateway"], "level": level.upper()}
    return config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("MODELYARD_GATEWAY_HOST", "127.0.0.1"),
        help="address to listen on (env MODELYARD_GATEWAY_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_int("MODELYARD_GATEWAY_PORT", 8001),
        help="port to listen on (env MODELYARD_GATEWAY_PORT, default 8001)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis holding the route table (env REDIS_URL, default redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_env_int("MODELYARD_GATEWAY_WORKERS", 1),
        help="processes sharing the port; each keeps its own route table and metrics "
        "(env MODELYARD_GATEWAY_WORKERS, default 1)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MODELYARD_GATEWAY_LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
    )
    return parser.parse_args(argv)


def _inherited_socket() -> socket.socket | None:
    """The listening socket named by INHERITED_FD_ENV (gateway.settings), if any."""
    raw = os.environ.get(INHERITED_FD_ENV, "")
    if not raw:
        return None
    try:
        sock = socket.socket(fileno=int(raw))
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{INHERITED_FD_ENV}={raw!r} is not an open socket: {exc}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        raise SystemExit(f"{INHERITED_FD_ENV}={raw!r} is not a listening stream socket")
    return sock


def _uvicorn_config(
    app: Gateway | str,
    args: argparse.Namespace,
    *,
    factory: bool = False,
    workers: int | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        factory=factory,
        workers=workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=_log_config(args.log_level),
        access_log=False,  # per-request facts go to the metrics, not to a log line
        server_header=False,
        # The gateway never reads the client address, so X-Forwarded-* rewriting is wasted work.
        proxy_headers=False,
        ws="none",
        # Named, not "auto": a missing uvloop/httptools then stops start-up instead of silently
        # costing ~0.2 ms per request (both are dependencies of the project).
        loop="uvloop",
        # httptools with header/body read deadlines and a connection cap (gateway.server).
        http=PROTOCOL_PATH,
        lifespan="on",
        backlog=2048,
        timeout_graceful_shutdown=30,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
    try:
        settings = GatewaySettings.from_env(redis_url=args.redis_url)
    except ValueError as exc:
        raise SystemExit(f"gateway settings: {exc}") from None

    if args.workers > 1:
        # Workers are fresh processes that build the app from the environment.
        os.environ.update(settings.to_env())
        config = _uvicorn_config(
            "gateway.server:create_app_for_worker", args, factory=True, workers=args.workers
        )
    else:
        protocol_configure(settings)
        config = _uvicorn_config(create_app(settings), args)

    inherited = _inherited_socket()
    sock = inherited or config.bind_socket()
    # Accepted connections inherit TCP_NODELAY from the listening socket on Linux; asyncio sets
    # it again per connection. Without it a small answer waits for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host, port = sock.getsockname()[:2]
    logger.info(
        "gateway listening on http://%s:%d%s (%d worker(s)), routes from %s",
        host,
        port,
        " (inherited socket)" if inherited else "",
        args.workers,
        _redact(settings.redis_url),
    )
    if args.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    gc_settle()  # last: what is loaded by now lives as long as the process
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


if __name__ == "__main__":
    main()
