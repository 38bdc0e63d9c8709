# ruff: noqa  (an archived one-off diagnostic, kept as it ran)
"""Diagnostic run once on the H200 (2026-12-03, walk_diag.csv beside it): where does the state walk's time
go? Times our forward and backward state walks of 9ff53b4 at 4 and 8 warps, 2 and 3 stages, a
prototype walk that reads a precomputed chunk-local gate cumsum (fla's layout of the work; fp32 or bf16
states, tf32 or bf16 dots), and fla's chunk_fwd_h / chunk_bwd_dh, at B*T = 131072, bf16.

    PYTHONPATH=<checkout of 9ff53b4>:<fla-core 0.6.0> python walk_diag.py out.csv

It imports launch_state_walk with 9ff53b4's signature (the gates, not their cumsum); the prototype
became kernels/gla/state_walk.py at 32b01ac."""

import csv
import sys
from dataclasses import replace

import torch
import triton
import triton.language as tl

from kernels.gla.chunk import Launch, launch_state_walk
from kernels.gla.config import default_config


@triton.jit
def local_cumsum_kernel(g, gc, T, gate_scale, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m = (o_t < T)[:, None] & (o_k < K)[None, :]
    off = (i_b * T + o_t).to(tl.int64)[:, None] * H * K + i_h * K + o_k[None, :]
    x = tl.load(g + off, mask=m, other=0.).to(tl.float32)
    x = (tl.minimum(x, 0.0) - tl.log(1 + tl.exp(-tl.abs(x)))) * gate_scale
    x = tl.where(m, x, 0.0)
    tl.store(gc + off, tl.cumsum(x, axis=0), mask=m)


@triton.jit
def walk_gc_kernel(k, v, gc, h, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BF16_DOT: tl.constexpr):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    p_h = h + i_bh.to(tl.int64) * (NT + 1) * K * V + o_k[:, None] * V + o_v[None, :]
    for i_t in range(NT):
        tl.store(p_h + i_t * K * V, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        rows = (i_b * T + o_t).to(tl.int64)
        p_kt = rows[None, :] * H * K + i_h * K + o_k[:, None]
        b_k = tl.load(k + p_kt, mask=m_k[:, None] & m_t[None, :], other=0.)  # [BK, BT]
        b_gc = tl.load(gc + p_kt, mask=m_k[:, None] & m_t[None, :], other=0.)
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_gl = tl.load(gc + (i_b * T + last).to(tl.int64) * H * K + i_h * K + o_k, mask=m_k, other=0.)
        b_v = tl.load(v + rows[:, None] * H * V + i_h * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                      other=0.)
        b_kd = b_k * tl.exp(b_gl[:, None] - b_gc)
        b_h *= tl.exp(b_gl)[:, None]
        if BF16_DOT:
            b_h = tl.dot(b_kd.to(tl.bfloat16), b_v, b_h)
        else:
            b_h = tl.dot(b_kd, b_v.to(tl.float32), b_h, input_precision="tf32")
    tl.store(p_h + NT * K * V, b_h.to(h.dtype.element_ty), mask=m_kv)


def bench(fn):
    ms = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.1, 0.9])
    return ms


