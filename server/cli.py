"""Command line: `launch.py [serve] --config ...` serves; `launch.py check --config ...` validates only."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from server.config import ENGINE_FIELDS, ConfigError, adapters_on_demand, load_engine_config, load_model_config
from server.logs import configure_logging
from server.lora.peft_format import AdapterError
from server.sources import SourceError

log = logging.getLogger("launch")
USER_ERRORS = (ConfigError, AdapterError, SourceError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Multi-LoRA embedding server")
    parser.add_argument("command", nargs="?", choices=["serve", "check"], default="serve")
    parser.add_argument("--config", action="append", required=True, help="model YAML (repeat for several models)")
    parser.add_argument("--engine-config", help="engine.yaml with server-wide settings")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--backend", choices=["auto", "torch", "sglang"], help="override each model's 'adapter'")
    parser.add_argument("--log-level", default=os.environ.get("SIE_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("SIE_LOG_FORMAT", "text"),
                        help="json: one JSON object per log line (access lines carry request_id)")
    scale = parser.add_argument_group("scale-out (Ray Serve; pip install -e '.[ray]')")
    scale.add_argument("--replicas", type=int, help="serve through Ray Serve with N encoder replicas per model")
    scale.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per encoder replica")
    scale.add_argument("--replica-gpus", type=float, help="GPUs per encoder replica (default: 1 on CUDA, else 0)")
    scale.add_argument("--replica-metrics-port", type=int, default=0,
                       help="each replica's own /metrics: first free port from here (0: any free port)")
    for name in ENGINE_FIELDS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    return parser


def _load(args: argparse.Namespace):
    engine = load_engine_config(args.engine_config, overrides={k: getattr(args, k) for k in ENGINE_FIELDS})
    models = [load_model_config(path) for path in args.config]
    if args.replicas is not None:  # Ray's multiplexing loads each replica's adapters on demand
        models = [adapters_on_demand(model) for model in models]
    names = [m.name for m in models]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"model name(s) served twice: {', '.join(sorted(duplicates))}")
    return engine, models


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    from server.preflight import check_model

    try:
        engine, models = _load(args)
        for model in models:
            log.info("checking %s (%s)", model.name, model.source_file)
            for line in check_model(model, engine):
                print(line, flush=True)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.command == "check":
        print("ok", flush=True)
        return 0
    if args.replicas is not None:
        return serve_scaled(args, engine, models)
    return serve(args, engine, models)


def serve_scaled(args: argparse.Namespace, engine, models) -> int:
    if importlib.util.find_spec("ray") is None:
        print("error: --replicas needs Ray Serve: pip install -e '.[ray]'", file=sys.stderr, flush=True)
        return 2
    from server.backends import pick_device
    from server.scaleout import launcher
    from server.scaleout.spec import ScaleoutSpec

    gpus = args.replica_gpus
    if gpus is None:
        gpus = 1.0 if pick_device(engine.device).startswith("cuda") else 0.0
    try:
        spec = ScaleoutSpec(models=tuple(models), settings=engine, replicas=args.replicas,
                            replica_cpus=args.replica_cpus, replica_gpus=gpus, backend=args.backend,
                            metrics_host=args.host, metrics_port=args.replica_metrics_port)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return launcher.run(spec, args.host, args.port)


def serve(args: argparse.Namespace, engine, models) -> int:
    import uvicorn

    from server.api.app import create_app
    from server.api.lifecycle import DrainingServer
    from server.backends import create_backend, pick_device, resolve_backend_kind
    from server.engine import ModelEngine

    device = pick_device(engine.device)
    engines = {}
    for model in models:
        kind = resolve_backend_kind(args.backend or model.adapter, device)
        log.info("model %s: backend %s on %s", model.name, kind, device)
        try:
            backend = create_backend(kind, model, engine, device)
        except RuntimeError as exc:
            print(f"error: model {model.name}: {exc}", file=sys.stderr, flush=True)
            return 2
        engines[model.name] = ModelEngine(model, engine, backend)
    app = create_app(engines, engine)
    # Our own access log carries the request id; uvicorn keeps its own handlers off ours.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                            access_log=False, log_config=None, timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.lifecycle, engine.shutdown_grace_s).run()
    return 0
