"""The link model of the design notes, as three small functions every timing model shares.

A link direction is a FIFO pipe: it carries one message's bytes at a time at its bandwidth, and
each message arrives `latency` after its last byte leaves. Latency is propagation delay: it does
NOT occupy the link, so messages in flight overlap it, and ten back-to-back chunks pay the
latency once, not ten times. A per-message software cost (serialise, queue, hand over between
threads), where a planner counts one, is paid by the sender before the next message can go, so
it occupies the link direction like the bytes do.

- `link_occupancy_s(nbytes, bandwidth_bps, overhead_s)`: how long one message holds its link
  direction (the throughput objective's link time, the simulator's busy time, the radio's
  on-time);
- `transfer_s(nbytes, bandwidth_bps, latency_s, overhead_s)`: from the start of sending to the
  arrival of the whole message when the link is idle (the latency objective's transfer time);
- `send_on_link(free_at, ready_at, occupancy_s, latency_s)`: one message through a busy FIFO
  link: when it starts, when the link is free again, and when it arrives.

The simulator (`sim/simulator.py`), the runtime's shaper (`runtime/links.py`) and the planners'
cost models all follow these rules, so a prediction and a measurement compare message by message.
"""

from __future__ import annotations

from typing import NamedTuple


class Sent(NamedTuple):
    """One message through a FIFO link direction (absolute seconds)."""

    start_s: float  # its first byte leaves (the link was free and the message was ready)
    free_s: float  # its last byte has left: the next message may start
    arrive_s: float  # the whole message is at the receiver: free_s + latency


def link_occupancy_s(nbytes: float, bandwidth_bps: float, overhead_s: float = 0.0) -> float:
    """Seconds one message of `nbytes` holds its link direction: bits / bandwidth + per-message cost.

    `bandwidth_bps` is in bits per second, as in the cluster YAML. Latency is not part of it.
    """
    if nbytes < 0:
        raise ValueError(f"cannot send a negative number of bytes ({nbytes})")
    return nbytes * 8.0 / bandwidth_bps + overhead_s


def transfer_s(nbytes: float, bandwidth_bps: float, latency_s: float, overhead_s: float = 0.0) -> float:
    """Seconds from the start of sending to the arrival of the whole message on an idle link."""
    return link_occupancy_s(nbytes, bandwidth_bps, overhead_s) + latency_s


def send_on_link(free_at: float, ready_at: float, occupancy_s: float, latency_s: float) -> Sent:
    """One message through a FIFO link direction that is free from `free_at`.

    It starts when both the link is free and the message is ready, holds the link for
    `occupancy_s` (see `link_occupancy_s`), and arrives `latency_s` after that. Feed `free_s` back
    as the next message's `free_at`: that is the whole queueing rule.
    """
    start = max(free_at, ready_at)
    free = start + occupancy_s
    return Sent(start, free, free + latency_s)
