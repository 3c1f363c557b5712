"""Draining: in-flight accounting, and on SIGTERM readiness fails, new work gets 503, in-flight work
finishes (up to a deadline) before uvicorn is told to exit."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from server import errors
from server.api.errors import from_domain, send_error
from server.served_model import ModelState, ModelStatus

log = logging.getLogger(__name__)
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
LINGER_S = 0.5  # how long a closing listener takes over its backlog where new connections cannot be refused
LINGER_MAX_S = 3.0  # how long open connections may take to send their last request after the drain


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self.on_fatal: Callable[[str], None] | None = None  # set by a server that stops on a config error

    def model_loaded(self, status: ModelStatus) -> None:
        """A model finished loading; one that failed on a config error stops a server that asked for it."""
        if status.state is ModelState.FAILED and status.config_error and self.on_fatal is not None:
            self.on_fatal(f"model {status.name}: {status.failure}")

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
        return self._idle

    def enter(self) -> None:
        self.in_flight += 1
        self._event().clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._event().set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new work and wait for in-flight requests; True when they all finished in time."""
        self.draining = True
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._event().wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class DrainMiddleware:
    """Counts in-flight requests (probes excluded) and answers 503 SHUTTING_DOWN while draining."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle):
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            error = from_domain(errors.ShuttingDown("the server is shutting down; retry on another replica"))
            await send_error(scope, send, error, close=True)
            return
        self.lifecycle.enter()
        try:
            await self.app(scope, receive, self._closing_when_draining(send))
        finally:
            self.lifecycle.leave()

    def _closing_when_draining(self, send: Send) -> Send:
        """An answer sent once the drain began says `Connection: close`, so no client sends again on that
        connection (a request sent as the server closes a kept-alive connection is lost to its client)."""
        async def sending(message) -> None:
            if message["type"] == "http.response.start" and self.lifecycle.draining:
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)
        return sending


class DrainingServer(uvicorn.Server):
    """First SIGTERM/SIGINT: drain (readiness 503, in-flight finish within `grace_s`), then exit 0.
    A second signal shuts down at once, as plain uvicorn does."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started = False
        self.fatal: str | None = None
        lifecycle.on_fatal = self._stop_on_fatal

    def _stop_on_fatal(self, message: str) -> None:
        log.error("%s; stopping", message)
        self.fatal = message
        self.should_exit = True

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._drain_started or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_started = True
        self.lifecycle.draining = True
        log.info("signal %s: draining (%d in flight, up to %.0f s)", sig, self.lifecycle.in_flight, self.grace_s)

        async def drain_then_exit() -> None:
            finished = await self.lifecycle.drain(self.grace_s)
            if not finished:
                log.warning("drain deadline passed with %d requests in flight", self.lifecycle.in_flight)
            # Stop accepting (new clients get a refused connection: never sent, never lost), then keep answering
            # 503 + Connection: close on open connections until they are gone (or LINGER_MAX_S): every answer
            # since the drain began said close, so a client sends at most once more on its connection.
            try:
                for listener in self.servers:
                    await close_listener(listener, self._protocol)
                await self._until_connections_close(LINGER_MAX_S)
            except Exception:
                log.exception("closing the listeners failed; stopping anyway")
            finally:
                # should_exit directly, not super().handle_exit: uvicorn re-raises handled signals after
                # shutdown (exit status 143); a drained shutdown is a clean one and exits 0.
                self.should_exit = True

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(drain_then_exit()))

    def _protocol(self) -> asyncio.Protocol:
        """A connection handler as uvicorn makes them for its listeners (asyncio and uvloop alike)."""
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                               app_state=self.lifespan.state)

    async def _until_connections_close(self, limit_s: float) -> None:
        deadline = self._loop.time() + limit_s
        while self.server_state.connections and self._loop.time() < deadline:
            await asyncio.sleep(0.01)


async def close_listener(listener: asyncio.AbstractServer, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
    """Stop listening without resetting the connections the kernel has already accepted for us.

    Closing a listening socket resets every connection still in its accept backlog; under load those
    clients have sent their request and would lose it. So a duplicate of each socket keeps it open while
    asyncio stops serving it; on Linux a socket filter then drops every new handshake (those clients retry,
    then find no listener: refused, never sent), we take over what the backlog holds (uvicorn serves those
    connections: 503 SHUTTING_DOWN with Connection: close) and close the duplicate once it reads empty.
    Without the filter (elsewhere) new connections keep coming, so the take-over ends after LINGER_S.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_S
    duplicates = [socket.socket(fileno=os.dup(sock.fileno())) for sock in listener.sockets]
    listener.close()
    for duplicate in duplicates:
        sealed = refuse_new_connections(duplicate)
        duplicate.setblocking(False)
        while sealed or loop.time() < deadline:
            try:
                connection, _ = duplicate.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the client gave up while queued (ECONNABORTED and kin)
                continue
            try:
                await loop.connect_accepted_socket(protocol_factory, connection)
            except OSError:
                connection.close()
        duplicate.close()


SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux's value; Python does not name it
DROP_EVERYTHING = struct.pack("HBBI", 0x06, 0, 0, 0)  # one classic-BPF instruction: BPF_RET | BPF_K, 0 bytes


def refuse_new_connections(listening: socket.socket) -> bool:
    """Attach a filter that drops every packet to a listening socket (Linux): no new connection completes its
    handshake, while those already queued stay queued. False where that cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(DROP_EVERYTHING)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog {u16 len; sock_filter *filter}
    try:
        listening.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True
