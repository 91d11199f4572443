"""The cluster description: units, link resolution, one-line errors, and the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgeweave.cost.cluster import Cluster, Device, Link, PowerModel, cluster_summary
from edgeweave.cost.units import (
    exact_bandwidth,
    exact_bytes,
    exact_duration,
    format_bandwidth,
    format_bytes,
    format_duration,
    parse_bandwidth,
    parse_bytes,
    parse_duration,
)
from edgeweave.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "clusters"


def two(links: str = "  a-b: {bandwidth: 50Mbps, latency: 2ms}") -> str:
    """A two-device cluster (a, b) with the given `links:` body."""
    devices = "devices:\n  a: {speed: 1, memory: 1GiB}\n  b: {speed: 2, memory: 2GiB}\n"
    return f"source: a\n{devices}links:\n{links}\n"


# ---------------------------------------------------------------------------------------------
# units


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("50Mbps", 50e6),
        ("50 Mbps", 50e6),
        ("50mbps", 50e6),
        ("1Gbps", 1e9),
        ("1.5 GBPS", 1.5e9),
        ("100Kbps", 1e5),
        ("9600bps", 9600.0),
        ("0.1Gbps", 1e8),
    ],
)
def test_parse_bandwidth(text: str, bps: float) -> None:
    assert parse_bandwidth(text) == bps


@pytest.mark.parametrize("bad", ["50", 50, "fast", "50 Mb", "-5Mbps", "50MBps", "", "Mbps"])
def test_parse_bandwidth_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="bandwidth|bytes per second"):
        parse_bandwidth(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("4GiB", 4 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("1KiB", 1024),
        ("1TiB", 2**40),
        ("1.5KiB", 1536),
        ("2GB", 2 * 10**9),
        ("3kb", 3000),
        ("10MB", 10**7),
        ("100B", 100),
        (4096, 4096),
    ],
)
def test_parse_bytes(text: str | int, nbytes: int) -> None:
    assert parse_bytes(text) == nbytes
    assert isinstance(parse_bytes(text), int)


@pytest.mark.parametrize("bad", ["4 gigs", "4096", "GiB", -1, True, "-1GiB"])
def test_parse_bytes_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(bad)  # type: ignore[arg-type]


def test_parse_bytes_error_message_suggests_units() -> None:
    with pytest.raises(ValueError) as info:
        parse_bytes("4 gigs")
    assert str(info.value) == "cannot parse '4 gigs' as a size (use e.g. 512MiB, 4GiB)"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2ms", 0.002),
        ("2 ms", 0.002),
        ("1s", 1.0),
        ("100us", 1e-4),
        ("100µs", 1e-4),
        ("5ns", 5e-9),
        ("0.1ms", 1e-4),
        ("3MS", 0.003),
        ("0", 0.0),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2", 2, "2 minutes", "ms", "-1ms"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_format_for_display() -> None:
    assert format_bandwidth(50e6) == "50 Mbps"
    assert format_bandwidth(1e9) == "1 Gbps"
    assert format_bandwidth(1.5e9) == "1.5 Gbps"
    assert format_bytes(4 * 2**30) == "4.0 GiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_duration(0.002) == "2.0 ms"
    assert format_duration(1e-4) == "100.0 us"
    assert format_duration(1.5) == "1.5 s"
    assert format_duration(0) == "0 s"


@pytest.mark.parametrize("bps", [50e6, 1e9, 47.6e6, 123456789.0, 1.0, 0.5, 1 / 3])
def test_exact_bandwidth_round_trips(bps: float) -> None:
    assert parse_bandwidth(exact_bandwidth(bps)) == bps


@pytest.mark.parametrize("seconds", [0.0, 0.002, 0.003, 1e-4, 1.5, 1e-9, 1 / 3])
def test_exact_duration_round_trips(seconds: float) -> None:
    assert parse_duration(exact_duration(seconds)) == seconds


def test_exact_spellings_are_short() -> None:
    assert exact_bandwidth(50e6) == "50Mbps"
    assert exact_duration(0.002) == "2ms"
    assert exact_bytes(4 * 2**30) == "4GiB"
    assert exact_bytes(1000) == 1000


# ---------------------------------------------------------------------------------------------
# the shipped examples


@pytest.mark.parametrize("name", ["robot-server", "edgepipe-16", "home-4"])
def test_every_example_loads(name: str) -> None:
    cluster = Cluster.load(EXAMPLES / f"{name}.yaml")
    for a in cluster.device_names:
        for b in cluster.device_names:
            if a != b:
                assert cluster.link(a, b).bandwidth_bps > 0
    assert Cluster.from_dict(cluster.to_dict()) == cluster


def test_robot_server_example_values() -> None:
    cluster = Cluster.load(EXAMPLES / "robot-server.yaml")
    assert cluster.source == "robot"
    assert cluster.device_names == ["robot", "server"]
    robot = cluster.device("robot")
    assert robot.speed == 0.25
    assert robot.memory_bytes == 4 * 2**30
    assert robot.require_power() == PowerModel(idle_w=5.0, busy_w=14.0, radio_w_per_mbps=0.283, radio_base_w=0.133)
    assert cluster.device("server").memory_bytes == 16 * 2**30
    assert cluster.link("server", "robot") == Link(bandwidth_bps=50e6, latency_s=0.002)
    assert cluster.transfer_time("robot", "server", 10**6) == pytest.approx(0.162)


def test_edgepipe_example_values() -> None:
    cluster = Cluster.load(EXAMPLES / "edgepipe-16.yaml")
    assert cluster.source == "rcc-1"
    assert cluster.device_names == [f"minnow-{i}" for i in range(1, 9)] + [f"rcc-{i}" for i in range(1, 9)]
    minnow, rcc = cluster.device("minnow-3"), cluster.device("rcc-8")
    assert minnow.memory_bytes == 2 * 2**30 and rcc.memory_bytes == 8 * 2**30
    assert rcc.speed / minnow.speed == pytest.approx(44.52 / 35.84, rel=1e-3)
    assert cluster.link("minnow-1", "rcc-2") == Link(bandwidth_bps=1e9, latency_s=1e-4)
    assert cluster.is_uniform()


def test_home_example_values() -> None:
    cluster = Cluster.load(EXAMPLES / "home-4.yaml")
    assert cluster.source == "laptop"
    assert cluster.link("desktop", "laptop").bandwidth_bps == 1e9
    assert cluster.link("laptop", "desktop").bandwidth_bps == 1e9
    assert cluster.link("jetson", "desktop").bandwidth_bps == 200e6
    assert cluster.link("desktop", "jetson").bandwidth_bps == 400e6
    assert cluster.link("laptop", "rpi").bandwidth_bps == 40e6
    assert cluster.link("laptop", "jetson") == Link(bandwidth_bps=100e6, latency_s=0.003)
    assert not cluster.is_uniform()
    for name in cluster.device_names:
        cluster.device(name).require_power()


# ---------------------------------------------------------------------------------------------
# link resolution


def test_symmetric_key_sets_both_directions() -> None:
    cluster = Cluster.from_yaml(two())
    assert cluster.link("a", "b") == cluster.link("b", "a") == Link(bandwidth_bps=50e6, latency_s=0.002)


def test_both_symmetric_keys_each_set_their_own_direction() -> None:
    cluster = Cluster.from_yaml(two("  a-b: {bandwidth: 10Mbps}\n  b-a: {bandwidth: 20Mbps}"))
    assert cluster.link("a", "b").bandwidth_bps == 10e6
    assert cluster.link("b", "a").bandwidth_bps == 20e6


def test_directed_keys() -> None:
    cluster = Cluster.from_yaml(two("  a->b: {bandwidth: 10Mbps}\n  b->a: {bandwidth: 30Mbps, latency: 1ms}"))
    assert cluster.link("a", "b") == Link(bandwidth_bps=10e6, latency_s=0.0)
    assert cluster.link("b", "a") == Link(bandwidth_bps=30e6, latency_s=0.001)


def test_directed_key_overrides_symmetric_one() -> None:
    cluster = Cluster.from_yaml(two("  a-b: {bandwidth: 10Mbps}\n  b->a: {bandwidth: 30Mbps}"))
    assert cluster.link("a", "b").bandwidth_bps == 10e6
    assert cluster.link("b", "a").bandwidth_bps == 30e6


def test_default_fallback() -> None:
    text = """
