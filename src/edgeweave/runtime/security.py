"""Cluster membership with ZeroMQ CURVE: only holders of the cluster's keys can join.

A keys folder holds one ZeroMQ certificate pair per member: `coordinator` (the process that runs
`edgeweave run`) and one per device. `NAME.key` is a public key, `NAME.key_secret` its secret key
(mode 0600, in a 0700 folder). Every public key in the folder is a member; every connection is
encrypted and both ends are authenticated:

  worker ROUTER   curve server with its device's key pair; a ZAP handler (one ThreadAuthenticator
                  per zmq Context) admits only member public keys, and the worker learns which
                  member sent each message from the frame's ZAP `User-Id` (the z85 public key).
  DEALER          curve client with its own key pair and the server's public key, looked up in the
                  folder by the peer's device name, so a client also knows it reached the real peer.

Without a keys folder a session still authenticates every connection: it makes ephemeral key
pairs for itself and for every device (`ephemeral_keyrings`, in memory, never in a file) and hands
each local worker its own pair through the worker's stdin. A forger on the same host then cannot
even complete a handshake, let alone pass off data as a member's. Plaintext remains only as the
explicit `--insecure` opt-out, and only on loopback (or inside this host's emulated network
namespaces): nothing unauthenticated is ever exposed to a real network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from edgeweave.errors import UserError

COORDINATOR = "coordinator"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class Keyring:
    """One member's view of the cluster's keys: its own pair and every member's public key."""

    folder: Path | None  # None: ephemeral keys made by a session, never written anywhere
    name: str
    public: bytes  # z85, 40 characters
    secret: bytes
    members: dict[bytes, str]  # z85 public key -> member name

    def public_of(self, name: str) -> bytes:
        """A member's public key (to authenticate the server we connect to)."""
        for key, member in self.members.items():
            if member == name:
                return key
        if self.folder is None:
            raise UserError(f"no key for {name!r} among this session's ephemeral keys")
        path = self.folder / f"{name}{PUBLIC_SUFFIX}"
        raise UserError(
            f"{path}: no public key for {name!r}: create it with `edgeweave keys --out {self.folder} --devices {name}`"
        )

    def member(self, user_id: str | bytes | None) -> str | None:
        """The member a ZAP User-Id (the z85 public key of an authenticated client) belongs to."""
        if user_id is None:
            return None
        key = user_id.encode() if isinstance(user_id, str) else user_id
        return self.members.get(key)

    def to_json(self) -> str:
        """This member's pair and the members' public keys, for a local worker's stdin (one line)."""
        members = {k.decode(): v for k, v in self.members.items()}
        return json.dumps(
            {"name": self.name, "public": self.public.decode(), "secret": self.secret.decode(), "members": members}
        )

    @classmethod
    def from_json(cls, line: str) -> Keyring:
        """The inverse of `to_json`; a UserError when the line is not a well-formed keyring."""
        try:
            d = json.loads(line)
            ring = cls(
                None,
                d["name"],
                d["public"].encode(),
                d["secret"].encode(),
                {k.encode(): v for k, v in d["members"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"malformed keys on stdin: {type(exc).__name__}") from None
        keys = [ring.public, ring.secret, *ring.members]
        if not all(_is_z85_key(k) for k in keys) or zmq.curve_public(ring.secret) != ring.public:
            raise UserError("malformed keys on stdin: not a CURVE key pair")
        if ring.members.get(ring.public) != ring.name:
            raise UserError("malformed keys on stdin: the member's own public key is not listed")
        return ring


def ephemeral_keyrings(names: list[str]) -> dict[str, Keyring]:
    """A fresh CURVE key pair per member (`coordinator` included), in memory only: one session's
    trust. Each member's Keyring holds its own pair and every member's public key."""
    pairs = {name: zmq.curve_keypair() for name in dict.fromkeys([COORDINATOR, *names])}
    members = {public: name for name, (public, _) in pairs.items()}
    return {name: Keyring(None, name, public, secret, dict(members)) for name, (public, secret) in pairs.items()}


# -- key files -------------------------------------------------------------------------------
def check_member_name(name: str) -> str:
    if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
        raise UserError(f"{name!r} cannot name a key: use letters, digits, '_', '-' and '.'")
    return name


def create_keys(folder: Path, names: list[str]) -> list[dict[str, object]]:
    """Create a key pair for each name that has none yet; existing complete pairs are kept.

    The folder becomes private (0700) and secret keys are written under umask 077, so a secret
    key is never readable by others, not even for an instant.
    """
    folder = Path(folder)
    for name in names:
        check_member_name(name)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the keys folder: {exc.strerror or exc}") from exc
    made: list[dict[str, object]] = []
    for name in dict.fromkeys(names):
        public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
        if public.exists() and secret.exists():
            created = False
        elif public.exists() or secret.exists():
            half = public if public.exists() else secret
            raise UserError(f"{half}: only half of {name}'s key pair exists; remove it to create a new pair")
        else:
            old = os.umask(0o077)
            try:
                zmq.auth.create_certificates(str(folder), name)
            finally:
                os.umask(old)
            created = True
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        made.append({"name": name, "public": str(public), "secret": str(secret), "created": created})
    return made


def _read_key_file(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) of a certificate file, with one-line errors that name the file."""
    if not path.exists():
        what = "secret key" if secret else "public key"
        raise UserError(f"{path}: missing {what}: create keys with `edgeweave keys --out {path.parent}`")
    if secret:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise UserError(
                f"{path}: refusing keys with loose permissions (mode {mode:04o}; a secret key must be "
                f"readable by its owner only): run `chmod 600 {path}`"
            )
    try:
        pub, sec = zmq.auth.load_certificate(str(path))
    except PermissionError as exc:
        raise UserError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: malformed key file: {exc}") from exc
    if not _is_z85_key(pub) or (secret and (sec is None or not _is_z85_key(sec))):
        raise UserError(f"{path}: malformed key file: a key must be 40 z85 characters")
    if secret and zmq.curve_public(sec) != pub:
        raise UserError(f"{path}: malformed key file: its public key does not belong to its secret key")
    return pub, sec


def _is_z85_key(key: bytes | None) -> bool:
    if key is None or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def load_keyring(folder: str | Path, name: str) -> Keyring:
    """`name`'s secret key and every member's public key from a keys folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such keys folder: create it with `edgeweave keys --out {folder}`")
    public, secret = _read_key_file(folder / f"{check_member_name(name)}{SECRET_SUFFIX}", secret=True)
    members: dict[bytes, str] = {}
    try:
        files = sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))
    except OSError as exc:
        raise UserError(f"{folder}: cannot list keys: {exc.strerror or exc}") from exc
    for path in files:
        key, _ = _read_key_file(path, secret=False)
        members[key] = path.name.removesuffix(PUBLIC_SUFFIX)
    if members.get(public) != name:
        raise UserError(f"{folder / (name + PUBLIC_SUFFIX)}: missing or not {name}'s public key")
    return Keyring(folder, name, public, secret, members)


