"""Scan orders of a square token grid: which token a GLA scan reads at each sequence position.

DiG's blocks scan the e x e token grid (T = e^2 tokens stored in raster order) in four orders:

    raster           position i reads token p = i
    reversed         p = T - 1 - i
    column           p = (i % e) * e + i // e          (column-major: down each column in turn)
    reversed_column  the column map applied to T - 1 - i

The Triton kernels compute p(i) with index arithmetic when they load and store rows, so the
token tensor never leaves raster order (no flipped or transposed copies). ``scan_index`` gives the
same map as an index tensor for the plain PyTorch implementations, which gather and scatter.
"""

import math

import torch

SCAN_ORDERS = ("raster", "reversed", "column", "reversed_column")


def scan_flags(scan_order: str, reverse: bool = False) -> tuple[bool, bool]:
    """(reverse, transpose) of a scan order; ``reverse=True`` scans that order backwards."""
    if scan_order not in SCAN_ORDERS:
        raise ValueError(f"scan_order must be one of {', '.join(SCAN_ORDERS)}; got {scan_order!r}.")
    order_reversed = scan_order in ("reversed", "reversed_column")
    return order_reversed != bool(reverse), scan_order in ("column", "reversed_column")


def grid_side(T: int, transpose: bool) -> int:
    """Edge e of the token grid (1 when the order needs no grid); ValueError if T is not e^2."""
    if not transpose:
        return 1
    side = math.isqrt(T)
    if side * side != T:
        raise ValueError(f"column scan orders need a square token grid: T={T} is not a perfect square.")
    return side


def scan_index(T: int, scan_order: str, reverse: bool = False, device=None) -> torch.Tensor:
    """[T] int64: the raster token read at each sequence position of the scan (see module doc)."""
    flip, transpose = scan_flags(scan_order, reverse)
    side = grid_side(T, transpose)
    position = torch.arange(T, device=device)
    if flip:
        position = T - 1 - position
    if transpose:
        position = (position % side) * side + position // side
    return position


def to_scan_order(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] in raster order -> the same tokens in scan order (a gathered copy)."""
    return x.index_select(1, index)


def from_scan_order(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of ``to_scan_order``: [B, T, ...] in scan order -> raster order (a scattered copy)."""
    return x.index_select(1, torch.argsort(index))


def gather_for_scan(tensors, scan_order: str, reverse: bool):
    """For the plain implementations: (tensors in the order the scan reads them, the flip a
    sequential scan of those must make, and the index to scatter the output back, or None).
    Raster and reversed orders need no copy: the scan just runs backwards."""
    flip, transpose = scan_flags(scan_order, reverse)
    if not transpose:
        return list(tensors), flip, None
    first = tensors[0]
    index = scan_index(first.shape[1], scan_order, reverse, device=first.device)
    return [to_scan_order(x, index) for x in tensors], False, index