source: x
devices: {x: {speed: 1, memory: 1GiB}, y: {speed: 1, memory: 1GiB}, z: {speed: 1, memory: 1GiB}}
links:
  default: {bandwidth: 1Gbps, latency: 1ms}
  x-y: {bandwidth: 50Mbps, latency: 2ms}
"""
    cluster = Cluster.from_yaml(text)
    assert cluster.link("y", "x").bandwidth_bps == 50e6
    assert cluster.link("x", "z") == Link(bandwidth_bps=1e9, latency_s=0.001)
    assert cluster.link("z", "y") == Link(bandwidth_bps=1e9, latency_s=0.001)


def test_hyphenated_device_names() -> None:
    text = """
source: minnow-1
devices:
  minnow-1: {speed: 1, memory: 1GiB}
  minnow-12: {speed: 1, memory: 1GiB}
  rcc-ve-2: {speed: 1, memory: 1GiB}
links:
  minnow-1-minnow-12: {bandwidth: 10Mbps}
  minnow-12-rcc-ve-2: {bandwidth: 20Mbps}
  rcc-ve-2->minnow-1: {bandwidth: 30Mbps}
  minnow-1->rcc-ve-2: {bandwidth: 40Mbps}
"""
    cluster = Cluster.from_yaml(text)
    assert cluster.link("minnow-12", "minnow-1").bandwidth_bps == 10e6
    assert cluster.link("rcc-ve-2", "minnow-12").bandwidth_bps == 20e6
    assert cluster.link("rcc-ve-2", "minnow-1").bandwidth_bps == 30e6
    assert cluster.link("minnow-1", "rcc-ve-2").bandwidth_bps == 40e6


def test_ambiguous_hyphenated_key_is_refused() -> None:
    text = """
