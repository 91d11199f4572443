"""Models a user brings from outside the zoo, by factory: a torchvision segmentation model (dict
out), a timm model (imports torchvision at import time) and a transformers encoder taking token
ids (int64 in, ModelOutput out). Profile, plan and run them as a newcomer would; bad inputs are
blamed on the input options, not on the model's control flow. And the Python API, which takes
what the command line takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeweave.cli import app
from edgeweave.errors import UserError

HERE = Path(__file__).resolve().parent
runner = CliRunner()

OUTSIDE = [
    ("outside_models:torchvision_segmentation", ["--input-shape", "1,3,32,48"]),
    ("outside_models:timm_resnet", ["--input-shape", "1,3,32,32"]),
    ("outside_models:distilbert", ["--input-shape", "1,16", "--input-dtype", "int64"]),
]


def cli(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter, where nothing imported torchvision before the user's module."""
    return subprocess.run(
        [sys.executable, "-c", "from edgeweave.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.parametrize("spec,options", OUTSIDE, ids=["torchvision-seg", "timm", "transformers"])
def test_a_model_from_outside_the_zoo_is_profiled_and_planned(spec: str, options: list[str], tmp_path: Path) -> None:
    planned = cli("plan", spec, *options, "--cache-dir", str(tmp_path), "-s", "pipeline", "--json")
    assert planned.returncode == 0, planned.stderr[-2000:]
    out = json.loads(planned.stdout)
    assert out["predicted"]["latency_s"] > 0 and out["stages"][-1]["last"] > 20
    assert out["profile"]["kind"] == "measured" and out["profile"]["measured_at"]


def test_token_id_model_runs_for_real_with_ids_below_its_vocabulary(tmp_path: Path) -> None:
    args = ["run", *OUTSIDE[2][0:1], *OUTSIDE[2][1], "-s", "even", "-n", "4", "--cache-dir", str(tmp_path)]
    done = cli(*args, "-o", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["correct"] and result["requests"] == 4
    assert ":" not in Path(result["trace"]).name
    events = [e for e in json.loads(Path(result["trace"]).read_text())["traceEvents"] if e.get("ph") == "X"]
    arrivals = [e["args"]["arrival_us"] for e in events if "arrival_us" in e["args"]]
    assert arrivals and max(arrivals) < 60e6  # relative to the stream's start, like ts (not epoch seconds)


@pytest.mark.parametrize(
    "spec,options,message",
    [
        ("outside_models:distilbert", ["--input-shape", "1,16"], "it takes integer ids: give --input-dtype int64"),
        ("outside_models:channels_mismatch", ["--input-shape", "1,3,16,16"], "to have 4 channels"),
        ("outside_models:channels_mismatch", ["--input-shape", "1,3,16,16"], "check --input-shape"),
        ("outside_models:small_cnn", ["--input-shape", "1,3,8,8", "--input-dtype", "int64"], "--input-range"),
    ],
)
def test_an_input_the_model_cannot_take_is_blamed_on_the_input(spec: str, options: list[str], message: str) -> None:
    from edgeweave.zoo import capture_model, load_model

    shape = tuple(int(d) for d in options[1].split(","))
    dtype = options[3] if len(options) > 2 else None
    with pytest.raises(UserError, match=None) as caught:
        capture_model(load_model(spec, input_shape=shape, input_dtype=dtype))
    text = str(caught.value)
    assert message in text and "control flow" not in text and "\n" not in text


def test_input_range_bounds_generated_values() -> None:
    from edgeweave.zoo import load_model

    spec = load_model("outside_models:distilbert", input_shape=(2, 64), input_dtype="int64", input_range=(5, 9))
    assert spec.example_input.dtype == torch.int64
    assert int(spec.example_input.min()) >= 5 and int(spec.example_input.max()) <= 8
    default = load_model("outside_models:distilbert", input_shape=(2, 64), input_dtype="int64")
    assert default.input_range == (0.0, 1000.0)  # the first nn.Embedding: the token table


# --------------------------------------------------------------------------- the Python API


def two_devices(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB}\n  b: {speed: 1, memory: 1GiB}\n"
        "links:\n  default: {bandwidth: 1Gbps, latency: 0ms}\n"
    )
    return path


def test_connect_plans_on_the_spot_for_a_token_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeweave

    monkeypatch.chdir(HERE)
    session = edgeweave.connect(
        two_devices(tmp_path),
        None,
        "outside_models:distilbert",
        input_shape=(1, 16),
        input_dtype="int64",
        strategy="even",
        options=None,
    )
    try:
        ids = torch.randint(0, 1000, (1, 16))
        out = session.infer(ids)
        assert out.shape == (1, 16, 128)
    finally:
        session.close()


def test_connect_with_a_plan_for_another_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeweave

    monkeypatch.chdir(HERE)
    cluster = two_devices(tmp_path)
    plan_file = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "outside_models:small_cnn", "--input-shape", "1,3,8,8", "-c", str(cluster),
                                 "--cache-dir", str(tmp_path), "-o", str(plan_file), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    with pytest.raises(UserError, match=r"was made for outside_models:small_cnn \(\d+ nodes\), not for") as caught:
        edgeweave.connect(cluster, plan_file, "outside_models:channels_mismatch", input_shape=(1, 4, 8, 8))
    assert "\n" not in str(caught.value)
    other = tmp_path / "other.yaml"
    other.write_text(cluster.read_text().replace("a:", "x:").replace("b:", "y:").replace("source: a", "source: x"))
    with pytest.raises(UserError, match="was made for another cluster: it uses a"):
        edgeweave.connect(other, plan_file, "outside_models:small_cnn", input_shape=(1, 3, 8, 8))
    with pytest.raises(UserError, match="unknown strategy 'pipelin'"):
        edgeweave.connect(cluster, None, "outside_models:small_cnn", input_shape=(1, 3, 8, 8), strategy="pipelin")
