"""Workers run only pure tensor operators: everything the zoo captures is allowed, nothing else."""

from __future__ import annotations

import re

import pytest

from edgeweave.graph.opset import ALLOWED, OpRefused, check_node, refusal
from edgeweave.zoo import list_models

DENSE = {m["name"] for m in list_models() if m["family"] in ("segmentation", "keypoints")}
REDUCED = {"vit_l_16": {"num_layers": 2}, "vit_h_14": {"num_layers": 2}}


def _variants(name: str) -> list[dict]:
    if name in DENSE:
        small = {"input_shape": (1, 3, 64, 96)}
        return [small, {**small, "labels": True}] if not name.startswith("keypoints") else [small]
    return [REDUCED.get(name, {})]


@pytest.mark.parametrize("name", [m["name"] for m in list_models()])
def test_every_operator_the_zoo_captures_may_run_on_a_worker(zoo_graph, name: str) -> None:
    for variant in _variants(name):
        _, graph, _ = zoo_graph(name, **variant)
        for node in graph.nodes:
            check_node(node.op, node.args, node.kwargs)  # raises OpRefused naming the op otherwise


@pytest.mark.parametrize(
    "op",
    [
        "aten.from_file.default",
        "aten.fill_.Scalar",
        "aten.set_.source_Storage",
        "aten._copy_from.default",
        "aten._local_scalar_dense.default",
        "aten.empty.memory_format",
        "aten.as_strided.default",
        "aten.rand.default",
        "aten.add.out",
        "aten.relu_.default",
        "os.system.default",
        "torchvision.nms.default",
    ],
)
def test_operators_outside_pure_tensor_computation_are_refused_naming_them(op: str) -> None:
    with pytest.raises(OpRefused, match="^operator " + re.escape(op) + " is not allowed on a worker: "):
        check_node(op, [], {})


def test_dangerous_operators_stay_refused_even_if_someone_allows_them(monkeypatch) -> None:
    """The structural checks hold whatever the list says: files, storages, writes, randomness."""
    import edgeweave.graph.opset as opset

    widened = ALLOWED | {"from_file", "set_", "_copy_from", "fill_", "bernoulli", "_local_scalar_dense", "save"}
    monkeypatch.setattr(opset, "ALLOWED", widened)
    for op in (
        "aten.from_file.default",
        "aten.set_.source_Storage",
        "aten._copy_from.default",
        "aten.fill_.Scalar",
        "aten.bernoulli.default",
        "aten._local_scalar_dense.default",
    ):
        assert refusal(op) is not None, op
    assert refusal("aten.add.out") is not None and refusal("aten.add.Tensor") is None


def test_dropout_and_attention_only_without_randomness() -> None:
    check_node("aten.dropout.default", [{"ref": "x"}, 0.1, False], {})
    check_node("aten.scaled_dot_product_attention.default", [{"ref": "q"}, {"ref": "k"}, {"ref": "v"}], {})
    with pytest.raises(OpRefused, match="train=True"):
        check_node("aten.dropout.default", [{"ref": "x"}, 0.1, True], {})
    with pytest.raises(OpRefused, match="dropout_p=0.5"):
        check_node(
            "aten.scaled_dot_product_attention.default", [{"ref": "q"}, {"ref": "k"}, {"ref": "v"}, None, 0.5], {}
        )