source: a
devices: {a: {speed: 1, memory: 1GiB}, a-b: {speed: 1, memory: 1GiB}, b-c: {speed: 1, memory: 1GiB},
          c: {speed: 1, memory: 1GiB}}
links:
  default: {bandwidth: 1Gbps}
  a-b-c: {bandwidth: 10Mbps}
"""
    with pytest.raises(UserError, match=r"^x.yaml: links\.a-b-c: ambiguous"):
        Cluster.from_yaml(text, "x.yaml")


def test_missing_link_is_an_error_at_load_time() -> None:
    with pytest.raises(UserError) as info:
        Cluster.from_yaml(two("  a->b: {bandwidth: 10Mbps}"), "c.yaml")
    assert str(info.value) == "c.yaml: links: no link from b to a and no default (add links.b-a or links.default)"


def test_link_lookup_errors() -> None:
    cluster = Cluster.from_yaml(two())
    with pytest.raises(ValueError, match="itself"):
        cluster.link("a", "a")
    with pytest.raises(UserError, match="unknown device 'q'"):
        cluster.link("a", "q")


def test_transfer_time_arithmetic() -> None:
    cluster = Cluster.from_yaml(two())
    # 1 MB = 8e6 bits over 50 Mbps = 0.16 s, plus 2 ms latency.
    assert cluster.transfer_time("a", "b", 10**6) == pytest.approx(0.162, abs=1e-12)
    assert cluster.transfer_time("b", "a", 0) == pytest.approx(0.002)
    assert cluster.transfer_time("a", "a", 10**9) == 0.0
    with pytest.raises(ValueError):
        cluster.transfer_time("a", "b", -1)


def test_single_device_needs_no_links() -> None:
    cluster = Cluster.from_yaml("source: solo\ndevices: {solo: {speed: 1, memory: 512MiB}}")
    assert cluster.device_names == ["solo"]
    assert cluster.links == {}
    assert cluster.is_uniform()
    assert cluster.transfer_time("solo", "solo", 100) == 0.0


# ---------------------------------------------------------------------------------------------
# subset, uniformity, round trip, summary


def test_subset_keeps_links_among_kept_devices() -> None:
    home = Cluster.load(EXAMPLES / "home-4.yaml")
    sub = home.subset(["desktop", "laptop", "jetson"])
    assert sub.device_names == ["laptop", "jetson", "desktop"]  # file order
    assert sub.source == "laptop"
    assert "rpi-laptop" not in sub.links
    assert sub.link("jetson", "desktop").bandwidth_bps == 200e6
    assert sub.link("laptop", "jetson").bandwidth_bps == 100e6  # default kept
    moved = home.subset(["desktop", "rpi"], source="desktop")
    assert moved.source == "desktop"
    assert moved.link("rpi", "desktop").bandwidth_bps == 40e6
    assert moved.is_uniform()
    with pytest.raises(UserError, match="source"):
        home.subset(["desktop", "rpi"])
    with pytest.raises(UserError, match="unknown device"):
        home.subset(["laptop", "tv"])


def test_is_uniform() -> None:
    assert Cluster.from_yaml(two()).is_uniform()
    assert not Cluster.from_yaml(two("  a->b: {bandwidth: 10Mbps}\n  b->a: {bandwidth: 20Mbps}")).is_uniform()
    assert not Cluster.from_yaml(
        two("  a->b: {bandwidth: 10Mbps, latency: 1ms}\n  b->a: {bandwidth: 10Mbps, latency: 2ms}")
    ).is_uniform()


def test_round_trip_through_dict_and_yaml() -> None:
    text = """
