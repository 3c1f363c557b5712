"""The drain's listener close: connections already queued in the kernel's accept backlog get answered by
our protocol instead of reset (on asyncio's and uvloop's servers), while a plain close resets them."""

from __future__ import annotations

import asyncio
import socket

import pytest

from server.api.lifecycle import close_listener

REPLY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(REPLY)
        self.transport.close()


def queued_clients(port: int, count: int) -> list[socket.socket]:
    """Clients that connected and sent a request while the server's loop accepted nothing (no await)."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"POST /v1/encode/m HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        clients.append(client)
    return clients


def read_all(client: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := client.recv(4096):
            chunks.append(chunk)
    except ConnectionResetError:
        return b"reset"
    finally:
        client.close()
    return b"".join(chunks)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_backlog_connections_are_answered_not_reset(loop_kind):
    loop = asyncio.new_event_loop() if loop_kind == "asyncio" else pytest.importorskip("uvloop").new_event_loop()

    async def scenario(take_over: bool) -> list[bytes]:
        server = await loop.create_server(Answer, "127.0.0.1", 0, backlog=64)
        clients = queued_clients(server.sockets[0].getsockname()[1], 8)
        if take_over:
            await close_listener(server, Answer)
        else:
            server.close()
        await asyncio.sleep(0.2)  # let the handed-over connections be served
        return await asyncio.gather(*(asyncio.to_thread(read_all, c) for c in clients))

    try:
        assert loop.run_until_complete(scenario(take_over=True)) == [REPLY] * 8
        assert set(loop.run_until_complete(scenario(take_over=False))) <= {b"reset", b""}
    finally:
        loop.close()


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="a Linux socket filter")
def test_a_sealed_listener_completes_no_new_handshake_and_keeps_its_queue():
    """After `refuse_new_connections` a client cannot connect (its SYN is dropped: it would find no listener
    and be refused, never having sent its request), while a connection queued before is still accepted."""
    from server.api.lifecycle import refuse_new_connections

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        port = listening.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert refuse_new_connections(listening)
        with pytest.raises(OSError):  # a timeout: the handshake never completes
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
        accepted, _ = listening.accept()
        queued.sendall(b"ping")
        assert accepted.recv(4) == b"ping"
        accepted.close()
        queued.close()
