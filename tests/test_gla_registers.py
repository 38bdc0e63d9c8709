"""scripts/gla_registers.py: the sm_90 register report of the GLA chunk kernels, on a CPU-only machine."""

import importlib.util
from pathlib import Path

import pytest

from kernels import interpreting
from kernels.gla.chunk_bwd import gla_bwd_local_state_kernel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gla_registers.py"
spec = importlib.util.spec_from_file_location("gla_registers", SCRIPT)
gla_registers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gla_registers)


def test_bad_class_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gla_registers.main(["32by64"])
    assert exit_info.value.code == 2
    assert "expected KxV" in capsys.readouterr().err


@pytest.mark.skipif(not gla_registers.CUOBJDUMP.exists(), reason="Triton without its NVIDIA backend tools")
@pytest.mark.skipif(interpreting(), reason="kernels imported under TRITON_INTERPRET=1 are interpreted")
def test_one_kernel_compiles_for_sm90_and_reports_registers():
    constants = dict(H=1, K=16, V=16, BT=16, BK=16, BV=16, REVERSE=False, TRANSPOSE=False,
                     GATE_LOGSIGMOID=False, PREC="tf32")
    regs, spill = gla_registers.resources(gla_bwd_local_state_kernel, constants, arch=90, warps=4, stages=1)
    assert 0 < regs <= 255 and spill >= 0
