"""Local worker processes: start one per device, learn its endpoint, never leave orphans.

A child lives as long as its coordinator's process: it holds the read end of a pipe whose write
end only the coordinator holds (its stdin) and exits when the pipe reports end-of-file, which the
kernel does when that process dies however it dies. A pipe belongs to the process, not to a
thread: PR_SET_PDEATHSIG, used before, fires when the *thread* that started the child exits, so
a session made in a short-lived thread killed its own workers (issue 13, finding 8).
`close()` ends them in the normal case.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeweave.errors import UserError
from edgeweave.runtime.security import Keyring


@dataclass
class LocalWorker:
    device: str
    proc: subprocess.Popen
    endpoint: str
    log_path: str

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def last_log_line(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return lines[-1] if lines else ""
        except OSError:
            return ""

    def stop(self, timeout: float = 3.0) -> None:
        if self.proc.stdin is not None:  # end-of-file: the worker exits even if SIGTERM is lost
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


@dataclass
class PendingWorker:
    """A started worker process that has not yet said which endpoint it bound."""

    device: str
    listen: str
    proc: subprocess.Popen
    log_path: str

    def wait_ready(self, timeout_s: float = 60.0) -> LocalWorker:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(b"READY "):
                    return LocalWorker(self.device, self.proc, line.split()[1].decode(), self.log_path)
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        worker = LocalWorker(self.device, self.proc, "", self.log_path)
        reason = worker.last_log_line() or f"no READY line within {timeout_s:.0f} s"
        worker.stop()
        raise UserError(f"device {self.device}: worker did not start on {self.listen}: {reason}")


def launch_worker(
    device: str,
    listen: str,
    prefix: list[str] | None = None,
    keys: Path | None = None,
    max_frame_bytes: int | None = None,
    keyring: Keyring | None = None,
    memory_limit: int | None = None,
) -> PendingWorker:
    """Start `python -m edgeweave.runtime DEVICE LISTEN [--keys DIR | --keys-stdin] [--max-frame-bytes N]`;
    several can start at once. A `keyring` (a session's ephemeral keys) goes to the child on its
    stdin, one line, never on the command line or in the environment (both readable by others).
    `memory_limit` (bytes) has the kernel hold the child to that much data memory (RLIMIT_DATA):
    a local process standing in for a small device cannot use more than the device has."""
    if keys is not None and keyring is not None:
        raise ValueError("give a keys folder or an ephemeral keyring, not both")
    log = tempfile.NamedTemporaryFile(prefix=f"edgeweave-{device}-", suffix=".log", delete=False)
    cmd = [*(prefix or []), sys.executable, "-m", "edgeweave.runtime", device, listen, "--parent-pipe"]
    if keys is not None:
        cmd += ["--keys", str(keys)]
    if keyring is not None:
        cmd += ["--keys-stdin"]
    if max_frame_bytes is not None:
        cmd += ["--max-frame-bytes", str(max_frame_bytes)]
    if memory_limit is not None:
        cmd += ["--memory-limit", str(int(memory_limit))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.PIPE,  # kept open: its end-of-file tells the child this process is gone
        env=env,
    )
    log.close()
    if keyring is not None:
        try:
            proc.stdin.write(keyring.to_json().encode() + b"\n")
            proc.stdin.flush()
        except OSError:  # the child died at start: wait_ready reports its log
            pass
    return PendingWorker(device, listen, proc, log.name)


def hold_memory(limit: int) -> None:
    """Have the kernel refuse this process more than `limit` bytes of data memory.

    RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts every private writable mapping (heap,
    anonymous mmap, thread stacks), which is what holding weights and activations costs, and not
    the address space torch and glibc reserve without touching (RLIMIT_AS would fail on those
    reservations long before memory runs out). No cgroup is needed, so it works unprivileged.
    An allocation past the limit fails (MemoryError, or a torch allocation error) in this process;
    nothing else on the host is affected.

    glibc's mmap threshold is fixed too (at its default, 128 KiB): left dynamic, it rises after
    the first large free, and the deploy message's 256 KiB frames then come from the heap, which
    keeps their pages after they are freed, so a stage cost its weights twice for good, not
    only while its deploy message was held.
    """
    import ctypes
    import ctypes.util
    import resource

    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_MMAP_THRESHOLD = 128 << 10


def _exit_at_eof() -> None:
    """Block on stdin until its end-of-file (the coordinator's process is gone), then exit."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)


def worker_main(argv: list[str]) -> None:
    """Entry of a worker process; SIGTERM ends it quietly.

    The coordinator that starts it decides where it listens (loopback, or an emulated namespace
    of this host) and whether it uses keys, so the listen policy of `edgeweave worker` is not
    repeated here.
    """
    import argparse

    from edgeweave.runtime.worker import DEFAULT_MAX_FRAME, serve

    parser = argparse.ArgumentParser(prog="python -m edgeweave.runtime")
    parser.add_argument("device")
    parser.add_argument("listen", help="tcp://HOST:PORT")
    parser.add_argument("--keys", type=Path, default=None)
    parser.add_argument("--keys-stdin", action="store_true", help="read a session's ephemeral keys from stdin")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME)
    parser.add_argument("--parent-pipe", action="store_true", help="exit when stdin reaches end-of-file")
    parser.add_argument("--memory-limit", type=int, default=None, help="RLIMIT_DATA in bytes (see hold_memory)")
    args = parser.parse_args(argv)
    if args.memory_limit is not None:
        hold_memory(args.memory_limit)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def announce(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        keyring = Keyring.from_json(sys.stdin.readline()) if args.keys_stdin else None
        if keyring is not None and keyring.name != args.device:
            raise UserError(f"the keys on stdin are {keyring.name!r}'s, not {args.device!r}'s")
        if args.parent_pipe:
            threading.Thread(target=_exit_at_eof, name="parent-pipe", daemon=True).start()
        serve(
            args.listen,
            args.device,
            announce=announce,
            keys=args.keys,
            max_frame_bytes=args.max_frame_bytes,
            keyring=keyring,
            persistent=False,
        )
    except UserError as exc:  # e.g. a key file with loose permissions
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
    except Exception as exc:  # e.g. the port is in use: one line on stderr, non-zero exit
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        raise SystemExit(2) from None
