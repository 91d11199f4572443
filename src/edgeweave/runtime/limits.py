"""Bounds on what a worker's peers can make it hold: connections per host, and memory given back.

Why this is not in libzmq: a ROUTER accepts any number of TCP connections, and each one holds a
file descriptor (1,100 half-open connections exhausted a worker's, issue 13 finding 5) and, until
its handshake times out, a session. libzmq has no per-peer limit, but its socket monitor reports
every accepted connection with its descriptor; `ConnectionLimit` counts them by the peer's host
and shuts down the ones beyond the limit (libzmq then closes them as if the peer had).

Why memory is given back by hand: a multi-frame message is assembled by libzmq's I/O thread
before the application sees its first frame, so a message the worker refuses as too large has
already been held. Its frames are freed at once, but glibc keeps the freed pages in the heap
(2,048 frames of 1 MiB left a worker 2 GB larger); `release_memory` returns them to the kernel.
"""

from __future__ import annotations

import ctypes
import socket
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message


def release_memory() -> None:
    """Return freed heap pages to the kernel (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ConnectionLimit:
    """At most `per_host` connections from one host on a listening socket.

    `start` and `check` run in the thread that owns the socket (its monitor is a socket too);
    `check` reads the monitor's events without blocking and shuts down connections over the limit.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED

    def __init__(self, sock: zmq.Socket, per_host: int):
        self.sock = sock
        self.per_host = per_host
        self.monitor: zmq.Socket | None = None
        self.hosts: dict[int, str] = {}  # descriptor -> peer host, for connections counted
        self.count: Counter[str] = Counter()
        self.refused = 0  # connections shut down for being over the limit
        self.port: int | None = None

    def start(self) -> None:
        endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if endpoint.startswith("tcp://"):
            self.port = int(endpoint.rsplit(":", 1)[1])
            self.monitor = self.sock.get_monitor_socket(self.EVENTS)

    def stop(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.monitor = None

    def check(self) -> None:
        while self.monitor is not None and self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._accepted(fd)
            else:
                host = self.hosts.pop(fd, None)
                if host is not None:
                    self.count[host] -= 1

    def _accepted(self, fd: int) -> None:
        # the descriptor itself, not a dup: when descriptors run out (the attack this guards
        # against) a dup would fail; detach() leaves it open, it stays libzmq's
        try:
            conn = socket.socket(fileno=fd)
        except OSError:  # already closed again
            return
        try:
            if conn.getsockname()[1] != self.port:  # the descriptor was reused meanwhile
                return
            host = conn.getpeername()[0]
            if self.count[host] >= self.per_host:
                self.refused += 1
                conn.shutdown(socket.SHUT_RDWR)  # libzmq sees the peer leave and closes it
                return
        except OSError:
            return
        finally:
            conn.detach()
        self.hosts[fd] = host
        self.count[host] += 1
