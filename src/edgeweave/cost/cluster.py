"""The cluster: devices (relative speed, memory, power) and the links between them.

This implements the "Cluster YAML" contract of the design notes. Planners, the simulator and
the runtime all read the same `Cluster`, so every question about a device or a link goes through
the lookups here (`link`, `transfer_time`, `occupancy`), never through the raw YAML.

Two rules shape the code:

- A cluster file is written by hand, so every mistake becomes ONE line that names the file, the
  field and the problem (`examples/x.yaml: devices.robot.memory: cannot parse ...`). Pydantic
  does the checking; `_format_error` turns its structured error into that line, and cluster-level
  checks raise `_problem(path, text)` so that they carry their own field path.
- Every ordered pair of distinct devices must resolve to a link when the file is loaded, so a
  planner can never fail half-way with "no link between a and b".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edgeweave.cost.linkmodel import link_occupancy_s, transfer_s
from edgeweave.cost.units import (
    exact_bandwidth,
    exact_bytes,
    exact_duration,
    parse_bandwidth,
    parse_bytes,
    parse_duration,
)
from edgeweave.errors import UserError

DEFAULT_LINK = "default"
DEVICE_KEYS = ("speed", "memory", "power", "address", "profile", "kind")

# Names are joined by "-" and "->" in link keys and typed on command lines: keep them plain.
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*$")

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# Errors with a field path


def _problem(path: str, problem: str) -> PydanticCustomError:
    """A validation error that knows its field path relative to where it is raised."""
    return PydanticCustomError("edgeweave", "{path}: {problem}", {"path": path, "problem": problem})


def _check_keys(data: Any, yaml_keys: tuple[str, ...], python_keys: tuple[str, ...] = ()) -> None:
    """Refuse unknown keys with the list of known ones (pydantic's own message lists none)."""
    if not isinstance(data, Mapping):
        return
    for key in data:
        if key not in yaml_keys and key not in python_keys:
            raise _problem(str(key), f"unknown key (expected one of: {', '.join(yaml_keys)})")


def _take_unit_field(data: dict, yaml_key: str, python_key: str, parse) -> dict:
    """Move `yaml_key: "50Mbps"` to `python_key: 50e6`; Python callers pass `python_key` directly.

    The two spellings are kept apart so that `Link(bandwidth_bps=50e6)` takes a number while the
    YAML `bandwidth: 50` is refused for lacking a unit.
    """
    if yaml_key not in data:
        return data
    if python_key in data:
        raise _problem(yaml_key, f"give either {yaml_key} or {python_key}, not both")
    data = dict(data)
    try:
        data[python_key] = parse(data.pop(yaml_key))
    except ValueError as exc:
        raise _problem(yaml_key, str(exc)) from None
    return data


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Errors are reported in the words of the cluster file, which spells these with units.
_YAML_NAMES = {"memory_bytes": "memory", "bandwidth_bps": "bandwidth", "latency_s": "latency"}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _describe(err: Mapping[str, Any]) -> tuple[list[str], str]:
    """Field path and a plain-words problem for one pydantic error."""
    path = [_YAML_NAMES.get(str(part), str(part)) for part in err["loc"]]
    kind, ctx, got = err["type"], err.get("ctx") or {}, _short_repr(err.get("input"))
    if kind == "edgeweave":
        if ctx.get("path"):
            path.append(str(ctx["path"]))
        return path, str(ctx["problem"])
    problems = {
        "missing": "is required",
        "extra_forbidden": "unknown key",
        "greater_than": f"must be > {_number(ctx.get('gt'))}, got {got}",
        "greater_than_equal": f"must be >= {_number(ctx.get('ge'))}, got {got}",
        "finite_number": f"must be a finite number, got {got}",
        "float_parsing": f"must be a number, got {got}",
        "float_type": f"must be a number, got {got}",
        "int_parsing": f"must be a whole number, got {got}",
        "int_type": f"must be a whole number, got {got}",
        "string_type": f"must be text, got {got}",
        "dict_type": f"must be a mapping, got {got}",
        "model_type": f"must be a mapping, got {got}",
        "model_attributes_type": f"must be a mapping, got {got}",
    }
    if kind in problems:
        return path, problems[kind]
    if kind == "value_error" and "error" in ctx:
        return path, str(ctx["error"])
    message = str(err.get("msg", kind))
    return path, message[:1].lower() + message[1:]


def _format_error(exc: ValidationError) -> str:
    """The first problem as `field.path: problem`, plus how many more there are."""
    errors = exc.errors()
    path, problem = _describe(errors[0])
    text = f"{'.'.join(path)}: {problem}" if path else problem
    if len(errors) > 1:
        more = len(errors) - 1
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return text


# ---------------------------------------------------------------------------------------------
# Models


class PowerModel(BaseModel):
    """Power of one device: idle, busy (computing) and radio (sending) in watts.

    The radio model is P = radio_w_per_mbps * Mbps + radio_base_w while sending or receiving
    (see cost/energy.py for how a timeline becomes joules); the defaults
    are the WiFi uplink fit of Huang et al. (MobiSys 2012) that Hybrid-Parallel uses. idle_w and
    busy_w may be left out: a cluster without energy numbers is still good for latency, and
    `require_complete` complains only when energy is actually asked for.
    """

    model_config = _MODEL_CONFIG

    idle_w: float | None = Field(None, ge=0)
    busy_w: float | None = Field(None, ge=0)
    radio_w_per_mbps: float = Field(0.283, ge=0)
    radio_base_w: float = Field(0.133, ge=0)
    # Receiving costs radio_w_per_mbps too unless this is given (Huang et al.'s downlink: 0.137).
    radio_rx_w_per_mbps: float | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        _check_keys(data, ("idle_w", "busy_w", "radio_w_per_mbps", "radio_base_w", "radio_rx_w_per_mbps"))
        return data

    def require_complete(self, device_name: str) -> PowerModel:
        """Raise a UserError naming the device and field when energy cannot be computed."""
        for field in ("idle_w", "busy_w"):
            value = getattr(self, field)
            if value is None:
                raise UserError(f"device {device_name!r}: power.{field} is missing (energy needs idle_w and busy_w)")
            if value < 0:
                raise UserError(f"device {device_name!r}: power.{field} must be >= 0, got {value}")
        return self


class Device(BaseModel):
    """One device. `speed` is relative to the profile's reference device: time = time_s / speed.

    YAML spells memory with a unit (`memory: 4GiB`, or a plain int of bytes); Python passes
    `memory_bytes`. `address` (e.g. `tcp://10.0.0.2:5555`) is where the runtime reaches an
    already running worker; without it the runtime starts a local one. `profile` names a profile
    JSON measured on this device (`edgeweave profile` there): its per-node times replace
    time_s / speed wherever per-node times are read (`Cluster.device_times`), since one speed
    factor cannot say that a GPU board speeds up convolutions far more than element-wise ops;
    `speed` stays the one-number summary for whatever scales a single figure.
    """

    model_config = _MODEL_CONFIG

    name: str
    speed: float = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    power: PowerModel | None = None
    address: str | None = None
    profile: str | None = None  # a profile JSON measured on this device; relative to the cluster file

    @model_validator(mode="before")
    @classmethod
    def _yaml_spelling(cls, data: Any) -> Any:
        _check_keys(data, DEVICE_KEYS, ("name", "memory_bytes"))
        if isinstance(data, Mapping):
            data = _take_unit_field(dict(data), "memory", "memory_bytes", parse_bytes)
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _DEVICE_NAME.match(name) or name == DEFAULT_LINK:
            raise ValueError(_bad_name_message(name))
        return name

    @field_validator("speed", mode="before")
    @classmethod
    def _no_bool_speed(cls, speed: Any) -> Any:
        # YAML reads `yes` as True, which pydantic would happily turn into speed 1.0.
        if isinstance(speed, bool):
            raise ValueError(f"must be a number, got {speed!r}")
        return speed

    @field_validator("profile")
    @classmethod
    def _non_empty_profile(cls, profile: str | None) -> str | None:
        if profile is not None and not profile.strip():
            raise ValueError("must name a profile JSON file, or leave it out")
        return profile

    @field_validator("address")
    @classmethod
    def _non_empty_address(cls, address: str | None) -> str | None:
        if address is not None and not address.strip():
            raise ValueError("must not be empty (e.g. tcp://10.0.0.2:5555), or leave it out")
        return address

    def require_power(self) -> PowerModel:
        """The complete power model, or a UserError saying what to add to the cluster file."""
        if self.power is None:
            raise UserError(f"device {self.name!r} has no power model (add power: {{idle_w: ..., busy_w: ...}})")
        return self.power.require_complete(self.name)


class Link(BaseModel):
    """A directed link's bandwidth (bits/s) and latency (s); YAML: `{bandwidth: 50Mbps, latency: 2ms}`.

    `trace` is an optional bandwidth trace file, kept as written; `Cluster.trace_path` resolves it
    relative to the cluster file's folder.
    """

    model_config = _MODEL_CONFIG

    bandwidth_bps: float = Field(gt=0)
    latency_s: float = Field(0.0, ge=0)
    trace: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_spelling(cls, data: Any) -> Any:
        _check_keys(data, ("bandwidth", "latency", "trace"), ("bandwidth_bps", "latency_s"))
        if isinstance(data, Mapping):
            data = _take_unit_field(dict(data), "bandwidth", "bandwidth_bps", parse_bandwidth)
            data = _take_unit_field(data, "latency", "latency_s", parse_duration)
            if "bandwidth_bps" not in data:
                raise _problem("bandwidth", "is required (e.g. bandwidth: 50Mbps)")
        return data

    def transfer_time(self, nbytes: float) -> float:
        """latency + bits / bandwidth: the time for `nbytes` to arrive whole on an idle link."""
        return transfer_s(nbytes, self.bandwidth_bps, self.latency_s)

    def occupancy(self, nbytes: float) -> float:
        """bits / bandwidth: how long a message holds the link (latency does not; see cost/linkmodel.py)."""
        return link_occupancy_s(nbytes, self.bandwidth_bps)


def _bad_name_message(name: str) -> str:
    if name == DEFAULT_LINK:
        return f"{name!r} cannot be a device name (it is the default link's key)"
    return f"{name!r} is not a valid device name (use letters, digits, '_', '.' and single '-')"


# ---------------------------------------------------------------------------------------------
# Link keys: "default", "a-b" (both directions), "a->b" (one direction)


def _parse_link_key(key: str, names: Iterable[str]) -> tuple[str, str, bool]:
    """(from, to, directed) for a link key; ValueError explaining a key that names no pair.

    Device names may contain "-" (`minnow-1`), so `a-b` is split at whichever "-" leaves a
    device name on both sides; more than one such split is ambiguous.
    """
    known = set(names)
    listing = ", ".join(names)
    if "->" in key:
        a, _, b = key.partition("->")
        for side in (a, b):
            if side not in known:
                raise ValueError(f"{side!r} is not a device (devices: {listing})")
        pair = (a, b, True)
    else:
        splits = [(key[:i], key[i + 1 :]) for i, ch in enumerate(key) if ch == "-"]
        matches = [(a, b) for a, b in splits if a in known and b in known]
        if not matches:
            if not splits:
                raise ValueError("a link key is 'default', 'a-b' (both directions) or 'a->b' (one direction)")
            raise ValueError(f"does not name two devices joined by '-' (devices: {listing})")
        if len(matches) > 1:
            options = " or ".join(f"{a!r} and {b!r}" for a, b in matches)
            raise ValueError(f"ambiguous: could join {options}; write it as 'a->b' and 'b->a'")
        pair = (*matches[0], False)
    if pair[0] == pair[1]:
        raise ValueError("a link joins two different devices")
    return pair


def _resolve_links(names: list[str], links: Mapping[str, Link]) -> dict[tuple[str, str], Link]:
    """Explicit links per ordered pair (the default is not expanded).

    Precedence for the direction a -> b: `a->b`, then `a-b`, then `b-a`. So `a-b` alone covers
    both directions, and when both `a-b` and `b-a` are given each sets its own direction.
    """
    ranked: dict[tuple[str, str], tuple[int, Link]] = {}

    def put(pair: tuple[str, str], rank: int, link: Link) -> None:
        if pair not in ranked or ranked[pair][0] < rank:
            ranked[pair] = (rank, link)

    for key, link in links.items():
        if key == DEFAULT_LINK:
            continue
        try:
            a, b, directed = _parse_link_key(key, names)
        except ValueError as exc:
            raise _problem(f"links.{key}", str(exc)) from None
        if directed:
            put((a, b), 3, link)
        else:
            put((a, b), 2, link)
            put((b, a), 1, link)
    return {pair: link for pair, (_, link) in ranked.items()}


# ---------------------------------------------------------------------------------------------
# The cluster


class _NoDuplicateKeysLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a repeated device name would vanish silently."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_NoDuplicateKeysLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoDuplicateKeysLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{origin}: {where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{origin}: invalid YAML: {exc}") from None


