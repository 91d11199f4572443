"""Tests for the model zoo and the torchvision import work-around.

Full-size vgg19, resnet152 and the large ViTs are only ever built on the meta device (shapes
without storage), so the whole file stays fast; ViTs run their forward with few layers.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgeweave.compat import import_torchvision
from edgeweave.errors import UserError
from edgeweave.zoo import (
    BERT_VOCAB,
    CAMERA_SHAPE,
    ZOO,
    build_model,
    list_models,
    load_model,
    parse_input_shape,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeweave"

# name, overrides that keep it small, expected output shape
SMALL_MODELS = [
    ("resnet18", {}, (1, 1000)),
    ("resnet50", {}, (1, 1000)),
    ("mobilenet_v2", {}, (1, 1000)),
    ("mobilenet_v3_large", {}, (1, 1000)),
    ("densenet121", {}, (1, 1000)),
    ("convnext_tiny", {}, (1, 1000)),
    ("efficientnet_b0", {}, (1, 1000)),
    ("vit_b_16", {"num_layers": 2}, (1, 1000)),
    ("vit_l_16", {"num_layers": 1}, (1, 1000)),
    ("vit_h_14", {"num_layers": 1}, (1, 1000)),
    ("timm_vit_small", {"depth": 2}, (1, 1000)),
    ("bert-base", {"num_hidden_layers": 2}, (1, 128, 768)),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for every test and fixture: the thread count changes reduction order,
    so outputs computed under different counts differ in the last bits."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything tries to open a connection (timm / transformers must stay offline)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model zoo tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


# --------------------------------------------------------------------------- compat


def test_import_torchvision_is_idempotent() -> None:
    first = import_torchvision()
    assert import_torchvision() is first
    assert hasattr(first.models, "resnet18")


def test_import_torchvision_in_a_fresh_process_after_a_failed_plain_import() -> None:
    """The retry path only runs in a fresh interpreter; a prior failed plain import must not matter."""
    code = textwrap.dedent(
        """
        try:
            import torchvision  # fails on a CUDA wheel over CPU torch, leaving partial modules
        except RuntimeError:
            pass
        from edgeweave.compat import import_torchvision
        tv = import_torchvision()
        assert import_torchvision() is tv
        import torch
        tv.models.resnet18(weights=None).eval()(torch.zeros(1, 3, 32, 32))
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_module_imports_torchvision_directly() -> None:
    """Everything must go through compat.import_torchvision, or a CPU-only install breaks."""
    direct = re.compile(r"^\s*(import|from)\s+torchvision\b", re.MULTILINE)
    offenders = [p.name for p in SRC.rglob("*.py") if p.name != "compat.py" and direct.search(p.read_text())]
    assert offenders == []


# --------------------------------------------------------------------------- registry


def test_list_models_describes_every_entry() -> None:
    rows = list_models()
    assert {r["name"] for r in rows} == set(ZOO)
    assert {"resnet18", "vit_h_14", "timm_vit_small", "bert-base"} <= set(ZOO)
    for row in rows:
        assert set(row) >= {"name", "family", "input_shape", "params", "description"}
        assert row["family"] in {"cnn", "vit", "transformer", "segmentation", "keypoints"}
        assert row["params"] > 0 and row["description"]
    bert = next(r for r in rows if r["name"] == "bert-base")
    assert bert["input_shape"] == [1, 128] and bert["input_dtype"] == "int64"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_registered_parameter_count_is_within_5_percent(name: str, no_network: None) -> None:
    """Built on the meta device: real shapes, no memory, so even ViT-H takes milliseconds."""
    with torch.device("meta"):
        module = build_model(name)
    real = sum(p.numel() for p in module.parameters())
    assert abs(ZOO[name].params - real) <= 0.05 * real, (name, real)


