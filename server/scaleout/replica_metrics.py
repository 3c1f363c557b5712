"""One encoder replica's own `/metrics` listener, so every replica is a scrape target (Prometheus, the
inference gateway's vLLM-named series). Rendering runs on the replica's event loop, where the model's
state lives; the stdlib server thread only waits for it."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)
PORTS_TO_TRY = 64  # replicas sharing a node take the next free port after the configured one


class ReplicaMetricsListener:
    def __init__(self, render: Callable[[], bytes], loop: asyncio.AbstractEventLoop, host: str, port: int):
        async def render_on_loop() -> bytes:
            return render()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = asyncio.run_coroutine_threadsafe(render_on_loop(), loop).result(timeout=10)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        self.server = self._bind(Handler, host, port)
        self.url = f"http://{host}:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, name="replica-metrics", daemon=True)
        self.thread.start()

    @staticmethod
    def _bind(handler, host: str, port: int) -> ThreadingHTTPServer:
        for candidate in [0] if port == 0 else range(port, port + PORTS_TO_TRY):
            try:
                return ThreadingHTTPServer((host, candidate), handler)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(f"no free metrics port in {port}..{port + PORTS_TO_TRY - 1}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
