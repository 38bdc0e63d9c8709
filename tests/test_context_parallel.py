"""Context-parallel GLA and SREM conv (kernels.gla.context_parallel) against the one-process result.

Each distributed test spawns world_size processes (gloo on the CPU; NCCL for the `gpu` test); every
rank builds the same full float64 inputs from one seed, runs the one-process reference on them and
the context-parallel version on its own block of tokens, and compares its block of the output and
of every input gradient (parameter gradients summed over the ranks) with the reference's.
"""

import functools

import pytest
import torch
import torch.distributed as dist

from distributed import FP64_TOLERANCE, row_block, run_ranks, run_ranks_on_gpus
from gla_cases import FP32_TOLERANCE, make_gates
from helpers import assert_close_rel, rel_err
from kernels.dwconv import depthwise_conv3x3_ref
from kernels.gla import SCAN_ORDERS, chunk_gla_torch
from kernels.gla.context_parallel import (
    LAYOUTS,
    columns_to_rows,
    cp_depthwise_conv3x3,
    cp_gla,
    rows_to_columns,
)

GRID = 8  # an 8 x 8 grid: 64 tokens, 4 rows per rank at 2 ranks, 2 rows at 4
B, H, K, V, D = 2, 2, 4, 3, 5  # D: conv channels


def column_block(x, rank, world_size, grid_size=GRID):
    """Rank's block of the columns layout: the column-major sequence's rank-th segment."""
    column_major = x.unflatten(1, (grid_size, grid_size)).transpose(1, 2).flatten(1, 2)
    return row_block(column_major, rank, world_size)


BLOCK_OF_LAYOUT = {"rows": row_block, "columns": column_block}


def gla_inputs(grid_size, dtype, device, k_dim=K, v_dim=V, seed=0):
    """Full raster GLA inputs q, k, v, g [B, T, H, *] (DiG's gate) and an output direction do."""
    generator = torch.Generator().manual_seed(seed)
    T = grid_size ** 2

    def randn(*shape):
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    g = make_gates((B, T, H, k_dim), "mixed", generator).to(device=device, dtype=dtype)
    inputs = dict(q=randn(B, T, H, k_dim), k=randn(B, T, H, k_dim), v=randn(B, T, H, v_dim), g=g)
    return inputs, randn(B, T, H, v_dim)


def leaves(tensors):
    return {name: x.detach().clone().requires_grad_() for name, x in tensors.items()}


def one_process_gla(q, k, v, g, scan_order, gla_fn=chunk_gla_torch):
    """The one-process result: the whole raster sequence scanned in scan_order."""
    return gla_fn(q, k, v, g, scan_order=scan_order)[0]


def run_gla(fn, inputs, do):
    """o and the gradients of sum(o * do) for the inputs (leaves)."""
    o = fn(**inputs)
    (o * do).sum().backward()
    return o, {name: x.grad for name, x in inputs.items()}


# ---------------------------------------------------------------------- checks run on each rank

def check_gla_scan_orders(rank, world_size, device, group=None):
    full, do = gla_inputs(GRID, torch.float64, device)
    local_gla = functools.partial(chunk_gla_torch, chunk_size=16)  # 1-2 chunks per rank
    for order in SCAN_ORDERS:
        ref, ref_grads = run_gla(functools.partial(one_process_gla, scan_order=order), leaves(full), do)
        for layout in LAYOUTS:
            block = functools.partial(BLOCK_OF_LAYOUT[layout], rank=rank, world_size=world_size)
            local = leaves({name: block(x) for name, x in full.items()})
            o, grads = run_gla(functools.partial(cp_gla, scan_order=order, grid_size=GRID, group=group,
                                                 layout=layout, gla_fn=local_gla), local, block(do))
            case = f"{order} scan, {layout} layout, rank {rank} of {world_size}"
            assert_close_rel(f"{case}: o", o, block(ref), FP64_TOLERANCE)
            for name, grad in grads.items():
                assert_close_rel(f"{case}: d{name}", grad, block(ref_grads[name]), FP64_TOLERANCE)
    if rank > 0:  # the test sees the state passed between ranks: without it rank r > 0 is far off
        block = functools.partial(row_block, rank=rank, world_size=world_size)
        alone, _ = chunk_gla_torch(*(block(full[name]) for name in "qkvg"))
        ref = one_process_gla(**full, scan_order="raster")
        assert rel_err(alone, block(ref)) > 1e-2


