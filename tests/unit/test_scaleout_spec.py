"""Scale-out pieces that need no Ray: builder-args validation, the launcher's environment, and the
promise that the base install never imports ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError
from server.scaleout.launcher import prepare_environment
from server.scaleout.spec import spec_from_builder_args
from tests.conftest import DEMO_YAML, REPO


def test_builder_args_make_a_spec_with_adapters_on_demand():
    spec = spec_from_builder_args({"configs": str(DEMO_YAML), "replicas": "3", "replica_gpus": 1,
                                   "engine": {"max_loras_per_model": 4}, "metrics_port": 9400})
    assert spec.replicas == 3 and spec.replica_gpus == 1.0 and spec.metrics_port == 9400
    assert spec.settings.max_loras_per_model == 4
    (model,) = spec.models
    assert not model.adapters.preload and set(model.adapters.lora_paths) == {"legal", "medical", "finance"}
    assert dict(model.adapters.preloaded) == {}


@pytest.mark.parametrize("args, message", [
    ({"configs": [str(DEMO_YAML)], "replica": 2}, "unknown key(s) replica"),
    ({"configs": []}, "'configs' must name at least one model YAML"),
    ({"configs": [str(DEMO_YAML)], "replicas": 0}, "replicas must be >= 1"),
    ({"configs": [str(DEMO_YAML)], "backend": "vllm"}, "backend must be"),
    ({"configs": [str(DEMO_YAML)], "engine": {"max_loras_per_model": 0}}, "max_loras_per_model must be >= 1"),
])
def test_bad_builder_args_name_the_problem(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_builder_args(args)


def test_launcher_keeps_the_default_proxy_and_an_absolute_cache():
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "MLE_CACHE_DIR": "relative/cache"}
    prepare_environment(env)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert Path(env["MLE_CACHE_DIR"]).is_absolute()


def test_base_server_never_imports_ray():
    code = ("import sys, server.cli, server.api.app, server.local_model, server.build, server.backends.torch_backend, "
            "server.scaleout.spec, server.scaleout.launcher\n"
            "from server.config import ServerSettings, load_model_config\n"
            "from server.api.app import create_app\n"
            "create_app({}, ServerSettings())\n"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
