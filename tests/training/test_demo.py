"""`make demo-adapter`'s command line (server/training/demo.py): a chosen port, and its mistakes named. The demo
itself trains and serves real models (`make demo-adapter`); these checks start nothing."""

from __future__ import annotations

import pytest

from server.training import demo


def test_port_and_models_are_checked_before_anything_starts(capsys):
    assert demo.main(["--port"]) == 2 and "--port needs a port number" in capsys.readouterr().err
    assert demo.main(["--port", "eighty"]) == 2
    assert demo.main(["--port", "18080", "no-such-model"]) == 2
    assert "unknown demo model(s) no-such-model" in capsys.readouterr().err


def test_the_server_is_started_on_the_chosen_port(monkeypatch):
    started = []

    class Process:  # a stand-in that exits at once (no server is started here): `served` says so
        returncode = 1

        def poll(self):
            return 1

        def send_signal(self, signal):
            pass

        def wait(self, timeout=None):
            return 1

    monkeypatch.setattr(demo.subprocess, "Popen", lambda argv, **_: started.append(argv) or Process())
    with pytest.raises(RuntimeError, match="exited with status 1"), demo.served("x.yaml", timeout=1, port=18080):
        pass
    assert started and started[0][started[0].index("--port") + 1] == "18080"
