"""Command line: `launch.py [serve] --config ...` serves; `launch.py check --config ...` validates only
(a dry run of the serving load path: tokenizer, shapes, every adapter read and validated);
`launch.py warm --config ... --out F` loads as serve does and writes the compiled kernels for other nodes;
`launch.py train ...` and `launch.py eval ...` run the adapter loop (server/training)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import logging
import os
import sys

from server.config import (
    SETTINGS_FIELDS,
    ConfigError,
    ServerSettings,
    adapters_on_demand,
    load_model_config,
    load_server_settings,
)
from server.help_format import HelpFormatter
from server.local_model import OPERATOR_ERRORS
from server.logs import configure_logging
from server.training.commands import program

log = logging.getLogger("launch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program(), description="Multi-LoRA embedding server",
                                     formatter_class=HelpFormatter)
    parser.add_argument("command", nargs="?", choices=["serve", "check", "warm", "train", "eval"], default="serve",
                        help="warm: load as serve does, write the compiled kernels to --out for other nodes (same "
                             "torch, Triton and GPU) and exit; train / eval take their own options: "
                             "launch.py train --help")
    parser.add_argument("--config", action="append", required=True, help="model YAML (repeat for several models)")
    parser.add_argument("--engine-config", help="engine.yaml with server-wide settings")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--backend", choices=["auto", "torch", "sglang"], help="override each model's 'adapter'")
    parser.add_argument("--out", default="compile-cache.bin",
                        help="warm: the file to write (serve it with --compile-cache-artifacts)")
    parser.add_argument("--log-level", default=os.environ.get("SIE_LOG_LEVEL", "info"),
                        help="debug, info, warning or error ($SIE_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("SIE_LOG_FORMAT", "text"),
                        help="json: one JSON object per log line (access lines carry request_id)")
    scale = parser.add_argument_group("scale-out (Ray Serve; pip install -e '.[ray]')")
    scale.add_argument("--replicas", type=int, help="serve through Ray Serve with N encoder replicas per model")
    scale.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per encoder replica")
    scale.add_argument("--replica-gpus", type=float, help="GPUs per encoder replica (default: 1 on CUDA, else 0)")
    scale.add_argument("--replica-metrics-port", type=int, default=0,
                       help="each replica's own /metrics: first free port from here (0: any free port)")
    settings = parser.add_argument_group("server-wide settings (defaults < --engine-config < SIE_<KEY> < these)")
    for name, setting in SETTINGS_FIELDS.items():
        default = ",".join(setting.default) if isinstance(setting.default, tuple) else setting.default
        settings.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=name.upper(),
                              help=f"{setting.metadata['help']} (default: {default}; SIE_{name.upper()})")
    return parser


def _load(args: argparse.Namespace):
    settings = load_server_settings(args.engine_config, overrides={k: getattr(args, k) for k in SETTINGS_FIELDS})
    models = [load_model_config(path) for path in args.config]
    if args.replicas is not None:  # each replica loads its adapters on demand (Ray's multiplexing)
        models = [adapters_on_demand(model) for model in models]
    names = [m.name for m in models]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"model name(s) served twice: {', '.join(sorted(duplicates))}")
    return settings, models


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def check(settings: ServerSettings, models, backend: str | None = None) -> None:
    from server.build import check_model

    for model in models:
        log.info("checking %s (%s)", model.name, model.source_file)
        for line in asyncio.run(check_model(model, settings, backend=backend)):
            print(line, flush=True)


def adapter_loop(command: str, argv: list[str]) -> int:
    from server.training import commands

    configure_logging(os.environ.get("SIE_LOG_LEVEL", "info"), "text")
    try:
        return commands.run_train(argv) if command == "train" else commands.run_eval(argv)
    except (*OPERATOR_ERRORS, FileExistsError) as exc:
        return _error(str(exc))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("train", "eval"):
        return adapter_loop(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        settings, models = _load(args)
        if args.command == "check" or args.replicas is not None:  # replicas load on demand: check up front
            check(settings, models, args.backend)
    except OPERATOR_ERRORS as exc:
        return _error(str(exc))
    if args.command == "check":
        print("ok", flush=True)
        return 0
    if args.command == "warm":
        return warm(settings, models, args.backend, args.out)
    if args.replicas is not None:
        return serve_scaled(args, settings, models)
    return serve(args, settings, models)


def warm(settings: ServerSettings, models, backend: str | None, out: str) -> int:
    """Each model loaded and warmed up as serve would (so the compiled graphs are the ones serve asks for),
    then everything compiled written to `out`."""
    from server.backends import compile_cache, pick_device
    from server.build import load_model

    try:
        for config in models:
            model = asyncio.run(load_model(config, settings, backend=backend))
            stats = model.status().stats
            log.info("%s: warmed up in %.1f s (%d graphs compiled)", config.name,
                     sum(seconds for _, seconds in stats.startup_seconds), stats.engine.compiles)
            asyncio.run(model.stop())
        device = pick_device(settings.device)
        size = compile_cache.save(out, device)
    except OPERATOR_ERRORS as exc:
        return _error(str(exc))
    print(f"wrote {out} ({size / 2**20:.1f} MiB) for {compile_cache.environment(device)}; serve it with "
          f"--compile-cache-artifacts {out} (or SIE_COMPILE_CACHE_ARTIFACTS) on nodes of the same torch, "
          f"Triton and GPU", flush=True)
    return 0


def serve_scaled(args: argparse.Namespace, settings: ServerSettings, models) -> int:
    if importlib.util.find_spec("ray") is None:
        return _error("--replicas needs Ray Serve: pip install -e '.[ray]'")
    from server.backends import pick_device
    from server.scaleout import launcher
    from server.scaleout.spec import ScaleoutSpec

    gpus = args.replica_gpus
    if gpus is None:
        gpus = 1.0 if pick_device(settings.device).startswith("cuda") else 0.0
    try:
        spec = ScaleoutSpec(models=tuple(models), settings=settings, replicas=args.replicas,
                            replica_cpus=args.replica_cpus, replica_gpus=gpus, backend=args.backend,
                            metrics_host=args.host, metrics_port=args.replica_metrics_port)
    except ConfigError as exc:
        return _error(str(exc))
    return launcher.run(spec, args.host, args.port)


def serve(args: argparse.Namespace, settings: ServerSettings, models) -> int:
    """Models load in the background while /readyz answers; one that fails on a config error (a broken
    adapter, a missing folder) stops the server with exit status 2, as `check` would have."""
    import uvicorn

    from server.api.app import create_app
    from server.api.lifecycle import DrainingServer
    from server.build import build_model

    try:
        served = {model.name: build_model(model, settings, backend=args.backend) for model in models}
    except RuntimeError as exc:  # a backend that cannot be imported here
        return _error(str(exc))
    app = create_app(served, settings)
    # Our own access log carries the request id; uvicorn keeps its own handlers off ours.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                            access_log=False, log_config=None, timeout_graceful_shutdown=5)
    server = DrainingServer(config, app.state.context.lifecycle, settings.shutdown_grace_s)
    server.run()
    code = _error(server.fatal) if server.fatal else 0
    if any(getattr(model, "abandoned", False) for model in served.values()):
        # A load cut short leaves its worker (a conversion, a checkpoint read) running: end now rather than
        # let interpreter shutdown wait on, or tear down, a thread inside torch; a start cleans its temp folders.
        log.warning("exiting with a model load abandoned")
    else:
        # Everything is stopped and answered; the interpreter's own teardown (freeing a model object by object)
        # would take seconds more with nothing to show for it. Exit handlers still run.
        log.info("exiting (status %d)", code)
        atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