def check_layout_exchange(rank, world_size, device):
    x = torch.randn(B, GRID ** 2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows, columns = row_block(x, rank, world_size), column_block(x, rank, world_size)
    assert torch.equal(rows_to_columns(rows, GRID), columns)
    assert torch.equal(columns_to_rows(columns, GRID), rows)
    with pytest.raises(ValueError, match="does not split into"):
        rows_to_columns(torch.ones(B, 9 // world_size, 1), 3)  # 3 rows over 2 or 4 ranks
    with pytest.raises(ValueError, match="ranks must hold"):
        columns_to_rows(torch.ones(B, 7, 1), GRID)  # 7 tokens are not whole rows of 8


def check_conv(rank, world_size, device, group=None):
    generator = torch.Generator().manual_seed(2)
    x, dout = (torch.randn(B, GRID ** 2, D, dtype=torch.float64, generator=generator) for _ in range(2))
    params = dict(taps=torch.randn(D, 3, 3, dtype=torch.float64, generator=generator),
                  bias=torch.randn(D, dtype=torch.float64, generator=generator))
    ref_inputs = leaves(dict(x=x, **params))
    ref = depthwise_conv3x3_ref(**ref_inputs)
    (ref * dout).sum().backward()
    for layout in LAYOUTS:
        block = functools.partial(BLOCK_OF_LAYOUT[layout], rank=rank, world_size=world_size)
        local = leaves(dict(x=block(x), **params))
        out = cp_depthwise_conv3x3(**local, grid_size=GRID, group=group, layout=layout)
        (out * block(dout)).sum().backward()
        case = f"conv, {layout} layout, rank {rank} of {world_size}"
        assert_close_rel(f"{case}: out", out, block(ref), FP64_TOLERANCE)
        assert_close_rel(f"{case}: dx", local["x"].grad, block(ref_inputs["x"].grad), FP64_TOLERANCE)
        for name in params:  # replicated parameters: each rank holds its tokens' share of the gradient
            dist.all_reduce(local[name].grad, group=group)
            assert_close_rel(f"{case}: d{name}", local[name].grad, ref_inputs[name].grad, FP64_TOLERANCE)


def check_all(rank, world_size, device):
    """One spawn per world size for every check: starting 4 processes costs ~3 s on 2 cores."""
    check_layout_exchange(rank, world_size, device)
    check_conv(rank, world_size, device)
    check_gla_scan_orders(rank, world_size, device)
    if world_size == 4:  # two context-parallel groups of 2 side by side, as under data parallelism
        groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group
        pair = groups[rank // 2]
        check_conv(dist.get_rank(pair), 2, device, group=pair)
        check_gla_scan_orders(dist.get_rank(pair), 2, device, group=pair)


def check_triton_against_one_gpu(rank, world_size, device):
    """Triton chunk_gla in fp32 under context parallelism: as accurate as on one GPU (within 2x)."""
    from kernels.gla import chunk_gla

    grid_size = 16 * world_size  # 16 rows per rank, 256 to 1024 tokens per rank
    full, do = gla_inputs(grid_size, torch.float32, device, k_dim=32, v_dim=64)  # DiG's head dims
    full64, do64 = {name: x.double() for name, x in full.items()}, do.double()
    for order in SCAN_ORDERS:
        one_process = functools.partial(one_process_gla, scan_order=order)
        exact, exact_grads = run_gla(one_process, leaves(full64), do64)
        single, single_grads = run_gla(functools.partial(one_process, gla_fn=chunk_gla), leaves(full), do)
        block = functools.partial(row_block, rank=rank, world_size=world_size)
        context_parallel = functools.partial(cp_gla, scan_order=order, grid_size=grid_size, gla_fn=chunk_gla)
        o, grads = run_gla(context_parallel, leaves({name: block(x) for name, x in full.items()}), block(do))
        pairs = [("o", o, single, exact)]
        pairs += [(f"d{name}", grads[name], single_grads[name], exact_grads[name]) for name in grads]
        for name, ours, one_gpu, ref in pairs:
            bound = 2 * rel_err(block(one_gpu), block(ref)) + FP32_TOLERANCE / 10
            assert_close_rel(f"{order} {name} rank {rank}", ours, block(ref), bound)


# -------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("world_size", [2, 4])
def test_context_parallel_equals_one_process(world_size, tmp_path):
    run_ranks(world_size, tmp_path, check_all)


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_context_parallel_triton_on_gpus(world_size, tmp_path, monkeypatch):
    run_ranks_on_gpus(world_size, tmp_path, check_triton_against_one_gpu, monkeypatch)
