"""`launch.py --replicas N`: a local Ray cluster (or RAY_ADDRESS), the Serve application on --host/--port,
and a clean stop on SIGTERM/SIGINT (Serve and Ray shut down, no process left behind)."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from pathlib import Path

from server.cache import cache_dir
from server.scaleout.spec import ScaleoutSpec

log = logging.getLogger("launch")


def prepare_environment(env: dict[str, str]) -> None:
    """What Ray's processes inherit: an absolute asset cache (workers may run elsewhere than the launcher's
    folder) and Serve's default proxy, because the HAProxy mode ignores the multiplexed-model-id header."""
    chosen = env.get("MLE_CACHE_DIR")
    env["MLE_CACHE_DIR"] = str(Path(chosen).expanduser().absolute()) if chosen else str(cache_dir())
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        log.warning("RAY_SERVE_ENABLE_HA_PROXY=1 ignored: its proxy drops the multiplexed-model-id routing key")
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"


def run(spec: ScaleoutSpec, host: str, port: int) -> int:
    prepare_environment(os.environ)
    import ray
    from ray import serve

    from server.scaleout.app import APP_NAME, build_application

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # logical CPUs: enough for every replica even where the machine has fewer cores
        needed = math.ceil(spec.replicas * spec.replica_cpus * len(spec.models))
        ray.init(num_cpus=max(os.cpu_count() or 1, needed), include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    status = 0
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_application(spec), name=APP_NAME, route_prefix="/")
        log.info("serving %s on http://%s:%d with %d encoder replica(s) per model",
                 ", ".join(m.name for m in spec.models), host, port, spec.replicas)
        stop.wait()
        log.info("stopping: Serve, then Ray")
    except Exception as exc:  # a deployment that never became healthy (the replicas' logs say why)
        log.error("scale-out deployment failed: %s", exc)
        status = 1
    finally:
        serve.shutdown()
        ray.shutdown()
    return status
