"""Bounds on what a worker's peers can make it hold: connections per host, and memory given back.

Why this is not in libzmq: a ROUTER accepts any number of TCP connections, and each one holds a
file descriptor (1,100 half-open connections exhausted a worker's, issue 13 finding 5) and, until
its handshake times out, a session. libzmq has no per-peer limit, but its socket monitor reports
every accepted connection with its descriptor; `ConnectionLimit` counts them by the peer's host
and shuts down the ones beyond the limit (libzmq then closes them as if the peer had).

Why a connection's unread bytes are watched: libzmq assembles a multi-frame message in its I/O
thread before the application sees its first frame, and bounds frames (MAXMSGSIZE), not their
number; so a member could make a worker hold any number of frames that each fit. libzmq says
which connection (descriptor) each message came from (ZMQ_SRCFD) and the kernel says how many
bytes each connection has received (TCP_INFO), so `ConnectionLimit.check_held` shuts a connection
down once it has received more than a budget (derived from the deployment) since it last
delivered a complete message: libzmq then discards the half-assembled message.

Why memory is given back by hand: a message refused as too large was held before it was refused.
Its frames are freed at once, but glibc keeps the freed pages in the heap (2,048 frames of 1 MiB
left a worker 2 GB larger); `release_memory` returns them to the kernel.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import termios
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in Linux's struct tcp_info


def bytes_received(fd: int) -> int | None:
    """Bytes a TCP connection's descriptor has handed to its reader (libzmq): what the kernel
    received less what still waits in its receive queue (None if unknown)."""
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return None
    finally:
        conn.detach()
    if len(info) < _BYTES_RECEIVED + 8:
        return None
    return struct.unpack_from("Q", info, _BYTES_RECEIVED)[0] - queued


def source_fd(frame: zmq.Frame) -> int | None:
    """The descriptor of the connection a received frame came on (libzmq's ZMQ_SRCFD)."""
    try:
        fd = frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def release_memory() -> None:
    """Return freed heap pages to the kernel (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ConnectionLimit:
    """At most `per_host` connections from one host on a listening socket, and none holding more
    than a budget of an unfinished message.

    Everything runs in the thread that owns the socket (its monitor is a socket too): `check`
    reads the monitor's events without blocking and shuts down connections over the limit;
    `delivered` notes that a connection completed a message; `check_held` cuts connections that
    handed libzmq more than the budget since.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED

    def __init__(self, sock: zmq.Socket, per_host: int):
        self.sock = sock
        self.per_host = per_host
        self.monitor: zmq.Socket | None = None
        self.hosts: dict[int, str] = {}  # descriptor -> peer host, for connections counted
        self.count: Counter[str] = Counter()
        self.refused = 0  # connections shut down for being over the limit
        self.cut = 0  # connections shut down for holding too much of an unfinished message
        self.base: dict[int, int] = {}  # descriptor -> its bytes received when it last delivered a message
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
                self.base.pop(fd, None)
                if host is not None:
                    self.count[host] -= 1

    def delivered(self, fd: int | None) -> None:
        """A complete message arrived on `fd`: what it received up to now is accounted for."""
        if fd is not None and fd in self.hosts:
            got = bytes_received(fd)
            if got is not None:
                self.base[fd] = got

    def check_held(self, budget: int, exempt: int | None = None) -> None:
        """Shut down every connection (but `exempt`, the coordinator's) that received more than
        `budget` bytes since it last delivered a complete message."""
        for fd in list(self.hosts):
            if fd == exempt:
                continue
            got = bytes_received(fd)
            if got is None or got - self.base.get(fd, 0) <= budget:
                continue
            self.cut += 1
            self.base[fd] = got  # once: it is closing
            try:
                conn = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                conn.detach()

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
        self.base[fd] = bytes_received(fd) or 0