@pytest.mark.parametrize("name", ["vit_b_16", "vit_l_16", "vit_h_14"])
def test_vit_matches_the_torchvision_builder(name: str) -> None:
    tv = import_torchvision()
    with torch.device("meta"):
        ours = build_model(name).state_dict()
        theirs = getattr(tv.models, name)(weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_bert_vocab_constant_matches_transformers() -> None:
    import_torchvision()
    from transformers import BertConfig

    assert BertConfig().vocab_size == BERT_VOCAB


# --------------------------------------------------------------------------- building and running


@pytest.mark.parametrize(("name", "overrides", "out_shape"), SMALL_MODELS, ids=[m[0] for m in SMALL_MODELS])
def test_zoo_model_runs_on_its_example_input(
    name: str, overrides: dict[str, int], out_shape: tuple[int, ...], no_network: None
) -> None:
    spec = load_model(name, **overrides)
    assert spec.name == name
    assert not spec.module.training
    assert tuple(spec.example_input.shape) == spec.input_shape == ZOO[name].input_shape
    assert spec.example_input.dtype == spec.input_dtype == getattr(torch, ZOO[name].input_dtype)
    assert tuple(forward(spec.module, spec.example_input).shape) == out_shape


# dense models at camera resolution: built small here (480x640 fcn_resnet50 is 325 GFLOPs)
DENSE = [("lraspp_mobilenet_v3_large", 21), ("deeplabv3_mobilenet_v3_large", 21), ("fcn_resnet50", 21)]
DENSE_KEYPOINTS = [("keypoints_resnet18_fpn", 17)]
SMALL_FRAME = (1, 3, 64, 96)


def test_dense_models_default_to_a_camera_frame() -> None:
    rows = {r["name"]: r for r in list_models()}
    for name, _ in DENSE + DENSE_KEYPOINTS:
        assert ZOO[name].input_shape == CAMERA_SHAPE == (1, 3, 480, 640)
        assert rows[name]["family"] == ("keypoints" if name.startswith("keypoints") else "segmentation")


@pytest.mark.parametrize(("name", "channels"), DENSE + DENSE_KEYPOINTS, ids=[m[0] for m in DENSE + DENSE_KEYPOINTS])
def test_dense_model_gives_one_map_at_the_input_size(name: str, channels: int, no_network: None) -> None:
    spec = load_model(name, input_shape=SMALL_FRAME)
    assert tuple(forward(spec.module, spec.example_input).shape) == (1, channels, 64, 96)


def test_segmentation_keeps_torchvisions_state_dict_keys() -> None:
    """A torchvision checkpoint of the same model loads unchanged (no wrapper prefix, no aux head)."""
    tv = import_torchvision()
    with torch.device("meta"):
        ours = build_model("deeplabv3_mobilenet_v3_large").state_dict()
        theirs = tv.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_labels_end_a_segmentation_model_in_a_uint8_label_map() -> None:
    scores = load_model("lraspp_mobilenet_v3_large", input_shape=SMALL_FRAME)
    labels = load_model("lraspp_mobilenet_v3_large", input_shape=SMALL_FRAME, labels=True, input_kind="uint8-image")
    assert labels.input_dtype == torch.uint8
    got = forward(labels.module, labels.example_input)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (1, 64, 96)
    # the same weights (same seed): labels are the argmax of the float model's logits
    expected = forward(scores.module, (labels.example_input.float() - labels.module.mean) / labels.module.std)
    assert torch.equal(got, expected.argmax(1).to(torch.uint8))


@pytest.mark.parametrize("name", ["resnet18", "bert-base"])
def test_labels_on_a_model_without_a_score_map_is_a_one_line_error(name: str) -> None:
    spec = load_model(name, labels=True, **({"num_hidden_layers": 1} if name == "bert-base" else {}))
    with pytest.raises(UserError, match="--labels needs a model whose output is an") as err:
        forward(spec.module, spec.example_input)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_reduced_vit_h_keeps_its_dimensions() -> None:
    vit = load_model("vit_h_14", num_layers=2).module
    assert len(vit.encoder.layers) == 2
    assert (vit.hidden_dim, vit.patch_size) == (1280, 14)
    assert vit.encoder.layers[0].mlp[0].out_features == 5120
    assert vit.encoder.layers[0].num_heads == 16


def test_bert_is_one_tensor_in_one_tensor_out() -> None:
    spec = load_model("bert-base", num_hidden_layers=1)
    ids = spec.example_input
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < BERT_VOCAB
    assert spec.module.bert.config._attn_implementation == "sdpa"
    assert isinstance(forward(spec.module, ids), torch.Tensor)


def test_input_shape_overrides_the_default() -> None:
    spec = load_model("vit_b_16", input_shape=(2, 3, 64, 64), num_layers=1)
    assert tuple(spec.example_input.shape) == (2, 3, 64, 64)
    assert tuple(forward(spec.module, spec.example_input).shape) == (2, 1000)
    spec = load_model("resnet18", input_shape=(1, 3, 64, 96))
    assert tuple(forward(spec.module, spec.example_input).shape) == (1, 1000)


def test_same_seed_same_model_and_input() -> None:
    a, b, c = (load_model("mobilenet_v2", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.example_input, b.example_input)
    assert torch.equal(forward(a.module, a.example_input), forward(b.module, b.example_input))
    assert not torch.equal(forward(a.module, a.example_input), forward(c.module, a.example_input))


def test_seeding_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("mobilenet_v2", seed=7)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- user mistakes


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UserError) as err:
        load_model("resnet19")
    message = str(err.value)
    assert "resnet18" in message and "edgeweave models" in message and "\n" not in message


def test_names_ignore_case_and_dash_vs_underscore() -> None:
    assert load_model("BERT_base", num_hidden_layers=1).name == "bert-base"


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("resnet18", {"num_layers": 2}), ("vit_b_16", {"depth": 2}), ("vit_b_16", {"num_layers": 0})],
)
def test_bad_override_is_a_user_error(name: str, overrides: dict[str, int]) -> None:
    with pytest.raises(UserError):
        load_model(name, **overrides)