name: t
description: round trip
source: a
devices:
  a: {speed: 0.3, memory: 1536, address: "tcp://10.0.0.2:5555", power: {idle_w: 1.5}}
  b: {speed: 2, memory: 3GB}
links:
  a->b: {bandwidth: 47.6Mbps, latency: 0.25ms, trace: traces/ab.csv}
  b-a: {bandwidth: 1Gbps}
"""
    cluster = Cluster.from_yaml(text)
    data = cluster.to_dict()
    assert data["devices"]["a"]["memory"] == 1536
    assert data["devices"]["b"]["memory"] == 3 * 10**9
    assert data["links"]["a->b"] == {"bandwidth": "47.6Mbps", "latency": "250us", "trace": "traces/ab.csv"}
    again = Cluster.from_dict(data)
    assert again == cluster
    assert Cluster.from_yaml(yaml.safe_dump(data, sort_keys=False)) == cluster
    assert again.device("a").address == "tcp://10.0.0.2:5555"
    assert again.device("a").power == PowerModel(idle_w=1.5)


def test_trace_resolves_against_the_file_folder(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(two("  a-b: {bandwidth: 10Mbps, trace: traces/ab.csv}"))
    cluster = Cluster.load(path)
    assert cluster.link("a", "b").trace == "traces/ab.csv"
    assert cluster.trace_path("b", "a") == tmp_path / "traces" / "ab.csv"
    assert cluster.subset(["a", "b"]).trace_path("a", "b") == tmp_path / "traces" / "ab.csv"


def test_python_construction_uses_si_numbers() -> None:
    cluster = Cluster(
        source="a",
        devices={"a": Device(name="a", speed=1.0, memory_bytes=2**30), "b": {"speed": 2, "memory": "1GiB"}},
        links={"default": Link(bandwidth_bps=1e8, latency_s=0.001)},
    )
    assert cluster.device("b").memory_bytes == 2**30
    assert cluster.transfer_time("a", "b", 12_500) == pytest.approx(0.002)


def test_power_model_completeness() -> None:
    PowerModel(idle_w=1, busy_w=2).require_complete("x")
    with pytest.raises(UserError, match="device 'robot': power.busy_w is missing"):
        PowerModel(idle_w=1.0).require_complete("robot")
    with pytest.raises(UserError, match="power.busy_w must be >= 0"):
        PowerModel.model_construct(idle_w=1.0, busy_w=-2.0).require_complete("robot")
    cluster = Cluster.from_yaml(two())
    with pytest.raises(UserError, match="device 'a' has no power model"):
        cluster.device("a").require_power()


def test_cluster_summary_is_json_and_complete() -> None:
    cluster = Cluster.load(EXAMPLES / "home-4.yaml")
    summary = json.loads(json.dumps(cluster_summary(cluster)))
    assert summary["source"] == "laptop"
    assert list(summary["devices"]) == ["laptop", "jetson", "desktop", "rpi"]
    assert summary["devices"]["desktop"]["memory_bytes"] == 32 * 2**30
    assert summary["devices"]["rpi"]["power"]["busy_w"] == 6.4
    assert summary["links"]["jetson"]["desktop"] == {"bandwidth_bps": 200e6, "latency_s": 0.002}
    assert summary["links"]["desktop"]["jetson"] == {"bandwidth_bps": 400e6, "latency_s": 0.002}
    assert all(len(row) == 3 and name not in row for name, row in summary["links"].items())


# ---------------------------------------------------------------------------------------------
# one-line errors that name the file and the field

DEVICES_AB = "devices:\n  a: {speed: 1, memory: 1GiB}\n  b: {speed: 1, memory: 1GiB}\n"

BAD_FILES = [
    (
        "source: a\ndevices:\n  a: {speed: 1, memory: 4 gigs}\n",
        "devices.a.memory: cannot parse '4 gigs' as a size (use e.g. 512MiB, 4GiB)",
    ),
    ("source: a\ndevices:\n  a: {speed: 0, memory: 1GiB}\n", "devices.a.speed: must be > 0, got 0"),
    ("source: a\ndevices:\n  a: {speed: -2, memory: 1GiB}\n", "devices.a.speed: must be > 0, got -2"),
    (
        "source: a\ndevices:\n  a: {speed: fast, memory: 1GiB}\n",
        "devices.a.speed: must be a number, got 'fast'",
    ),
    ("source: a\ndevices:\n  a: {speed: 1}\n", "devices.a.memory: is required"),
    (
        "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB, colour: red}\n",
        "devices.a.colour: unknown key (expected one of: speed, memory, power, address, profile, kind)",
    ),
    (
        "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB, power: {idle_w: -1}}\n",
        "devices.a.power.idle_w: must be >= 0, got -1",
    ),
    (
        "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB, power: {idle: 1}}\n",
        "devices.a.power.idle: unknown key (expected one of: idle_w, busy_w, radio_w_per_mbps, radio_base_w, "
        "radio_rx_w_per_mbps)",
    ),
    ("devices:\n  a: {speed: 1, memory: 1GiB}\n", "source: is required"),
    ("source: a\n", "devices: is required"),
    ("source: z\ndevices:\n  a: {speed: 1, memory: 1GiB}\n", "source: 'z' is not a device (devices: a)"),
    ("source: a\ndevices: {}\n", "devices: at least one device is needed"),
    ("source: a\ndevices: [a, b]\n", "devices: must be a mapping, got ['a', 'b']"),
    (
        "source: a\nsauce: b\n" + DEVICES_AB,
        "sauce: unknown key (expected one of: name, description, source, kinds, devices, links)",
    ),
    (
        "source: a\n" + DEVICES_AB + "links:\n  a-b: {bandwidth: 50}\n",
        "links.a-b.bandwidth: a bandwidth needs a unit, got the bare number 50 (use e.g. 50Mbps, 1Gbps)",
    ),
    ("source: a\n" + DEVICES_AB + "links:\n  a-b: {bandwidth: 0Mbps}\n", "links.a-b.bandwidth: must be > 0"),
    (
        "source: a\n" + DEVICES_AB + "links:\n  a-b: {bandwidth: 1Gbps, latency: soon}\n",
        "links.a-b.latency: cannot parse 'soon' as a duration (use e.g. 2ms, 100us, 1s)",
    ),
    ("source: a\n" + DEVICES_AB + "links:\n  a-b: {latency: 1ms}\n", "links.a-b.bandwidth: is required"),
    (
        "source: a\n" + DEVICES_AB + "links:\n  a-c: {bandwidth: 1Gbps}\n",
        "links.a-c: does not name two devices joined by '-' (devices: a, b)",
    ),
    (
        "source: a\n" + DEVICES_AB + "links:\n  a->c: {bandwidth: 1Gbps}\n",
        "links.a->c: 'c' is not a device (devices: a, b)",
    ),
    (
        "source: a\n" + DEVICES_AB + "links:\n  a-a: {bandwidth: 1Gbps}\n  default: {bandwidth: 1Gbps}\n",
        "links.a-a: a link joins two different devices",
    ),
    ("source: a\n" + DEVICES_AB, "links: no link from a to b and no default"),
    (
        "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB}\n  a: {speed: 2, memory: 1GiB}\n",
        "line 4: invalid YAML: duplicate key 'a'",
    ),
    ("source: a\ndevices:\n  a: {speed: 1, memory: 1GiB\n", "line 4: invalid YAML:"),
    (
        "source: a\ndevices:\n  default: {speed: 1, memory: 1GiB}\n",
        "devices.default: 'default' cannot be a device name",
    ),
    (
        "source: a\ndevices:\n  a b: {speed: 1, memory: 1GiB}\n",
        "devices.a b: 'a b' is not a valid device name",
    ),
    (
        "source: a\ndevices:\n  a: {name: b, speed: 1, memory: 1GiB}\n",
        "devices.a.name: a device's name is its key",
    ),
    (
        "source: a\ndevices:\n  1: {speed: 1, memory: 1GiB}\n",
        "devices.1: device names are text; quote it: '1'",
    ),
    ("- a\n- b\n", "expected a mapping with source, devices and links, got list"),
    ("# nothing here\n", "the cluster description is empty"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_FILES)
def test_bad_files_give_one_line_naming_file_and_field(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        Cluster.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {expected}"), message


def test_more_problems_are_counted_not_listed() -> None:
    text = "devices:\n  a: {speed: 0, memory: 1GiB}\n"
    with pytest.raises(UserError) as info:
        Cluster.from_yaml(text, "m.yaml")
    assert str(info.value) == "m.yaml: source: is required (and 1 more problem)"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml: no such file$"):
        Cluster.load(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is a directory"):
        Cluster.load(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        Cluster.load(binary)


# ---------------------------------------------------------------------------------------------
# per-device profiles (issue 14, item 3)


def chain_profile(model: str, times: list[float], names: list[str] | None = None) -> dict:
    names = names or [f"n{i}" for i in range(len(times))]
    nodes, prev = [], "input"
    for name, t in zip(names, times, strict=True):
        nodes.append({"name": name, "time_s": t, "out_bytes": 1000, "param_bytes": 10, "inputs": [prev]})
        prev = name
    return {"model": model, "input_bytes": 1000, "nodes": nodes}


def write_cluster_with_profiles(tmp_path: Path, board_times: list[float], names: list[str] | None = None) -> Path:
    (tmp_path / "board.json").write_text(json.dumps(chain_profile("toy", board_times, names)))
    (tmp_path / "c.yaml").write_text(
        "source: host\n"
        "kinds:\n"
        "  board: {speed: 0.5, memory: 1GiB, profile: board.json}\n"
        "devices:\n"
        "  host: {speed: 1, memory: 4GiB}\n"
        "  b1: {kind: board}\n"
        "  b2: {kind: board, memory: 2GiB}\n"
        "links:\n"
        "  default: {bandwidth: 1Gbps, latency: 1ms}\n"
    )
    return tmp_path / "c.yaml"


def test_kinds_fill_devices_and_a_device_profile_replaces_time_over_speed(tmp_path: Path) -> None:
    from edgeweave.cost.profile import Profile
    from edgeweave.plan.costmodel import PipelineModel

    path = write_cluster_with_profiles(tmp_path, [0.1, 2.0, 0.3])
    cluster = Cluster.load(path)
    assert cluster.devices["b1"].profile == "board.json" and cluster.devices["b1"].speed == 0.5
    assert cluster.devices["b2"].memory_bytes == 2 * 2**30  # the device's own field wins
    assert Cluster.from_dict(cluster.to_dict()) == cluster  # kinds expand; the round trip holds
    model = Profile.from_data(chain_profile("toy", [1.0, 1.0, 1.0]))
    pm = PipelineModel.build(model, cluster)
    assert pm.compute(0, 3, pm.devices.index("host")) == pytest.approx(3.0)  # time_s / speed
    b1 = pm.devices.index("b1")
    assert pm.compute(0, 3, b1) == pytest.approx(2.4)  # its own profile, not 3.0 / 0.5
    assert pm.compute(1, 2, b1) == pytest.approx(2.0) and pm.compute(0, 1, b1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("times", "names", "why"),
    [
        ([0.1, 0.2], None, "2 nodes, the model's profile has 3"),
        ([0.1, 0.2, 0.3], ["n0", "other", "n2"], "node 1 is 'other', the model's is 'n1'"),
    ],
)
def test_a_device_profile_of_another_model_is_one_line_naming_device_and_file(
    tmp_path: Path, times: list[float], names: list[str] | None, why: str
) -> None:
    from edgeweave.cost.profile import Profile
    from edgeweave.plan.costmodel import PipelineModel

    cluster = Cluster.load(write_cluster_with_profiles(tmp_path, times, names))
    model = Profile.from_data(chain_profile("toy", [1.0, 1.0, 1.0]))
    with pytest.raises(UserError) as err:
        PipelineModel.build(model, cluster)
    message = str(err.value)
    assert message.startswith("device b1: profile ") and "board.json" in message and why in message
    assert "\n" not in message and err.value.exit_code == 2


def test_bad_kinds_are_one_line() -> None:
    with pytest.raises(UserError, match=r"devices.a.kind: unknown kind 'gpu' \(kinds: none defined\)"):
        Cluster.from_yaml("source: a\ndevices:\n  a: {kind: gpu}\n")
    with pytest.raises(UserError, match=r"kinds.gpu.colour: unknown key"):
        Cluster.from_yaml("source: a\nkinds:\n  gpu: {colour: red}\ndevices:\n  a: {kind: gpu}\n")
    with pytest.raises(UserError, match=r"device b1: profile .*missing.json"):
        from edgeweave.cost.profile import Profile
        from edgeweave.plan.costmodel import PipelineModel

        cluster = Cluster.from_yaml(
            "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB}\n"
            "  b1: {speed: 1, memory: 1GiB, profile: missing.json}\n"
            "links:\n  default: {bandwidth: 1Gbps, latency: 1ms}\n"
        )
        PipelineModel.build(Profile.from_data(chain_profile("toy", [1.0])), cluster)