class Cluster(BaseModel):
    """Devices (in the order of the file), links, and the `source` device.

    The source is where the input is produced and where the output must end up. Link keys are
    `default`, `a-b` and `a->b` (see `_resolve_links` for precedence). `kinds` (YAML only) gives
    defaults that a device names with `kind: NAME` (speed, memory, power, profile: every device
    of a kind measured once); the device's own fields win, and the expanded devices are what
    the cluster holds. Build one with
    `Cluster.load(path)` or `Cluster.from_dict(data)` to get one-line `UserError`s; the plain
    constructor raises pydantic's `ValidationError`.
    """

    model_config = _MODEL_CONFIG

    name: str | None = None
    description: str | None = None
    source: str
    devices: dict[str, Device]
    links: dict[str, Link] = Field(default_factory=dict)

    # Folder that relative paths in the file (link traces) are resolved against.
    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _name_devices(cls, data: Any) -> Any:
        """Give each device its key as name (YAML does not repeat it) and check the names."""
        _check_keys(data, ("name", "description", "source", "kinds", "devices", "links"))
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if data.get("links", {}) is None:
            data["links"] = {}
        kinds = data.pop("kinds", None) or {}
        if not isinstance(kinds, Mapping):
            raise _problem("kinds", "expected a mapping of kind names to device fields")
        if isinstance(data.get("devices"), Mapping):
            data["devices"] = _named_devices(_with_kinds(data["devices"], kinds))
        return data

    @model_validator(mode="after")
    def _every_pair_has_a_link(self) -> Cluster:
        if not self.devices:
            raise _problem("devices", "at least one device is needed")
        if self.source not in self.devices:
            raise _problem("source", f"{self.source!r} is not a device (devices: {', '.join(self.devices)})")
        table = _resolve_links(self.device_names, self.links)
        if DEFAULT_LINK in self.links:
            return self
        missing = [(a, b) for a in self.devices for b in self.devices if a != b and (a, b) not in table]
        if missing:
            a, b = missing[0]
            more = f" ({len(missing)} ordered pairs lack a link)" if len(missing) > 1 else ""
            raise _problem(
                "links", f"no link from {a} to {b} and no default (add links.{a}-{b} or links.default){more}"
            )
        return self

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<string>") -> Cluster:
        """Validate a parsed cluster description; problems raise a one-line UserError."""
        if not isinstance(data, Mapping):
            raise UserError(f"{origin}: expected a mapping with source, devices and links, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise UserError(f"{origin}: {_format_error(exc)}") from None

    @classmethod
    def from_yaml(cls, text: str, origin: str = "<string>") -> Cluster:
        """Parse YAML text (duplicate keys are refused) and validate it."""
        data = _parse_yaml(text, origin)
        if data is None:
            raise UserError(f"{origin}: the cluster description is empty (expected source, devices, links)")
        return cls.from_dict(data, origin)

    @classmethod
    def load(cls, path: str | Path) -> Cluster:
        """Read a cluster YAML file; relative paths inside it resolve against its folder."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory, expected a cluster YAML file") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a UTF-8 text file") from None
        except OSError as exc:
            raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
        cluster = cls.from_yaml(text, origin=str(path))
        cluster._base_dir = path.parent.absolute()
        return cluster

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (units spelled exactly), such that `from_dict(to_dict())` == self."""
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.description is not None:
            out["description"] = self.description
        out["source"] = self.source
        out["devices"] = {name: _device_to_dict(device) for name, device in self.devices.items()}
        if self.links:
            out["links"] = {key: _link_to_dict(link) for key, link in self.links.items()}
        return out

    def __eq__(self, other: object) -> bool:
        # Compare the description only, not where it was loaded from or cached lookups.
        if not isinstance(other, Cluster):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # dict fields: not hashable

    # -- lookups -------------------------------------------------------------------------------

    @property
    def device_names(self) -> list[str]:
        """Device names in the order of the file."""
        return list(self.devices)

    @cached_property
    def _pairs(self) -> dict[tuple[str, str], Link]:
        return _resolve_links(self.device_names, self.links)

    def device(self, name: str) -> Device:
        """The device called `name`, or a UserError listing the known ones."""
        try:
            return self.devices[name]
        except KeyError:
            raise UserError(f"unknown device {name!r} (devices: {', '.join(self.devices)})") from None

    def link(self, a: str, b: str) -> Link:
        """The link used to send from `a` to `b`: the explicit one for the pair, else the default."""
        if a == b:
            raise ValueError(f"link({a!r}, {b!r}): a device needs no link to itself")
        self.device(a)
        self.device(b)
        link = self._pairs.get((a, b)) or self.links.get(DEFAULT_LINK)
        if link is None:  # unreachable for a validated cluster, kept for clarity
            raise UserError(f"no link between {a} and {b}")
        return link

    def transfer_time(self, a: str, b: str, nbytes: float) -> float:
        """Seconds to move `nbytes` from `a` to `b`: latency + bits / bandwidth, 0 on one device."""
        if a == b:
            self.device(a)
            return 0.0
        return self.link(a, b).transfer_time(nbytes)

    def occupancy(self, a: str, b: str, nbytes: float) -> float:
        """Seconds `nbytes` hold the a -> b link (bits / bandwidth, no latency), 0 on one device."""
        if a == b:
            self.device(a)
            return 0.0
        return self.link(a, b).occupancy(nbytes)

    def trace_path(self, a: str, b: str) -> Path | None:
        """The a -> b link's trace file, resolved against the cluster file's folder (or cwd)."""
        trace = self.link(a, b).trace
        if trace is None:
            return None
        path = Path(trace)
        return path if path.is_absolute() else (self._base_dir or Path.cwd()) / path

    def profile_path(self, name: str) -> Path | None:
        """The file of device `name`'s own profile, resolved against the cluster file's folder."""
        given = self.device(name).profile
        if given is None:
            return None
        path = Path(given).expanduser()
        return path if path.is_absolute() else (self._base_dir or Path.cwd()) / path

    def device_times(self, profile: Any, names: Iterable[str]) -> dict[str, Any]:
        """Per-node times of each device in `names` that has its own profile (name -> array).

        The device's profile must be of the same model as `profile` (the one planned with): same
        node count and names in the same order, else a one-line UserError naming the device and
        the file. Planners call this once, through `PipelineModel.build`.
        """
        from edgeweave.cost.profile import Profile

        out: dict[str, Any] = {}
        loaded: dict[Path, Profile] = {}
        want = [n.name for n in profile.nodes]
        for name in names:
            path = self.profile_path(name)
            if path is None:
                continue
            if path not in loaded:
                try:
                    loaded[path] = Profile.load(path)
                except UserError as exc:
                    raise UserError(f"device {name}: profile {exc}") from None
            own = loaded[path]
            got = [n.name for n in own.nodes]
            if got != want:
                if len(got) != len(want):
                    why = f"{len(got)} nodes, the model's profile has {len(want)}"
                else:
                    i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
                    why = f"node {i} is {got[i]!r}, the model's is {want[i]!r}"
                raise UserError(
                    f"device {name}: profile {path} is of another model or capture ({own.model!r}, {why}); "
                    f"measure it on that device with `edgeweave profile {profile.model}`"
                )
            out[name] = own.times
        return out

    def is_uniform(self) -> bool:
        """True when every ordered pair of distinct devices has the same bandwidth and latency."""
        names = self.device_names
        seen = {(self.link(a, b).bandwidth_bps, self.link(a, b).latency_s) for a in names for b in names if a != b}
        return len(seen) <= 1

    def subset(self, names: Iterable[str], source: str | None = None) -> Cluster:
        """The cluster restricted to `names` (kept in file order) with the links among them.

        The source stays the same unless `source` names another device of the subset.
        """
        wanted = list(names)
        for name in wanted:
            self.device(name)
        if len(set(wanted)) != len(wanted):
            raise UserError(f"subset names a device twice: {', '.join(wanted)}")
        source = self.source if source is None else source
        if source not in wanted:
            raise UserError(f"the subset {', '.join(wanted)} does not contain its source {source!r}")
        keep = set(wanted)
        links = {key: link for key, link in self.links.items() if self._key_within(key, keep)}
        devices = {name: device for name, device in self.devices.items() if name in keep}
        sub = Cluster(name=self.name, description=self.description, source=source, devices=devices, links=links)
        sub._base_dir = self._base_dir
        return sub

    def _key_within(self, key: str, keep: set[str]) -> bool:
        if key == DEFAULT_LINK:
            return True
        a, b, _ = _parse_link_key(key, self.device_names)
        return a in keep and b in keep


def _named_devices(devices: Mapping[Any, Any]) -> dict[str, Any]:
    """Devices with their YAML key filled in as `name`; bad names become path-carrying errors."""
    named: dict[str, Any] = {}
    for key, spec in devices.items():
        if not isinstance(key, str):
            raise _problem(f"devices.{key}", f"device names are text; quote it: '{key}'")
        if not _DEVICE_NAME.match(key) or key == DEFAULT_LINK:
            raise _problem(f"devices.{key}", _bad_name_message(str(key)))
        if isinstance(spec, Mapping):
            if "name" in spec and spec["name"] != key:
                raise _problem(f"devices.{key}.name", "a device's name is its key under devices; remove it")
            spec = {**spec, "name": key}
        elif isinstance(spec, Device) and spec.name != key:
            raise _problem(f"devices.{key}", f"the Device is named {spec.name!r}, not {key!r}")
        named[key] = spec
    return named


def _with_kinds(devices: Mapping[Any, Any], kinds: Mapping[Any, Any]) -> dict[Any, Any]:
    """Devices with the fields of their `kind` filled in (a device's own fields win)."""
    for kname, spec in kinds.items():
        if not isinstance(spec, Mapping):
            raise _problem(f"kinds.{kname}", "expected device fields (speed, memory, power, profile)")
        for key in spec:
            if key not in DEVICE_KEYS or key == "kind":
                raise _problem(f"kinds.{kname}.{key}", "unknown key (expected one of: speed, memory, power, profile)")
    out: dict[Any, Any] = {}
    for name, spec in devices.items():
        if isinstance(spec, Mapping) and "kind" in spec:
            kind = spec["kind"]
            if kind not in kinds:
                known = ", ".join(map(str, kinds)) or "none defined"
                raise _problem(f"devices.{name}.kind", f"unknown kind {kind!r} (kinds: {known})")
            spec = {**kinds[kind], **{k: v for k, v in spec.items() if k != "kind"}}
        out[name] = spec
    return out


def _device_to_dict(device: Device) -> dict[str, Any]:
    out: dict[str, Any] = {"speed": device.speed, "memory": exact_bytes(device.memory_bytes)}
    if device.power is not None:
        out["power"] = device.power.model_dump(exclude_none=True)
    if device.address is not None:
        out["address"] = device.address
    if device.profile is not None:
        out["profile"] = device.profile
    return out


def _link_to_dict(link: Link) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bandwidth": exact_bandwidth(link.bandwidth_bps),
        "latency": exact_duration(link.latency_s),
    }
    if link.trace is not None:
        out["trace"] = link.trace
    return out


# ---------------------------------------------------------------------------------------------
# A cluster as JSON (`edgeweave cluster show` prints it: cli/cluster_cmd.py)


def cluster_summary(cluster: Cluster) -> dict[str, Any]:
    """JSON-able view: devices in file order and the resolved link of every ordered pair."""
    names = cluster.device_names
    devices = {
        name: {
            "speed": device.speed,
            "memory_bytes": device.memory_bytes,
            "power": device.power.model_dump() if device.power is not None else None,
            "address": device.address,
            "profile": str(cluster.profile_path(name)) if device.profile is not None else None,
        }
        for name, device in cluster.devices.items()
    }
    links = {
        a: {
            b: {"bandwidth_bps": cluster.link(a, b).bandwidth_bps, "latency_s": cluster.link(a, b).latency_s}
            for b in names
            if b != a
        }
        for a in names
    }
    return {"name": cluster.name, "source": cluster.source, "devices": devices, "links": links}