# -- sockets ---------------------------------------------------------------------------------
class _Members:
    """ZAP callback: a client is admitted when its public key is a member's."""

    def __init__(self, keyring: Keyring):
        self.keys = frozenset(keyring.members)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


_auth_lock = threading.Lock()
_authenticators: dict[int, tuple[zmq.Context, ThreadAuthenticator]] = {}


def start_authenticator(ctx: zmq.Context, keyring: Keyring) -> ThreadAuthenticator:
    """The context's ZAP handler, started once. Without one libzmq would admit ANY client key."""
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is not None and entry[0] is ctx:
            return entry[1]
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=_Members(keyring))
        _authenticators[id(ctx)] = (ctx, auth)
        return auth


def stop_authenticator(ctx: zmq.Context) -> None:
    """Stop the context's ZAP handler (before the context is destroyed)."""
    with _auth_lock:
        entry = _authenticators.pop(id(ctx), None)
    if entry is not None and entry[0] is ctx:
        entry[1].stop()


def curve_server(sock: zmq.Socket, keyring: Keyring) -> None:
    """Make a (not yet bound) socket a CURVE server that admits only the keyring's members."""
    start_authenticator(sock.context, keyring)
    sock.curve_secretkey = keyring.secret
    sock.curve_publickey = keyring.public
    sock.curve_server = True


def curve_client(sock: zmq.Socket, keyring: Keyring, server: str) -> None:
    """Make a (not yet connected) socket a CURVE client of member `server`."""
    sock.curve_secretkey = keyring.secret
    sock.curve_publickey = keyring.public
    sock.curve_serverkey = keyring.public_of(server)


@contextmanager
def auth_failures(sock: zmq.Socket):
    """A monitor socket reporting failed handshakes of `sock` (to tell 'refused' from 'absent')."""
    events = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    monitor = sock.get_monitor_socket(events)
    try:
        yield monitor
    finally:
        sock.disable_monitor()
        monitor.close(0)


# -- where plaintext is acceptable -----------------------------------------------------------
def endpoint_host(endpoint: str) -> str | None:
    """The host of a `tcp://HOST:PORT` endpoint (None for other transports)."""
    if not endpoint.startswith("tcp://"):
        return None
    rest = endpoint.removeprefix("tcp://").rsplit(";", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    """Whether an endpoint is reachable only from this host (loopback TCP, ipc, inproc)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or a hostname: assume it reaches the network


def check_listen(listen: str, keys: Path | None, insecure: bool) -> None:
    """The worker's rule: plaintext only on loopback; anything reachable from a network needs keys."""
    if keys is not None and insecure:
        raise UserError("--keys and --insecure contradict each other: give one")
    if keys is not None:
        return
    if insecure and not is_loopback(listen):
        raise UserError(
            f"--insecure is only allowed on loopback addresses, not {listen}: create keys with "
            "`edgeweave keys --out DIR` and start the worker with --keys DIR"
        )
    if not is_loopback(listen):
        raise UserError(
            f"refusing to listen on {listen} without --keys: anyone who can reach it could deploy work "
            "here and read the data it computes; create the cluster's keys with "
            "`edgeweave keys --out DIR --cluster C.yaml`, copy DIR to every device and pass --keys DIR"
        )
