"""Shared fixtures: offline demo assets, the demo model loaded on the torch backend, a PEFT reference
and live servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "model_configs" / "demo.yaml"
DEMO_MODEL = "demo/qwen3-tiny"


def pytest_configure(config):
    # Every test session builds its own offline assets unless the caller points at a cache.
    os.environ.setdefault("MLE_CACHE_DIR", tempfile.mkdtemp(prefix="mle-test-cache-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():  # Triton kernels run in Triton's interpreter, on the CPU
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def busy_machine():
    """With MLE_TEST_BUSY=N (`make test-soak`), N other processes keep the cores busy for the whole session: the
    soak and shutdown tests must hold on a shared, loaded machine too."""
    import subprocess
    import sys

    spin = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(int(os.environ.get("MLE_TEST_BUSY", "0")))]
    yield len(busy)
    for process in busy:
        process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def demo_config():
    from server.config import load_model_config

    return load_model_config(DEMO_YAML)


@pytest.fixture(scope="session")
def demo_dirs(demo_config):
    """{'model': folder, '<adapter>': folder, ...} for the demo model and all demo adapters."""
    from server.demo_assets import DEMO_ADAPTERS, ensure_builtin

    dirs = {"model": ensure_builtin("builtin:qwen3-tiny")}
    for name in DEMO_ADAPTERS:
        dirs[name] = ensure_builtin(f"builtin:qwen3-tiny/{name}")
    return dirs


def loaded_model(config, **settings):
    """A model built and loaded in process on the torch backend (its adapters preloaded by the registry)."""
    from server.build import load_model
    from server.config import ServerSettings

    return asyncio.run(load_model(config, ServerSettings(**settings), backend="torch"))


def token_batch(model, rows, adapters):
    """Rows under adapter names, as the registry hands them to a backend: one slot per row."""
    from server.backends.base import TokenBatch

    return TokenBatch(rows, [None if name is None else model.adapters.slot_of(name) for name in adapters])


@pytest.fixture(scope="session")
def demo_model(demo_config, demo_dirs):
    model = loaded_model(demo_config)
    yield model
    asyncio.run(model.backend.close())


@pytest.fixture(scope="session")
def torch_backend(demo_model):
    return demo_model.backend


@pytest.fixture(scope="session")
def embed_rows(demo_model):
    """(token rows, adapter names) -> pooled vectors from the demo model's torch backend."""
    return lambda rows, adapters: demo_model.backend.embed_sync(token_batch(demo_model, rows, adapters))


def peft_demo_model(demo_dirs, dtype=None, device: str = "cpu"):
    """The demo base model under PEFT with the three demo adapters loaded, in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(demo_dirs["model"], dtype=dtype or torch.float32).to(device).eval()
    model = PeftModel.from_pretrained(base, demo_dirs["legal"], adapter_name="legal")
    for name in ("medical", "finance"):
        model.load_adapter(demo_dirs[name], adapter_name=name)
    return model.eval()


@pytest.fixture(scope="session")
def peft_reference(demo_dirs):
    """embed(ids, adapter) -> last-token vector from PEFT (PeftModel with that adapter), unnormalised."""
    model = peft_demo_model(demo_dirs)

    def embed(ids: list[int], adapter: str | None):
        return peft_last_token(model, ids, adapter)

    embed.model = model
    return embed


def peft_last_token(model, ids: list[int], adapter: str | None):
    """One row through a PeftModel under `adapter` (None: adapters disabled): its last token's vector as
    float32 numpy, unnormalised."""
    import torch

    inputs = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                hidden = model(input_ids=inputs).last_hidden_state
        else:
            model.set_adapter(adapter)
            hidden = model(input_ids=inputs).last_hidden_state
    return hidden[0, -1].float().cpu().numpy()


class LiveServer:
    """uvicorn serving an app on a free loopback port in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def build_app(model_config, *, backend=None, **server_settings):
    from server.api.app import create_app
    from server.backends.torch_backend import TorchBackend
    from server.config import ServerSettings
    from server.local_model import LocalModel

    settings = ServerSettings(**server_settings)
    backend = backend or TorchBackend(model_config, settings, "cpu")
    model = LocalModel(model_config, settings, backend)
    return create_app({model_config.name: model}, settings, load_in_background=False), model


@contextlib.contextmanager
def launched_demo(*args: str, log=None, env=None, timeout: float = 120.0, started: list | None = None):
    """`launch.py --config <demo> <args>` in its own process on a free port; yields its URL, then SIGTERM.
    `started`: the process is appended to it (to signal it)."""
    import signal
    import subprocess
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as own_log:  # read back if the server never gets ready
        process = subprocess.Popen([sys.executable, "launch.py", "--config", str(DEMO_YAML), "--port", str(port),
                                    *args], cwd=REPO, stdout=log or own_log, stderr=subprocess.STDOUT, env=env)
        if started is not None:
            started.append(process)
        try:
            try:
                wait_ready(url, timeout=timeout, process=process)
            except RuntimeError as exc:
                own_log.seek(0)
                tail = own_log.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{exc}; the server's log ends:\n{tail}") from None
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def wait_ready(url: str, timeout: float = 60.0, process=None) -> None:
    """Poll /readyz until 200; with `process`, fail at once if that server process has exited."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} before {url} was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def make_gated_backend():
    """The real torch backend with test controls around its forward (no numerics are changed):
    `hold` keeps forwards waiting (so rows can be queued on purpose), `entered` says one is waiting,
    `seen` records every row that reached a forward, a row whose length is in `poison` makes its batch
    fail, and `loads` records adapter installs by name."""
    import asyncio

    from server.backends.torch_backend import TorchBackend

    class GatedBackend(TorchBackend):
        def __init__(self, *args):
            super().__init__(*args)
            self.hold = threading.Event()
            self.entered = threading.Event()
            self.seen: list[list[int]] = []
            self.poison: set[int] = set()
            self.loads: list[str] = []

        async def embed(self, batch):
            if self.hold.is_set():
                self.entered.set()
                await asyncio.to_thread(lambda: [time.sleep(0.01) for _ in iter(self.hold.is_set, False)])
            self.seen.extend(list(ids) for ids in batch.input_ids)
            if any(len(ids) in self.poison for ids in batch.input_ids):
                raise RuntimeError("simulated kernel failure")
            return await super().embed(batch)

        async def install(self, slot, adapter, *, pinned=False):
            self.loads.append(adapter.name)
            await super().install(slot, adapter, pinned=pinned)

    return GatedBackend


def poll_while_loading(call, timeout: float = 30.0):
    """Repeat `call()` (an HTTP request) while it answers 503 LORA_LOADING, as the SIE SDK does."""
    deadline = time.monotonic() + timeout
    while True:
        response = call()
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        assert response.json()["detail"]["code"] == "LORA_LOADING" and response.headers["Retry-After"] == "1"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def demo_server(demo_config, demo_dirs):
    """The demo model served over real HTTP on loopback (in-process uvicorn thread)."""
    app, _ = build_app(demo_config)
    with LiveServer(app) as live:
        wait_ready(live.url)
        yield live
