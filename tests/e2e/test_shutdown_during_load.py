"""SIGTERM while a model is still loading ends the process within seconds (exit 0), and the log says what
was cut short. A real long load (SmolLM2's first GGUF conversion takes about 30 s) cannot run in the
default suite, so the base-model load of the demo is made to sleep 60 s first: a stand-in, in the
subprocess only."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import DEMO_YAML, REPO, free_port

SLOW_LOAD = """
import sys, time
import server.backends.torch_backend as torch_backend
original = torch_backend.TorchBackend._load
def slow(self, slots):
    time.sleep(60)
    original(self, slots)
torch_backend.TorchBackend._load = slow
from server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_a_model_load_ends_within_seconds(demo_dirs, tmp_path):
    port = free_port()
    with open(tmp_path / "server.log", "w+") as log:
        process = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, "--config", str(DEMO_YAML), "--port", str(port)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:  # up and loading: /readyz answers 503 while the base model "loads"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 503:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
            time.sleep(1.0)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=45)
            took = time.monotonic() - started
        finally:
            process.kill()
        log.seek(0)
        text = log.read()
    assert code == 0 and took < 45, (code, took, text[-2000:])  # it did not wait for the 60 s load
    assert "stopping while loading the" in text and "the load is abandoned" in text  # tokenizer or base model
    assert "exiting with a model load abandoned" in text
