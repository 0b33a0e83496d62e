"""Command line: `capibara-facade serve | check-config | reload | hash-key | demo-upstream | demo | healthcheck`.

Also `python -m capibara_facade`."""

from __future__ import annotations

import argparse
import glob
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from litestar import Litestar
from uvicorn.supervisors import Multiprocess

from . import __version__
from .config import Config, ConfigError, load_config
from .config.callers import hash_key
from .config.checks import warnings as config_warnings
from .control import signal_reload
from .http.app import create_app
from .http.server_limits import LimitedConfig, ServerLimits, raise_open_files_limit
from .observe.metrics import mark_dead
from .observe.startup import startup_report

__all__ = ["app_from_environment", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capibara-facade", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the facade")
    _add_server_options(serve)
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default: server.workers)")
    serve.add_argument("--pid-file", help="write the server's pid here, for `capibara-facade reload`")

    reload = commands.add_parser("reload", help="make a running facade read its config again (SIGHUP)")
    reload.add_argument("--pid-file", help="the pid file `serve --pid-file` wrote")
    reload.add_argument("--port", type=int, default=8000, help="else: the facade listening on this port")

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", help="TOML file")

    hash_key_command = commands.add_parser(
        "hash-key", help="print the SHA-256 of an API key, for [callers.<name>] key_sha256 (--new: make a key)"
    )
    hash_key_command.add_argument("key", nargs="?", help="the key (default: read from standard input)")
    hash_key_command.add_argument("--new", action="store_true", help="generate a new random key and print both")

    demo_upstream = commands.add_parser("demo-upstream", help="run the bundled OpenAI-compatible demo upstream")
    demo_upstream.add_argument("--host", default="127.0.0.1")
    demo_upstream.add_argument("--port", type=int, default=8082)
    from .demo_upstream import add_fault_options

    add_fault_options(demo_upstream)

    demo = commands.add_parser("demo", help="run the demo upstream and the facade in front of it")
    _add_server_options(demo)
    demo.add_argument("--upstream-port", type=int, default=8082, help="port of the demo upstream (default 8082)")

    healthcheck = commands.add_parser("healthcheck", help="exit 0 if the facade answers healthy, else 1 (probes)")
    from .healthcheck import add_healthcheck_options, run_healthcheck

    add_healthcheck_options(healthcheck)

    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            config = load_config(args.config, os.environ)
            print(f"{args.config}: OK ({len(config.models)} models, {len(config.upstreams)} upstreams)")
            for warning in config_warnings(config):
                print(f"WARNING: {warning}")
            return 0
        if args.command == "hash-key":
            return _hash_key(args)
        if args.command == "demo-upstream":
            from .demo_upstream import serve_demo_upstream

            serve_demo_upstream(args)
            return 0
        if args.command == "demo":
            return _demo(args)
        if args.command == "reload":
            return _reload(args)
        if args.command == "healthcheck":
            return run_healthcheck(args, os.environ)  # exit 1, not 2, on a bad config: Docker reserves 2
        return _serve(args)
    except ConfigError as exc:
        print(f"capibara-facade: configuration error: {exc}", file=sys.stderr)
        return 2


def _hash_key(args: argparse.Namespace) -> int:
    """The digest the config holds; with --new, a fresh key first (shown once: only its digest is kept)."""
    if args.new:
        key = "sk-capibara-" + secrets.token_urlsafe(32)
        print(f"key:        {key}")
        print(f"key_sha256: {hash_key(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("capibara-facade: no key given (pass it, or on standard input)", file=sys.stderr)
        return 1
    print(hash_key(key))
    return 0


def _reload(args: argparse.Namespace) -> int:
    try:
        pid = signal_reload(args.pid_file, args.port)
    except (OSError, LookupError, ValueError) as exc:
        print(f"capibara-facade: cannot signal the facade: {exc}", file=sys.stderr)
        return 1
    print(f"capibara-facade: sent SIGHUP to {pid}; its /health shows the reload's result", file=sys.stderr)
    return 0


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $CAPIBARA_CONFIG, else built-in defaults)")
    parser.add_argument("--host", help="listen address (default: server.host)")
    parser.add_argument("--port", type=int, help="listen port (default: server.port)")


def _load(args: argparse.Namespace, environ: MutableMapping[str, str]) -> Config:
    """The config from --config (or $CAPIBARA_CONFIG) and the environment, with --host/--port/--workers on top.

    The options are applied as their environment variables, so they are validated like every other value,
    and worker processes, which load the config again from the environment, see the same."""
    options = {"CAPIBARA_CONFIG": args.config, "CAPIBARA_HOST": args.host, "CAPIBARA_PORT": args.port}
    options["CAPIBARA_WORKERS"] = getattr(args, "workers", None)
    environ.update({variable: str(value) for variable, value in options.items() if value is not None})
    return load_config(environ.get("CAPIBARA_CONFIG"), environ)


