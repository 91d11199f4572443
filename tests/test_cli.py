"""The command line: JSON contracts of the design notes, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeweave.cli import app
from edgeweave.cli.options import DEFAULT_OBJECTIVE
from edgeweave.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prof") / "resnet18.json"
    result = runner.invoke(
        app, ["profile", "resnet18", "--out", str(path), "--warmup", "0", "--repeats", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["nodes"] == 69 and summary["out"] == str(path)
    return path


def invoke_json(args: list[str]):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_models_lists_the_zoo() -> None:
    names = {m["name"] for m in invoke_json(["models"])}
    assert {"resnet18", "vit_h_14", "bert-base", "timm_vit_small"} <= names


@pytest.mark.parametrize("strategy", ["local", "offload", "neurosurgeon", "dads", "even", "pipedream", "pipeline"])
def test_plan_json_has_the_contract_fields(profile_path: Path, strategy: str) -> None:
    out = invoke_json(
        [
            "plan",
            "--profile",
            str(profile_path),
            "--cluster",
            str(ROOT / "examples/clusters/home-4.yaml"),
            "--strategy",
            strategy,
        ]
    )
    assert out["strategy"] == strategy and out["objective"] == DEFAULT_OBJECTIVE == "latency"
    assert out["predicted"]["latency_s"] > 0 and out["predicted"]["throughput_per_s"] > 0
    if strategy != "dads":
        stages = out["stages"]
        assert stages[0]["first"] == 0 and stages[-1]["last"] == 68
        assert all(a["last"] + 1 == b["first"] for a, b in zip(stages, stages[1:], strict=False))


def test_pipeline_beats_or_equals_every_baseline_on_throughput(profile_path: Path) -> None:
    cluster = str(ROOT / "examples/clusters/home-4.yaml")
    results = {}
    for strategy in ["local", "offload", "even", "pipedream", "neurosurgeon", "pipeline"]:
        args = ["plan", "--profile", str(profile_path), "--cluster", cluster, "--strategy", strategy, "-O", "throughput"]
        out = invoke_json(args)
        results[strategy] = out["cost_model"]["bottleneck_s"] if out["cost_model"]["fits"] else float("inf")
    assert results["pipeline"] <= min(results.values()) * (1 + 1e-9)
    assert results["pipeline"] < results["local"]


def test_plan_out_then_simulate(profile_path: Path, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    planned = invoke_json(
        [
            "plan",
            "--profile",
            str(profile_path),
            "--cluster",
            str(ROOT / "examples/clusters/home-4.yaml"),
            "--out",
            str(plan_file),
            "-O",
            "throughput",
        ]
    )
    sim = invoke_json(["simulate", str(plan_file), "--requests", "40"])
    assert sim["throughput_per_s"] == pytest.approx(planned["predicted"]["throughput_per_s"], rel=1e-6)
    assert sim["throughput_per_s"] == pytest.approx(1 / planned["cost_model"]["bottleneck_s"], rel=0.01)


def test_cluster_show_json() -> None:
    out = invoke_json(["cluster", "show", str(ROOT / "examples/clusters/robot-server.yaml")])
    assert out["source"] == "robot" and out["links"]["robot"]["server"]["bandwidth_bps"] == 50e6


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from edgeweave.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["plan", "resnt18"], "unknown model 'resnt18'; did you mean resnet18"),
        (["plan", "--profile", "nope.json"], "nope.json: cannot read profile"),
        (["cluster", "show", "missing.yaml"], "missing.yaml"),
        (["plan", "--profile", "PROFILE", "--strategy", "magic"], "unknown strategy 'magic'"),
        (["plan", "--profile", "PROFILE", "--objective", "speed"], "unknown objective 'speed'"),
        (["simulate", "nope.json"], "nope.json"),
        (["profile", "resnet18", "--labels"], "--labels needs a model whose output is an (N, C, H, W) map"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args: list[str], pattern: str, profile_path: Path) -> None:
    args = [str(profile_path) if a == "PROFILE" else a for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_labels_profile_a_segmentation_model_that_returns_a_uint8_label_map(tmp_path: Path) -> None:
    path = tmp_path / "lraspp.json"
    args = ["profile", "lraspp_mobilenet_v3_large", "--input-shape", "1,3,64,96", "--labels", "--input", "uint8-image"]
    invoke_json([*args, "--out", str(path), "--warmup", "0", "--repeats", "1"])
    profile = json.loads(path.read_text())
    assert profile["input_bytes"] == 3 * 64 * 96  # camera pixels in
    assert profile["nodes"][-1]["out_bytes"] == 64 * 96  # one uint8 label per pixel out


def test_model_that_fits_nowhere_names_the_shortfall(profile_path: Path, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "source: a\ndevices:\n  a: {speed: 1, memory: 8MiB}\n  b: {speed: 1, memory: 8MiB}\n"
        "links:\n  default: {bandwidth: 1Gbps, latency: 1ms}\n"
    )
    proc = run_cli("plan", "--profile", str(profile_path), "--cluster", str(tiny))
    assert proc.returncode == 2 and "fits on no combination" in proc.stderr and "more memory" in proc.stderr


def test_hand_given_hybrid_split_is_planned_or_refused_in_one_line(tmp_path) -> None:
    args = ["plan", "resnet18", "-s", "hybrid", "-O", "latency", "--cache-dir", str(tmp_path)]
    out = invoke_json([*args, "--split-ratios", "0.4,0.6", "--chunks", "2", "--split-axis", "rows"])
    assert out["strategy"] == "hybrid" and out["predicted"]["latency_s"] > 0
    for extra, message in [
        (["--split-ratios", "0.4"], "1 split ratios given for 2 devices"),
        (["--split-ratios", "x,y"], "give comma-separated numbers"),
        (["--chunks", "0"], "chunk count 0 must be between 1 and 64"),
        (["--split-axis", "depth"], "split axis 'depth' is not one of rows, cols"),
    ]:
        result = runner.invoke(app, [*args, *extra])  # main() turns a UserError into one line, exit 2
        assert isinstance(result.exception, UserError) and message in str(result.exception), result.output
    done = run_cli("plan", "resnet18", "-s", "pipeline", "--chunks", "2", "--cache-dir", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --split-ratios, --chunks and --split-axis apply to --strategy hybrid, not pipeline"
    ]