@pytest.mark.parametrize("text", ["", "1,a,3", "1,-3,8,8", "0,3", "1.5,3", ",", "1,,3"])
def test_bad_input_shape_text(text: str) -> None:
    with pytest.raises(UserError):
        parse_input_shape(text)


@pytest.mark.parametrize(
    ("text", "shape"), [("1,3,224,224", (1, 3, 224, 224)), (" 1, 3 ,8,8 ", (1, 3, 8, 8)), ("1x128", (1, 128))]
)
def test_good_input_shape_text(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet18", (1, 0, 8, 8)),
        ("resnet18", (1, 1, 8, 8)),
        ("vit_b_16", (1, 3, 64, 48)),
        ("bert-base", (1, 600)),
    ],
)
def test_input_shape_the_model_cannot_take(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(UserError):
        load_model(name, input_shape=shape)


# --------------------------------------------------------------------------- user models


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tiny package in a temporary working directory, forgotten by the import system afterwards."""
    package = "ew_user_models"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny():
                return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))

            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    yield package
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def test_user_model_from_the_working_directory(user_package: str) -> None:
    path_before = list(sys.path)
    spec = load_model(f"{user_package}.nets:tiny", input_shape=(1, 3, 8, 8))
    assert sys.path == path_before
    assert tuple(forward(spec.module, spec.example_input).shape) == (1, 2, 8, 8)
    assert spec.input_dtype == torch.float32
    again = load_model(f"{user_package}.nets:tiny", input_shape=(1, 3, 8, 8))
    assert torch.equal(forward(spec.module, spec.example_input), forward(again.module, again.example_input))


@pytest.mark.parametrize(
    "spec",
    ["nets:tiny", "{pkg}.nets:missing", "{pkg}.nets:not_a_model", "{pkg}.nowhere:tiny", "{pkg}.nets:"],
)
def test_bad_user_model_is_a_user_error(user_package: str, spec: str) -> None:
    with pytest.raises(UserError):
        load_model(spec.format(pkg=user_package), input_shape=(1, 3, 8, 8))


def test_user_model_needs_an_input_shape(user_package: str) -> None:
    with pytest.raises(UserError, match="input-shape"):
        load_model(f"{user_package}.nets:tiny")


# --------------------------------------------------------------------------- checkpoints


Trained = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A small model's state dict, an input, and the output those weights give."""
    spec = load_model("mobilenet_v2", seed=0)
    return spec.module.state_dict(), spec.example_input, forward(spec.module, spec.example_input)


def _check_round_trip(path: Path, trained: Trained) -> None:
    _, x, expected = trained
    spec = load_model("mobilenet_v2", seed=1, checkpoint=str(path))
    assert torch.equal(forward(spec.module, x), expected)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_pt_checkpoint_round_trip(tmp_path: Path, trained: Trained, wrapper: str | None) -> None:
    state = trained[0]
    path = tmp_path / "weights.pt"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    _check_round_trip(path, trained)


def test_safetensors_checkpoint_round_trip(tmp_path: Path, trained: Trained) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained[0].items()}, str(path))
    _check_round_trip(path, trained)


def test_checkpoint_with_wrong_keys(tmp_path: Path, trained: Trained) -> None:
    state = dict(trained[0])
    state.pop("classifier.1.bias")
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError) as err:
        load_model("mobilenet_v2", checkpoint=str(tmp_path / "bad.pt"))
    message = str(err.value)
    assert "1 missing" in message and "classifier.1.bias" in message
    assert "1 unexpected" in message and "head.weight" in message


def test_checkpoint_with_wrong_shape(tmp_path: Path, trained: Trained) -> None:
    state = dict(trained[0])
    state["classifier.1.weight"] = torch.zeros(10, 1280)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError) as err:
        load_model("mobilenet_v2", checkpoint=str(tmp_path / "bad.safetensors"))
    message = str(err.value)
    assert "classifier.1.weight" in message and "(10, 1280)" in message and "(1000, 1280)" in message


@pytest.mark.parametrize("filename", ["garbage.pt", "garbage.safetensors", "absent.pt", "module.pt"])
def test_unreadable_checkpoint_names_the_file(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    if filename.startswith("garbage"):
        path.write_bytes(b"this is not a checkpoint")
    elif filename == "module.pt":
        torch.save(nn.Linear(2, 2), path)  # a pickled module: refused by weights_only loading
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_model("resnet18", checkpoint=str(path))
