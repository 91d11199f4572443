"""How faithfully a 50 Mbps link is emulated: achieved payload rate, measured at the receiver.

(a) inproc: the default mode. A sender thread paces 256 KiB messages with `LinkShaper.reserve`
    + `wait_until` and pushes them over ZeroMQ on loopback to a receiver process; the receiver
    also reports how late each message arrived relative to the shaper's `deliver_at`
    (CLOCK_MONOTONIC is shared by all processes of the machine).
(b) netns: kernel htb between the root namespace and a device namespace (`NetnsCluster`, root
    only); the sender pushes as fast as ZeroMQ takes messages and tc does the shaping.

The payload rate is bytes of every message after the first / (last arrival - first arrival),
over a window after a warm-up. Target: >= 93% of the configured rate (TCP/IP headers alone cost
~4.5% of a 1500-byte MTU link in (b); (a) paces payload bytes, so it should be ~100%).
Frames are raw bytes plus a JSON header; nothing is ever unpickled.

Usage: python benchmarks/shaped_link.py [--json] [--rate-mbps 50] [--latency-ms 0] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

TARGET_RATIO = 0.93


# ---------------------------------------------------------------------------------------------
# Receiver (a separate process; in (b) started inside the device's namespace)


def receive(endpoint: str, warm: float, window: float) -> dict:
    """Count the messages arriving in [first + warm, first + warm + window]; report rate and lateness."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(endpoint)
    print(json.dumps({"ready": sock.getsockopt_string(zmq.LAST_ENDPOINT)}), flush=True)
    arrivals: list[tuple[float, int]] = []
    late: list[float] = []
    first = None
    while True:
        if not sock.poll(10_000):
            break  # the sender is gone
        header, payload = sock.recv_multipart(copy=False)
        now = time.monotonic()
        first = first if first is not None else now
        if now - first < warm:
            continue
        arrivals.append((now, len(payload.buffer)))
        deliver_at = json.loads(bytes(header.buffer)).get("deliver_at")
        if deliver_at is not None:
            late.append(now - deliver_at)
        if now - first >= warm + window:
            break
    sock.close(linger=0)
    ctx.term()
    return _summary(arrivals, late)


def _summary(arrivals: list[tuple[float, int]], late: list[float]) -> dict:
    if len(arrivals) < 2:
        return {"error": f"only {len(arrivals)} messages arrived"}
    span = arrivals[-1][0] - arrivals[0][0]
    out = {"messages": len(arrivals), "seconds": span, "bps": sum(n for _, n in arrivals[1:]) * 8 / span}
    if late:
        ms = sorted(x * 1e3 for x in late)
        out["lateness_ms"] = {"p50": statistics.median(ms), "p99": ms[int(0.99 * (len(ms) - 1))], "max": ms[-1]}
    return out


# ---------------------------------------------------------------------------------------------
# Sender


def _send(endpoint: str, seconds: float, nbytes: int, shaper=None) -> None:
    """Push `nbytes` messages for `seconds`, paced by `shaper` when given (else as fast as possible)."""
    from edgeweave.runtime.links import wait_until

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 4)  # keep little queued in ZeroMQ: the link is the queue
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    sock.connect(endpoint)
    payload = bytes(nbytes)
    end = time.monotonic() + seconds
    # The producer always has the next message ready: it is handed to the link (reserved) as
    # soon as the previous one was, not after the previous send returned, which would leave
    # the emulated link idle for the time ZeroMQ takes to send.
    deliver_at = shaper.reserve(nbytes, time.monotonic())[1] if shaper is not None else None
    while time.monotonic() < end:
        header = {}
        if shaper is not None:
            this, deliver_at = deliver_at, shaper.reserve(nbytes, time.monotonic())[1]
            wait_until(this)
            header["deliver_at"] = this
        try:
            sock.send_multipart([json.dumps(header).encode(), payload], copy=False)
        except zmq.Again:
            break  # the receiver has finished and left
    sock.close(linger=0)
    ctx.term()


def _start_receiver(prefix: list[str], endpoint: str, warm: float, window: float) -> tuple[subprocess.Popen, str]:
    cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "--receive", endpoint, str(warm), str(window)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"the receiver did not start: {' '.join(cmd)}")
    return proc, json.loads(line)["ready"]


def _measure(prefix: list[str], bind: str, seconds: float, nbytes: int, shaper=None, warm: float = 0.5) -> dict:
    """One receiver process, one sender thread here; the receiver's report."""
    receiver, endpoint = _start_receiver(prefix, bind, warm, seconds)
    sender = threading.Thread(target=_send, args=(endpoint, warm + seconds + 1.0, nbytes, shaper), daemon=True)
    sender.start()
    try:
        out, _ = receiver.communicate(timeout=warm + seconds + 30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    sender.join()
    return json.loads(out.strip().splitlines()[-1])


def bench_inproc(rate_bps: float, latency_s: float, seconds: float, nbytes: int) -> dict:
    from edgeweave.runtime.links import LinkShaper, LinkSpec

    shaper = LinkShaper(LinkSpec(bandwidth_bps=rate_bps, latency_s=latency_s), epoch=time.monotonic())
    return _measure([], "tcp://127.0.0.1:*", seconds, nbytes, shaper)


def bench_netns(rate_bps: float, seconds: float, nbytes: int) -> dict:
    from edgeweave.errors import UserError
    from edgeweave.runtime.netns import NetnsCluster, require_root

    try:
        require_root()
    except UserError as exc:
        return {"skipped": str(exc)}
    with NetnsCluster(["source", "device"], "source", {("source", "device"): rate_bps}, prefix="ewb") as cluster:
        return _measure(cluster.exec_prefix("device"), f"tcp://{cluster.address('device')}:5555", seconds, nbytes)


# ---------------------------------------------------------------------------------------------


def _with_ratio(result: dict, rate_bps: float) -> dict:
    if "bps" in result:
        result["ratio"] = result["bps"] / rate_bps
        result["ok"] = result["ratio"] >= TARGET_RATIO
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rate-mbps", type=float, default=50.0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="(a) only; occupies the link per message")
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement window after a 0.5 s warm-up")
    parser.add_argument("--message-kib", type=int, default=256)
    parser.add_argument("--receive", nargs=3, metavar=("ENDPOINT", "WARM", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receive:
        endpoint, warm, window = args.receive
        print(json.dumps(receive(endpoint, float(warm), float(window))), flush=True)
        return 0
    rate, nbytes = args.rate_mbps * 1e6, args.message_kib * 1024
    results = {
        "configured_bps": rate,
        "message_bytes": nbytes,
        "latency_s": args.latency_ms / 1e3,
        "inproc": _with_ratio(bench_inproc(rate, args.latency_ms / 1e3, args.seconds, nbytes), rate),
        "netns": _with_ratio(bench_netns(rate, args.seconds, nbytes), rate),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"configured link: {rate / 1e6:g} Mbit/s, {nbytes // 1024} KiB messages, latency {args.latency_ms:g} ms")
    for mode in ("inproc", "netns"):
        r = results[mode]
        if "bps" in r:
            line = f"{mode:7s} {r['bps'] / 1e6:7.2f} Mbit/s payload = {r['ratio']:.1%} of configured"
            if "lateness_ms" in r:
                late = r["lateness_ms"]
                line += f"; arrival after deliver_at p50 {late['p50']:.3f} ms, p99 {late['p99']:.3f} ms"
            print(line + ("" if r["ok"] else f"  (below the {TARGET_RATIO:.0%} target)"))
        else:
            print(f"{mode:7s} {r.get('skipped') or r.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
