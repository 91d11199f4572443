"""Which request ids a worker still accepts data for, and how many requests a sender may hold.

The coordinator numbers requests 0, 1, 2, ... per deployment and admits at most `max_inflight`
of them at once, so every legitimate id lies in a narrow window around the ids a worker has
seen. Data outside that window is hostile or stale, and dropping it keeps a worker's memory
bounded whatever a peer sends:

  - an id more than `slack` (4 x max_inflight) beyond the highest accepted one is refused, so a
    peer cannot make the worker hold state for requests that will never come;
  - an id that already completed here (a replay) is refused, as is a second copy of a transfer;
  - each upstream device may have at most `per_peer` requests partially received and not yet
    finished here; beyond that its data is dropped;
  - on the source device, data is accepted only for requests that were started there.

It is shared by the receive thread (admit) and the compute thread (finish), hence the lock.
"""

from __future__ import annotations

import threading


class Refused(Exception):
    """Data that the request window does not admit; `reason` is a short category for counters."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Admission:
    def __init__(self, max_inflight: int, source: bool, first: int = 0):
        self.slack = 4 * max_inflight
        self.per_peer = 2 * max_inflight  # the window plus room for finish notices still in flight
        self.source = source
        self.lock = threading.Lock()
        # every id below has completed (or is too old to matter); a redeployment starts at
        # `first`, so data for a request of the previous deployment is refused as a replay
        self.floor = first
        self.highest = first - 1
        self.completed: set[int] = set()
        self.started: set[int] = set()
        self.received: dict[int, set[str]] = {}
        self.held: dict[str, set[int]] = {}

    def start(self, request: int) -> None:
        """A request begins on this (source) device."""
        with self.lock:
            self.started.add(request)
            self.highest = max(self.highest, request)

    def admit(self, request: int, task: str, src: str) -> None:
        """Record that `task` of `request` arrived from `src`, or raise Refused."""
        with self.lock:
            if request < self.floor or request in self.completed:
                raise Refused("replay", f"request {request} already completed here")
            if self.source and request not in self.started:
                raise Refused("unknown request", f"request {request} was not started on this device")
            if request > self.highest + self.slack:
                raise Refused("out of window", f"request {request} is far beyond {self.highest}")
            if task in self.received.get(request, ()):
                raise Refused("duplicate", f"task {task} of request {request} already arrived")
            mine = self.held.setdefault(src, set())
            if request not in mine and len(mine) >= self.per_peer:
                raise Refused("peer over limit", f"{src} already has {len(mine)} requests held here")
            self.received.setdefault(request, set()).add(task)
            mine.add(request)
            self.highest = max(self.highest, request)

    def finish(self, request: int) -> None:
        """The request is done here: later data for it is a replay."""
        with self.lock:
            self.completed.add(request)
            self.started.discard(request)
            self.received.pop(request, None)
            for mine in self.held.values():
                mine.discard(request)
            while self.floor in self.completed:
                self.completed.discard(self.floor)
                self.floor += 1
            # Bound the bookkeeping even if an id never completes: legitimate ids are never
            # this far behind the newest one.
            old = self.highest - 2 * self.slack
            if old > self.floor:
                self.floor = old
                self.completed = {r for r in self.completed if r >= old}

    def holding(self) -> int:
        with self.lock:
            return len(self.received)
