"""No answer carries a path of the server's file system: every domain error the API table maps, the
errors real requests raise (unknown adapter, failed loads, refused sources, a model that failed), and the
model and adapter listings name sources and roots as the config wrote them."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from server.api.app import answer_domain_error
from server.api.errors import STATUS_TABLE
from server.cache import cache_dir
from server.config import model_config_from_dict
from server.demo_assets import ensure_builtin
from tests.conftest import DEMO_MODEL, DEMO_YAML, LiveServer, build_app, poll_while_loading

JSON = {"Accept": "application/json"}


def leaked(text: str, *folders: Path) -> list[str]:
    """Which of the server's absolute folders (and their resolved forms) `text` shows."""
    shown = {str(f) for f in folders} | {str(Path(f).resolve()) for f in folders} | {str(cache_dir()),
                                                                                   str(Path.cwd().resolve())}
    return sorted(folder for folder in shown if folder in text)


@pytest.fixture(scope="module")
def root_app(tmp_path_factory, demo_config):
    """The demo with a tmp adapter root written relative to a YAML, plus one broken adapter in it."""
    yaml_dir = tmp_path_factory.mktemp("configs")
    root = yaml_dir.parent / "leak-adapters"
    root.mkdir(exist_ok=True)
    shutil.copytree(ensure_builtin("builtin:qwen3-tiny/dynamic") / "retail", root / "retail", dirs_exist_ok=True)
    shutil.copytree(root / "retail", root / "broken", dirs_exist_ok=True)
    (root / "broken" / "adapter_model.safetensors").unlink()
    config = dataclasses.replace(demo_config, lora_roots=(str(root.resolve()),),
                                 written_paths={str(root.resolve()): "../leak-adapters"})
    app, _ = build_app(config)
    return app, root


@pytest.mark.parametrize("kind", sorted(STATUS_TABLE, key=lambda k: k.__name__))
def test_every_mapped_error_hides_paths(root_app, kind):
    app, root = root_app
    message = (f"'{root.resolve()}/retail' and '{cache_dir()}/packages/x' and '{Path.cwd().resolve()}/a.yaml' "
               f"and '{DEMO_YAML.resolve()}'")
    scope = {"type": "http", "method": "POST", "path": "/v1/encode/m", "headers": [], "app": app}
    response = asyncio.run(answer_domain_error(Request(scope), kind(message)))
    body = response.body.decode()
    assert not leaked(body, root), body
    assert "../leak-adapters/retail" in body and "$MLE_CACHE_DIR/packages/x" in body and "…/demo.yaml" in body


def test_real_errors_and_listings_hide_paths(root_app):
    app, root = root_app
    with LiveServer(app) as live:
        def encode(lora_id):
            return httpx.post(f"{live.url}/v1/encode/{DEMO_MODEL}", headers=JSON, timeout=30,
                              json={"items": [{"text": "a"}], "params": {"options": {"lora_id": lora_id}}})

        answers = [encode("missing"), poll_while_loading(lambda: encode("broken")), encode("broken"),
                   poll_while_loading(lambda: encode("retail"))]
        loras = f"{live.url}/v1/models/{DEMO_MODEL}/loras"
        for source in (str(root.resolve() / "nothing"), "/etc", str(root.resolve() / "retail")):
            answers.append(httpx.post(loras, json={"name": "x" + str(len(answers)), "source": source}, timeout=30))
        answers.append(httpx.post(f"{live.url}/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": "/etc"}))
        answers += [httpx.get(loras), httpx.get(f"{live.url}/v1/models"), httpx.get(f"{live.url}/v1/models/"
                                                                                    f"{DEMO_MODEL}:retail")]
    for response in answers:
        assert not leaked(response.text, root), response.text
    assert "../leak-adapters" in answers[0].text and "../leak-adapters/broken" in answers[2].text
    sources = {lora["name"]: lora["source"] for lora in answers[-3].json()["loras"]}
    assert sources["retail"] == "../leak-adapters/retail" and sources["legal"] == "builtin:qwen3-tiny/legal"


def test_failed_model_hides_paths(tmp_path):
    yaml_dir = tmp_path / "configs"
    yaml_dir.mkdir()
    data = {"name": "broken/model", "model_path": "./missing-model", "dtype": "float32"}
    config = model_config_from_dict(data, where=str(yaml_dir / "m.yaml"), base_dir=yaml_dir)
    app, _ = build_app(config)
    with LiveServer(app) as live:
        answers = [httpx.post(f"{live.url}/v1/encode/broken/model", json={"items": [{"text": "a"}]}),
                   httpx.get(f"{live.url}/v1/models")]
    for response in answers:
        assert not leaked(response.text, tmp_path), response.text
        assert "./missing-model" in response.text
