"""Interpolation (nearest and bilinear resizing) computed band by band, as ATen computes it whole.

A resized map's output index o reads input indices that ATen derives from o with float32
arithmetic (a scale, an offset of half a pixel, a floor, a clamp). A band of output rows
therefore reads a band of input rows, but not an affine one: `ScaleWindow` names it, and
`resize_band` computes the band's values from that input band alone.

Why not call ATen's op on the input band: ATen computes source positions from the *global*
output index, and a band's output index starts at 0, so the positions (and the float rounding
of the weights) would differ; ATen also picks its kernel by the output's size, which a band
does not share. Here the per-axis indices and weights are reproduced exactly (ATen contracts
`scale * (o + 0.5) - 0.5` into one fused multiply-add; so do we), and so are the weighted sums
of the kernel ATen picks for the whole op: its generic kernel (width, then height, each a fused
multiply-add) or, for outputs whose height + width is at most 128, channels-last maps and
single-threaded RGB, its vectorised kernel (four products per pixel in a fixed fused order,
another order for the channels past the last full vector). Nearest is a pure gather. So a band
is bit-identical to the same rows of the whole op, and per-pixel labels (argmax) computed from
bands never flip. Should a torch release change its kernels, `vector_lanes` notices the
vectorised one; the rest then still agrees to float rounding, like a convolution on a band.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

Interval = tuple[int, int]

NEAREST, NEAREST_EXACT, LINEAR = "nearest", "nearest-exact", "linear"


@dataclass(frozen=True)
class Taps:
    """Per output index: the two input indices it mixes and their weights (w0 + w1 == 1)."""

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor


@dataclass(frozen=True)
class ScaleWindow:
    """Resizing along one axis: which input indices output indices read, exactly as ATen does.

    `scale` is the scale factor ATen was given for this axis (None: it derives the ratio from
    the sizes, in_size / out_size). `needs` is monotone in both ends, like every window.
    """

    mode: str
    in_size: int
    out_size: int
    align_corners: bool = False
    scale: float | None = None

    def needs(self, out: Interval) -> Interval:
        return _needs(self, out[0], out[1])

    def source(self, start: int, stop: int) -> torch.Tensor:
        """Nearest modes: the input index each output index in [start, stop) copies."""
        dst = torch.arange(start, stop, dtype=torch.int64)
        if self.mode == NEAREST and self.out_size == self.in_size:
            return dst
        if self.mode == NEAREST and self.out_size == 2 * self.in_size:
            return dst >> 1  # ATen special-cases an exact doubling
        ratio = _ratio(self.in_size, self.out_size, self.scale)
        if self.mode == NEAREST:
            src = dst.to(torch.float32) * ratio
        else:  # (o + 0.5) * ratio in double, then floorf of the float: ATen's nearest-exact
            src = ((dst.to(torch.float64) + 0.5) * float(ratio)).to(torch.float32)
        return src.floor().to(torch.int64).clamp_max(self.in_size - 1)

    def taps(self, start: int, stop: int) -> Taps:
        """Linear mode: the taps of output indices [start, stop) (ATen's compute_source_index_and_lambda)."""
        dst = torch.arange(start, stop, dtype=torch.int64)
        if self.out_size == self.in_size:  # ATen copies: index o, weights (1, 0)
            return Taps(dst, dst, torch.ones(len(dst)), torch.zeros(len(dst)))
        f32 = torch.float32
        if self.align_corners:
            ratio = torch.tensor(float(self.in_size - 1), dtype=f32) / (self.out_size - 1) if self.out_size > 1 else 0.0
            src = dst.to(f32) * ratio
        else:
            ratio = _ratio(self.in_size, self.out_size, self.scale)
            half = dst.to(f32) + 0.5  # exact below 2**24
            # one rounding of scale * (o + 0.5) - 0.5: a fused multiply-add, as compiled in ATen
            src = (half.to(torch.float64) * float(ratio) - 0.5).to(f32).clamp_min(0.0)
        i0 = src.floor().to(torch.int64).clamp_max(self.in_size - 1)
        w1 = (src - i0.to(f32)).clamp(0.0, 1.0)
        i1 = i0 + (i0 < self.in_size - 1).to(torch.int64)
        return Taps(i0, i1, 1.0 - w1, w1)


def _ratio(in_size: int, out_size: int, scale: float | None) -> torch.Tensor:
    """ATen's compute_scales_value in float32: 1 / scale when given, else in / out."""
    if scale is not None and scale > 0:
        return torch.tensor(1.0 / scale, dtype=torch.float32)
    return torch.tensor(float(in_size), dtype=torch.float32) / out_size


@functools.lru_cache(maxsize=4096)
def _needs(window: ScaleWindow, a: int, b: int) -> Interval:
    """From the first input index output a reads to one past the last one output b - 1 reads.

    Each end depends on one end of the band (as for an affine window), so both are monotone;
    planners ask the same bands many times, hence the cache (the window is a frozen value).
    """
    n = window.out_size
    lo = window.in_size if a >= n else _reads(window, a)[0]
    hi = 0 if b <= 0 else _reads(window, min(b, n) - 1)[1] + 1
    return lo, hi


def _reads(window: ScaleWindow, o: int) -> tuple[int, int]:
    """The first and last input index output index `o` reads."""
    if window.mode == LINEAR:
        taps = window.taps(o, o + 1)
        return int(taps.i0[0]), int(taps.i1[0])
    src = int(window.source(o, o + 1)[0])
    return src, src


def resize_band(
    x: torch.Tensor, windows: tuple[ScaleWindow, ScaleWindow], axis: int, start: int, out: Interval
) -> torch.Tensor:
    """Output indices `out` along `axis` (2: rows, 3: cols) of the resized NCHW map.

    `x` holds input indices [start, ...) along `axis` (at least what `windows[axis - 2].needs(out)`
    names) and the whole other axis. `windows` are the (height, width) windows of the op.
    """
    spans = [(0, w.out_size) for w in windows]
    spans[axis - 2] = out
    offsets = [0, 0]
    offsets[axis - 2] = start
    if windows[0].mode != LINEAR:
        for d in (3, 2):  # a gather per axis: bit-identical to ATen whatever the order
            x = x.index_select(d, windows[d - 2].source(*spans[d - 2]) - offsets[d - 2])
        return x
    width, height = windows[1].taps(*spans[1]), windows[0].taps(*spans[0])
    if _vectorised(x, windows):
        return _mix_four(x, height, width, offsets, vector_lanes())
    rows = _mix(x, 3, width, offsets[1], (1, -1))  # ATen's generic kernel: width inside,
    return _mix(rows, 2, height, offsets[0], (-1, 1))  # height outside


def _vectorised(x: torch.Tensor, windows: tuple[ScaleWindow, ScaleWindow]) -> bool:
    """Does ATen resize the whole map with its vectorised kernel (upsample_bilinear2d_kernel_impl_float)?

    It does for channels-last maps of more than 3 channels (a band of one has its channels
    innermost), for outputs whose height + width is at most 128, and for 3 channels on one thread.
    """
    channels = x.shape[1]
    channels_last = channels > 3 and x.dim() == 4 and x.stride(1) == 1
    small = windows[0].out_size + windows[1].out_size <= 128
    return channels_last or small or (channels == 3 and torch.get_num_threads() == 1)


def _mix(x: torch.Tensor, dim: int, taps: Taps, offset: int, view: tuple[int, int]) -> torch.Tensor:
    """fma(x[i0], w0, x[i1] * w1) along `dim`: the order and rounding of ATen's generic kernel."""
    w0, w1 = (w.to(x.dtype).view(*view) for w in (taps.w0, taps.w1))
    far = x.index_select(dim, taps.i1 - offset).mul_(w1)  # in place: two full-size buffers, not four
    return _fma(x.index_select(dim, taps.i0 - offset), w0, far)


def _mix_four(x: torch.Tensor, height: Taps, width: Taps, offsets: list[int], lanes: int | None) -> torch.Tensor:
    """ATen's vectorised kernel: per pixel, four corners times products of the axis weights.

    Channels in full vectors sum fma(x00, w00, fma(x01, w01, fma(x11, w11, x10 * w10))); the
    channels after the last full vector take the scalar loop's fma(x11, w11, fma(x10, w10,
    fma(x00, w00, x01 * w01))).
    """
    rows = [x.index_select(2, i - offsets[0]) for i in (height.i0, height.i1)]
    x00, x01, x10, x11 = (r.index_select(3, i - offsets[1]) for r in rows for i in (width.i0, width.i1))
    h0, h1 = (w.to(x.dtype).view(-1, 1) for w in (height.w0, height.w1))
    v0, v1 = (w.to(x.dtype).view(1, -1) for w in (width.w0, width.w1))
    w00, w01, w10, w11 = h0 * v0, h0 * v1, h1 * v0, h1 * v1
    vector = _fma(x00, w00, _fma(x01, w01, _fma(x11, w11, x10 * w10)))
    full = x.shape[1] - x.shape[1] % lanes if lanes else x.shape[1]
    if full == x.shape[1]:
        return vector
    t00, t01, t10, t11 = (t[:, full:] for t in (x00, x01, x10, x11))
    tail = _fma(t11, w11, _fma(t10, w10, _fma(t00, w00, t01 * w01)))
    return torch.cat([vector[:, :full], tail], dim=1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c rounded once, as the fused multiply-adds compiled into ATen's kernels round.

    May write the result into `c` (every caller passes a temporary it no longer needs).
    """
    if a.dtype != torch.float32:  # no exact emulation for other dtypes: round twice
        return a * b + c
    if _addcmul_is_fused():
        return c.addcmul_(a, b) if c.shape == torch.broadcast_shapes(a.shape, b.shape, c.shape) else c.addcmul(a, b)
    return _fma_exact(a, b, c)


def _fma_exact(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # a float32 product is exact in float64, and adding a float32 to it rounds at most far below
    # float32's precision: the cast back is then the single rounding of a fused multiply-add
    return a.to(torch.float64).mul_(b.to(torch.float64)).add_(c).to(torch.float32)


@functools.lru_cache(maxsize=1)
def _addcmul_is_fused() -> bool:
    """Does torch.addcmul round once (a fused multiply-add, 16x faster than emulating one)?

    Checked once against the float64 emulation on vector-sized and odd-sized inputs alike.
    """
    generator = torch.Generator().manual_seed(0)
    for n in (7, 1024 + 13):
        a, b, c = (torch.randn(3, n, generator=generator) for _ in range(3))
        for bb in (b, b[:1]):  # elementwise and broadcast weights
            if not torch.equal(c.clone().addcmul_(a, bb), _fma_exact(a, bb, c)):
                return False
    return True


@functools.lru_cache(maxsize=1)
def vector_lanes() -> int | None:
    """How many float32 channels ATen's vectorised resize kernel takes per vector (8 on AVX2).

    Measured once against ATen itself on a tiny map, so that a torch build with other vectors
    (or other kernels) is noticed instead of assumed; None when no width reproduces it.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 24, 3, 4, generator=generator)
    windows = (ScaleWindow(LINEAR, 3, 5), ScaleWindow(LINEAR, 4, 7))
    want = torch.ops.aten.upsample_bilinear2d.vec(x, [5, 7], False, None)
    height, width = windows[0].taps(0, 5), windows[1].taps(0, 7)
    for lanes in (8, 16, 4):
        if torch.equal(_mix_four(x, height, width, [0, 0], lanes), want):
            return lanes
    return None
