"""Transport: throughput of large tensors and round-trip time of small ones, between two processes.

Uses the runtime's own wire format (JSON header + raw tensor frames, no copies on send) over
ZeroMQ DEALER -> ROUTER on loopback, the socket pattern workers use. Targets: >= 1 GB/s for
4 MB tensors, < 1 ms round trip for small tensors.
Usage: python benchmarks/transport.py [--json]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import sys
import time

import torch
import zmq

from edgeweave.runtime.wire import pack, unpack


def echo_server(endpoint: str, ready) -> None:
    """Receives messages; replies to small ones (round trips) and acknowledges each bulk batch."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        frames = sock.recv_multipart(copy=False)
        peer, body = frames[0].bytes, frames[1:]
        header, tensors = unpack(body)
        if header["type"] == "stop":
            break
        if header["type"] == "ping":
            sock.send_multipart([peer, *pack({"type": "pong"}, tensors)], copy=False)
        elif header.get("last"):
            total = sum(t.numel() * t.element_size() for t in tensors)
            sock.send_multipart([peer, *pack({"type": "ack", "bytes": total})])
    sock.close(0)
    ctx.term()


def main() -> None:
    endpoint = "tcp://127.0.0.1:47811"
    ready = mp.get_context("spawn").Event()
    server = mp.get_context("spawn").Process(target=echo_server, args=(endpoint, ready), daemon=True)
    server.start()
    ready.wait(30)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)

    big = torch.randn(1024 * 1024)  # 4 MiB of float32
    count = 200
    for _ in range(10):  # warm up
        sock.send_multipart(pack({"type": "data"}, [big]), copy=False)
    sock.send_multipart(pack({"type": "data", "last": True}, [big]), copy=False)
    sock.recv_multipart()
    start = time.perf_counter()
    for i in range(count):
        sock.send_multipart(pack({"type": "data", "last": i == count - 1}, [big]), copy=False)
    sock.recv_multipart()
    elapsed = time.perf_counter() - start
    bulk_gbps = count * big.numel() * 4 / elapsed / 1e9

    rtts = {}
    for size in (16, 1024, 64 * 1024):
        small = torch.randn(size // 4)
        samples = []
        for i in range(1100):
            t0 = time.perf_counter()
            sock.send_multipart(pack({"type": "ping"}, [small]), copy=False)
            unpack(sock.recv_multipart(copy=False))
            if i >= 100:
                samples.append(time.perf_counter() - t0)
        rtts[size] = statistics.median(samples)
    sock.send_multipart(pack({"type": "stop"}))
    server.join(10)
    sock.close(0)
    ctx.term()
    result = {
        "bulk_4MiB_GB_per_s": bulk_gbps,
        "bulk_target_GB_per_s": 1.0,
        "rtt_median_s": {str(k): v for k, v in rtts.items()},
        "rtt_target_s": 1e-3,
    }
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return
    print(f"4 MiB tensors, one way: {bulk_gbps:.2f} GB/s (target >= 1 GB/s)")
    for size, rtt in rtts.items():
        print(f"round trip, {size:>6} B tensor: {rtt * 1e6:.0f} us (target < 1000 us)")


if __name__ == "__main__":
    main()