def _configure_logging(config: Config) -> None:
    level = config.server.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(args: argparse.Namespace) -> int:
    config = _load(args, os.environ)
    server = config.server
    _configure_logging(config)
    for line in startup_report(config, os.environ.get("CAPIBARA_CONFIG") or "built-in defaults"):
        print(line, file=sys.stderr, flush=True)
    metrics_dir = _shared_metrics_dir(config) if server.workers > 1 and config.metrics.enabled else None
    raise_open_files_limit(server.max_connections)
    if pid_file := getattr(args, "pid_file", None):  # the supervisor's pid, with several workers
        Path(pid_file).write_text(f"{os.getpid()}\n")
    # One process: hand uvicorn the app. Several: each worker builds its own from the same file + environment.
    app: Litestar | str = (
        create_app(config, _reloader(os.environ)) if server.workers == 1 else "capibara_facade.cli:app_from_environment"
    )
    # uvicorn's httptools protocol with the [server] limits (server_limits.py); workers get them with the config.
    uvicorn_config = LimitedConfig(
        app,
        ServerLimits(server),
        factory=server.workers > 1,
        host=server.host,
        port=server.port,
        workers=server.workers,
        # uvloop, accepting every waiting connection per wake-up (acceptor.py); with TCP_NODELAY on each, so
        # small SSE frames are not delayed.
        loop="capibara_facade.http.acceptor:AcceptingLoop",
        lifespan="on",
        access_log=server.access_log,
        log_level=server.log_level,
        # The public tier reads X-Forwarded-For itself, only from server.trusted_proxies (callers/client_address.py);
        # uvicorn's proxy middleware would trust it from any peer it is told to, and costs CPU on every request.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=server.keepalive_timeout_seconds,
        # SIGTERM: stop accepting, let open requests and streams finish for this long, then cancel them.
        timeout_graceful_shutdown=server.shutdown_grace_seconds,
        backlog=4096,
    )
    # The socket is bound here, not by uvicorn, in both cases: the loop's acceptor serves sockets it is given.
    sockets = [uvicorn_config.bind_socket()]
    if server.workers > 1:
        try:
            _Workers(uvicorn_config, sockets=sockets, metrics_dir=metrics_dir).run()
        finally:
            if metrics_dir is not None and config.metrics.multiprocess_dir is None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0
    single = uvicorn.Server(uvicorn_config)
    single.run(sockets)
    return 0 if single.started else 3  # as uvicorn's start-up failures (bind_socket exits 3 on a taken port)


def _shared_metrics_dir(config: Config) -> str:
    """The directory where every worker keeps its metrics (prometheus-client's multiprocess mode), emptied of
    an earlier run's files; workers find it through the environment they inherit."""
    path = config.metrics.multiprocess_dir or tempfile.mkdtemp(prefix="capibara-metrics-")
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["CAPIBARA__METRICS__MULTIPROCESS_DIR"] = path
    return path


class _Workers(Multiprocess):
    """uvicorn's worker supervisor, which also stops listening as soon as it is told to stop.

    uvicorn's own keeps its copy of the listening socket open until every worker has exited, so during a
    graceful shutdown new connections are accepted into the backlog and never served. Closing it first makes
    them fail fast (and a proxy fail over) while the workers finish their open streams.
    """

    def __init__(self, *args: Any, metrics_dir: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_dir = metrics_dir

    def keep_subprocess_alive(self) -> None:
        """uvicorn replaces a worker that died; its live gauges (in flight, open streams) go with it."""
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        if self.metrics_dir is not None:
            for pid in before - {process.pid for process in self.processes}:
                if pid is not None:
                    mark_dead(pid, self.metrics_dir)

    def handle_hup(self) -> None:
        """SIGHUP reloads the config in every worker (uvicorn's own would restart them, cutting streams)."""
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def app_from_environment() -> Litestar:
    """uvicorn's app factory for worker processes: the config the parent validated, loaded again."""
    config = load_config(os.environ.get("CAPIBARA_CONFIG"), os.environ)
    _configure_logging(config)
    return create_app(config, _reloader(os.environ))


def _reloader(environ: Mapping[str, str]) -> Callable[[], Config]:
    """How a running facade reads its config again on SIGHUP: as it did at start, file and environment."""
    return lambda: load_config(environ.get("CAPIBARA_CONFIG"), environ)


def _demo(args: argparse.Namespace) -> int:
    """The whole path on one machine: the demo upstream as a child process, the facade in front of it."""
    upstream_url = f"http://127.0.0.1:{args.upstream_port}"
    with socket.socket() as probe:  # fronting whatever else listens there would be a confusing demo
        if probe.connect_ex(("127.0.0.1", args.upstream_port)) == 0:
            print(f"capibara-facade: port {args.upstream_port} is taken; use --upstream-port", file=sys.stderr)
            return 1
    argv = [sys.executable, "-m", "capibara_facade", "demo-upstream", "--port", str(args.upstream_port)]
    upstream = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(upstream_url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if upstream.poll() is not None or time.monotonic() > deadline:
                    print("capibara-facade: the demo upstream did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        os.environ["CAPIBARA_UPSTREAM_URL"] = upstream_url
        # The demo upstream serves every endpoint the facade relays (models-europe, the default, only chat).
        os.environ.setdefault(
            "CAPIBARA__UPSTREAMS__DEFAULT__ENDPOINTS", '["chat", "completions", "embeddings", "responses"]'
        )
        args.workers = 1
        config = _load(args, dict(os.environ))
        print(
            f"demo: facade on http://{config.server.host}:{config.server.port} → demo upstream on {upstream_url}\n"
            f"try:  curl -N http://{config.server.host}:{config.server.port}/api/chat "
            '-H \'Content-Type: application/json\' -d \'{"message": "Hola capibara", "stream": true}\'',
            flush=True,
        )
        return _serve(args)
    finally:
        upstream.terminate()
        try:
            upstream.wait(10)
        except subprocess.TimeoutExpired:
            upstream.kill()
