"""Convolution with its weights packed once, for every executor (layer-wise and band programs).

`aten.conv2d` on the CPU reorders its weights into oneDNN's blocked layout on every call. For a
whole 56x56 map that is noise, but a band program calls a convolution once per streamed step on
a few rows: on this machine a 512-channel 3x3 convolution of one row took 0.62 ms through
`aten.conv2d` and 0.15 ms with the weights packed ahead (a whole 7x7 map: 1.95 against 0.91 ms).
So weights are packed at deploy time (`mkldnn._reorder_convolution_weight`) and the convolution
runs through `mkldnn._convolution_pointwise`, channels_last. The graph executor uses the same
kernel, so layer-wise plans and band splits are compared on equal kernels.

Weights packed for one input shape can be pathologically slow on another: a 1x1 convolution
256 -> 1024 packed for a 14x14 map took 0.07-0.47 ms on bands of 1, 2, 3, 4, 7, 9, 10 or 14 rows
but 8-9 ms on 5, 6, 8, 11, 12 or 13 rows (oneDNN picks another blocking there and converts every
call); packed for the band's own shape, 0.17-0.47 ms. `ShapedConv2d.for_shape` therefore tries
the shared packing on each new band shape once, at deploy time, and keeps a packing of that shape
only where the shared one is much slower (so weights are not copied for every shape).

Falls back to `aten.conv2d` where oneDNN is not built in, for other dtypes than float32, for
string paddings, and for shapes oneDNN cannot pack for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

_ATEN_CONV = torch.ops.aten.conv2d.default


def _pair(value: int | Sequence[int]) -> list[int]:
    vals = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return vals * 2 if len(vals) == 1 else vals


def packed_conv2d(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    input_shape: Sequence[int] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """conv2d(x, weight, bias, ...) as a callable of x, with the weights packed for `input_shape`."""
    if isinstance(padding, str) or not _packable(weight, input_shape):
        return lambda x: _ATEN_CONV(x, weight, bias, stride, padding, dilation, groups)
    stride_, padding_, dilation_ = _pair(stride), _pair(padding), _pair(dilation)
    dense = weight.contiguous(memory_format=torch.channels_last)
    try:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            dense, padding_, stride_, dilation_, int(groups), [int(s) for s in input_shape]
        )
    except RuntimeError:  # a shape oneDNN has no blocked layout for (seen: dilated 1x1 maps): plain conv
        return lambda x: _ATEN_CONV(x, weight, bias, stride, padding, dilation, groups)
    pointwise = torch.ops.mkldnn._convolution_pointwise.default

    def conv(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.dtype != torch.float32:
            return _ATEN_CONV(x, weight, bias, stride, padding, dilation, groups)
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return pointwise(x, packed, bias, padding_, stride_, dilation_, int(groups), "none", [], "")

    return conv


class ShapedConv2d:
    """One convolution's packed kernels by input shape (see the module docstring)."""

    SLOWER = 1.5  # the shared packing is replaced where it is this much slower than a matched one

    def __init__(self, weight, bias, stride, padding, dilation, groups, input_shape: Sequence[int]):
        self.spec = (weight, bias, stride, padding, dilation, groups)
        self.base_shape = tuple(int(s) for s in input_shape)
        self.base = packed_conv2d(*self.spec, input_shape=list(self.base_shape))
        self.by_shape: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {self.base_shape: self.base}

    def for_shape(self, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The kernel to bind for inputs shaped like `like` (timed on zeros: a buffer not yet written
        may hold denormals, which would skew the timing)."""
        shape = tuple(like.shape)
        if shape not in self.by_shape:
            example = torch.zeros_like(like, memory_format=torch.channels_last)
            matched = packed_conv2d(*self.spec, input_shape=list(shape))
            shared, own = _time_call(self.base, example), _time_call(matched, example)
            self.by_shape[shape] = matched if shared > self.SLOWER * own else self.base
        return self.by_shape[shape]


def _time_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """The faster of two timed calls, after one warm-up call (which creates oneDNN's primitive)."""
    with torch.no_grad():
        fn(x)
        best = math.inf
        for _ in range(2):
            start = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - start)
    return best


def _packable(weight: torch.Tensor, input_shape: Sequence[int] | None) -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and input_shape is not None
        and len(input_shape) == 4
        and weight.dim() == 4
        and weight.dtype == torch.float32
        and not weight.requires_grad
    )