def main(out_path):
    torch.manual_seed(0)
    rows = []
    writer = None
    shapes = [(128, 128, 16, 32, 4096), (64, 64, 8, 32, 4096), (32, 64, 6, 32, 4096), (32, 64, 6, 512, 256),
              (128, 128, 16, 8, 16384)]
    try:
        from fla.ops.common.chunk_h import chunk_bwd_dh, chunk_fwd_h
        from fla.ops.utils.cumsum import chunk_local_cumsum
    except ImportError as err:
        print("no fla:", err)
        chunk_fwd_h = None
    with open(out_path, "w", newline="") as f:
        for K, V, H, B, T in shapes:
            dev = "cuda"
            q = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16) / K ** 0.5
            v = torch.randn(B, T, H, V, device=dev, dtype=torch.bfloat16)
            g = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16) + 2.0
            do = torch.randn(B, T, H, V, device=dev, dtype=torch.bfloat16)
            base = default_config(K, V)
            NT = triton.cdiv(T, base.chunk_size)
            h = torch.empty(B * H, NT + 1, K, V, device=dev, dtype=torch.float32)
            dh = torch.empty_like(h)
            gl = torch.empty(B * H, NT, K, device=dev, dtype=torch.float32)

            def record(name, ms, err=""):
                nonlocal writer
                row = dict(K=K, V=V, H=H, B=B, T=T, name=name, ms=round(ms[0], 4), p10=round(ms[1], 4),
                           p90=round(ms[2], 4), rel_err_vs_ours=err)
                print(row, flush=True)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                f.flush()

            ref = None
            for warps in (4, 8):
                for stages in (3, 2):
                    cfg = replace(base, chunk_warps=warps, num_stages=stages)
                    L = Launch(q, v, cfg, False, False, 1 / 16)
                    if not L.walks:
                        continue
                    try:
                        fwd = bench(lambda: launch_state_walk(k, v, g, h, gl, None, 1.0, L, backward=False))
                        if ref is None:
                            ref = h.clone()
                        bwd = bench(lambda: launch_state_walk(q, do, g, dh, gl, None, K ** -0.5, L, backward=True))
                    except Exception as err:  # noqa: BLE001 (a diagnostic: record and go on)
                        print(f"ours w{warps} s{stages}: {type(err).__name__}: {str(err)[:200]}")
                        continue
                    record(f"ours_fwd_walk_w{warps}_s{stages}", fwd)
                    record(f"ours_bwd_walk_w{warps}_s{stages}", bwd)
            gc = torch.empty(B, T, H, K, device=dev, dtype=torch.float32)
            BKc = triton.next_power_of_2(K)
            BT = base.chunk_size
            cum = bench(lambda: local_cumsum_kernel[(NT, B * H)](g, gc, T, 1 / 16, H=H, K=K, BT=BT, BK=BKc))
            record("proto_cumsum", cum)
            for state_dtype, bf16_dot in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, True)):
                hp = torch.empty(B * H, NT + 1, K, V, device=dev, dtype=state_dtype)
                if True:
                    for bk, bv in ((64, 64),):
                        bk, bv = min(bk, BKc), min(bv, triton.next_power_of_2(V))
                        for warps in (4, 8):
                            for stages in (2, 3):
                                grid = (triton.cdiv(K, bk), triton.cdiv(V, bv), B * H)
                                fn = lambda: walk_gc_kernel[grid](k, v, gc, hp, T, NT, H=H, K=K, V=V, BT=BT,  # noqa: E731, B023
                                                                  BK=bk, BV=bv, BF16_DOT=bf16_dot,
                                                                  num_warps=warps, num_stages=stages)
                                try:
                                    ms = bench(fn)
                                except Exception as err:  # noqa: BLE001
                                    print(f"proto: {type(err).__name__}: {str(err)[:200]}")
                                    continue
                                err = ((hp.float() - ref).norm() / ref.norm()).item() if ref is not None else ""
                                name = (f"proto_walk_{'bf16' if state_dtype == torch.bfloat16 else 'fp32'}states_"
                                        f"{'bf16' if bf16_dot else 'tf32'}dot_{bk}x{bv}_w{warps}_s{stages}")
                                record(name, ms, f"{err:.2e}" if err != "" else "")
            if chunk_fwd_h is not None:
                gk = chunk_local_cumsum(g.float(), BT)
                record("fla_cumsum", bench(lambda: chunk_local_cumsum(g.float(), BT)))
                record("fla_chunk_fwd_h", bench(lambda: chunk_fwd_h(k, v, gk=gk, h0=None, output_final_state=True,
                                                                    chunk_size=BT)))
                record("fla_chunk_bwd_dh", bench(lambda: chunk_bwd_dh(q, k, v, do, None, None, K ** -0.5, gk=gk,
                                                                      chunk_size=BT)))
            del q, k, v, g, do, h, dh, gl, gc
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1])
