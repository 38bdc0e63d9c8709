"""The chunk state scan (kernels/gla/state_scan.py) against a float64 loop over the chunks.

It scans groups of 16 chunks with an associative scan and carries one state between groups, so the
cases cross group boundaries (17 and 40 chunks, not multiples of 16) in both directions, with and
without a starting state, and split K and V into tiles that do not divide them. The fp32 scan of
<= 40 multiply-adds per element rounds to ~1e-7; 1e-6 leaves room for the tree's different order.
"""

import pytest
import torch

from helpers import TRITON_DEVICE, needs_triton_device, rel_err
from kernels.gla.chunk import launch_state_scan
from kernels.gla.config import GLAConfig

SCAN_TOLERANCE = 1e-6


def scan_ref(x, gl, x0, backward):
    """The recurrence of chunk_state_scan_kernel's docstring, one chunk at a time, in float64."""
    x, gl = x.double().clone(), gl.double()
    NT = gl.shape[1]
    start = torch.zeros_like(x[:, 0]) if x0 is None else x0.double().reshape(x[:, 0].shape)
    decay = gl.exp()[..., None]  # [BH, NT, K, 1]
    if backward:
        x[:, NT] = start
        for c in reversed(range(NT)):
            x[:, c] = decay[:, c] * x[:, c + 1] + x[:, c]
    else:
        x[:, 0] = start
        for c in range(NT):
            x[:, c + 1] = decay[:, c] * x[:, c] + x[:, c + 1]
    return x


@needs_triton_device
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("NT, K, V, tile_k, tile_v, with_x0", [
    (1, 16, 16, 8, 32, True),
    (16, 24, 40, 8, 16, False),
    (17, 32, 64, 16, 32, True),
    (40, 24, 40, 16, 16, True),
])
def test_scan_matches_the_chunk_loop(NT, K, V, tile_k, tile_v, with_x0, backward):
    device = TRITON_DEVICE
    generator = torch.Generator().manual_seed(NT * 1000 + K)
    BH = 2
    x = torch.randn(BH, NT + 1, K, V, generator=generator).to(device)
    # chunk log decays: mild, and one chunk per head that nearly resets the state (exp(-30))
    gl = -torch.rand(BH, NT, K, generator=generator) * 2
    gl[:, NT // 2] = -30.0
    gl = gl.to(device)
    x0 = torch.randn(BH, K, V, generator=generator).to(device) if with_x0 else None
    expected = scan_ref(x, gl, x0, backward)
    launch_state_scan(x, gl, x0, backward, GLAConfig(state_block_k=tile_k, state_block_v=tile_v))
    assert rel_err(x, expected) < SCAN_TOLERANCE
