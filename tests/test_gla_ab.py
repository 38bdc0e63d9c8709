"""scripts/gla_ab.py: an A/B's launch configs become the tree's GLAConfig; a bad one is a usage error."""

import importlib.util
from pathlib import Path

import pytest

from kernels.gla.config import GLAConfig, default_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gla_ab.py"
spec = importlib.util.spec_from_file_location("gla_ab", SCRIPT)
gla_ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gla_ab)


def test_configs_name_chunk_warps_and_any_other_field():
    configs = ["32:2", "64:4:chunk_block_inner=16:dot_operands=bf16"]
    args = gla_ab.parse_args(["--label", "new", "--configs", *configs])
    wide = GLAConfig(chunk_size=64, chunk_warps=4, chunk_block_inner=16, dot_operands="bf16")
    assert args.configs == [GLAConfig(chunk_size=32, chunk_warps=2), wide]
    assert gla_ab.parse_args(["--label", "x"]).configs == [{}]  # each class's default
    assert gla_ab.parse_config("default:state_walk_min_programs=0") == dict(state_walk_min_programs=0)
    assert gla_ab.class_default(64, 64) == default_config(64, 64) != GLAConfig()


@pytest.mark.parametrize("bad", ["64", "64:four", "64:4:no_such_field=1", "64:4:dot_operands=fp8",
                                 "default:no_such_field=1", "default:dot_operands=fp8"])
def test_a_bad_config_is_a_one_line_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gla_ab.parse_args(["--label", "x", "--configs", bad])
    assert exit_info.value.code == 2
    assert f"bad config {bad!r}" in capsys.readouterr().err


def test_rows_are_appended_as_measured_with_one_header(tmp_path):
    out = tmp_path / "ab.csv"
    gla_ab.append_row(out, dict(label="a", T=256, fwd_ms=1.5))
    gla_ab.append_row(out, dict(label="b", T=4096, fwd_ms=2.5))
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == gla_ab.FIELDS and len(lines) == 3
    assert lines[2].startswith("b,") and ",4096," in lines[2]
