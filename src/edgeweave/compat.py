"""Work-arounds for the installed third-party packages.

The torchvision wheel on some machines (0.28.0 here) is a CUDA build whose compiled operators
cannot be loaded against a CPU-only torch. Its `__init__` then fails while registering fake
(meta) kernels for operators that were never defined::

    RuntimeError: operator torchvision::nms does not exist

The model definitions edgeweave needs (classification CNNs and ViTs) are pure Python and do not
use those operators, so defining the missing operator *schemas* (with no kernels) is enough for
the import to succeed. Detection models that call `torchvision.ops.nms` will still fail at run
time, because there is no kernel behind the schema.

Every place in edgeweave that needs torchvision, or a library that imports it (timm imports it at
import time), must call `import_torchvision()` first. Before importing a user's own model code,
which may import any of them at its top, call `prepare_third_party()`: it applies the fix when
torchvision is installed and does nothing when it is not.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

# The missing operators, as the torchvision C++ extension would have declared them.
_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_MISSING_OP_ERROR = "operator torchvision::nms does not exist"

# The one piece of module state in edgeweave: a `torch.library.Library` unregisters its
# definitions when it is garbage collected, so the object must live as long as the process for
# torchvision's operators to stay defined. It also records that the registration was done, so
# repeated calls never try to define the schemas twice (which torch rejects).
_TORCHVISION_LIB: torch.library.Library | None = None


def import_torchvision() -> ModuleType:
    """Import torchvision, defining its missing operator schemas if the wheel's ops cannot load.

    Safe to call any number of times. Raises the original error for any other import failure.
    """
    try:
        import torchvision
    except RuntimeError as err:
        if _MISSING_OP_ERROR not in str(err) or _TORCHVISION_LIB is not None:
            raise
        _register_missing_schemas()
        _forget_partial_import()
        import torchvision
    return torchvision


def prepare_third_party() -> None:
    """Make torchvision (and timm and transformers, which import it) importable by user code.

    A user's model module imports them itself, where we cannot intervene; importing torchvision
    here first leaves a working copy in `sys.modules` for it. Without torchvision installed,
    there is nothing to fix.
    """
    try:
        import_torchvision()
    except ModuleNotFoundError:
        pass


def _register_missing_schemas() -> None:
    """Define the `torchvision::nms` and `torchvision::qnms` schemas (no kernels) once."""
    global _TORCHVISION_LIB
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_SCHEMAS:
        lib.define(schema)
    _TORCHVISION_LIB = lib


def _forget_partial_import() -> None:
    """Drop the torchvision modules the failed import left behind, so the retry starts clean."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
