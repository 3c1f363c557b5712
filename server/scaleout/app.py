"""The Ray Serve application: one encoder deployment per model and an ingress that serves our own
FastAPI app (`create_app`) over `RemoteModel`s. `build` is the import path for `serve run` / RayService."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from server.api.app import create_app
from server.scaleout.encoder import Encoder
from server.scaleout.remote_model import RemoteModel
from server.scaleout.spec import ScaleoutSpec, spec_from_builder_args

APP_NAME = "multilora-embed"


class Ingress:
    """Routes, errors, auth, metrics of requests: the single-server code, unchanged."""

    def __init__(self, spec: ScaleoutSpec, encoders: Mapping[str, DeploymentHandle]):
        self.models = {name: RemoteModel(spec.model(name), handle) for name, handle in encoders.items()}
        self.settings = spec.settings

    def __serve_build_asgi_app__(self):
        return create_app(self.models, self.settings)


def encoder_deployment_name(model: str) -> str:
    return "encoder-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model)


def build_application(spec: ScaleoutSpec) -> Application:
    encoders = {}
    for model in spec.models:
        deployment = serve.deployment(Encoder).options(
            name=encoder_deployment_name(model.name), num_replicas=spec.replicas,
            max_ongoing_requests=spec.max_ongoing_requests,
            ray_actor_options={"num_cpus": spec.replica_cpus, "num_gpus": spec.replica_gpus},
            graceful_shutdown_timeout_s=spec.settings.shutdown_grace_s)
        encoders[model.name] = deployment.bind(spec, model.name)
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", max_ongoing_requests=spec.max_ongoing_requests * spec.replicas * len(spec.models),
        ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=spec.settings.shutdown_grace_s)
    return ingress.bind(spec, encoders)


def build(args: dict[str, Any]) -> Application:
    """`serve run server.scaleout.app:build configs=model_configs/demo.yaml replicas=2`, or a config file."""
    return build_application(spec_from_builder_args(args))
