"""Picking free loopback ports for the local processes `dopd profile --served` starts (and the tests)."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct 127.0.0.1 ports free now. Every socket is bound before any is released: ports
    picked one after another, each released before the next, can repeat (the kernel may hand a
    just-closed port out again), and a worker given one port for its HTTP server and its KV store, or an
    operator for its metrics and its health endpoint, fails to bind the second. A caller that needs
    several ports at once takes them from one call."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in held:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in held]
