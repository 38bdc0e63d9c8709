"""Dependencies of the GLA diffusion toolkit: `pip install -e .` (extras: dev, flash, mamba, fla).

It installs no Python package: the code runs from the checkout (`python bench.py`, `python -m
pytest`). Its top-level folders are named kernels/, models/ and bench/, and `kernels` is also the
import name of a package on the index that transformers uses: an installed copy of ours would
replace that one, or be replaced by it. From the checkout, ours comes first on sys.path.

Ranges: lower bounds are the oldest versions the suite was run with; upper bounds exclude the
releases known to break it (Triton 3.6's interpreter, which runs the kernel tests on a CPU, fails
under numpy 2.4: "only 0-dimensional arrays can be converted to Python scalars") and those it was
never run with (Triton 3.7 and later, torch 2.14 and later). An offline GPU machine whose numpy is
newer needs no `pip install` at all: the GPU runs the kernels, not the interpreter.
"""

from setuptools import setup

INSTALL_REQUIRES = [
    "torch>=2.11,<2.14",  # 2.11 on the H200, 2.13 in CI
    "triton>=3.6,<3.7; platform_system == 'Linux'",  # Linux wheels only; 3.6.0 on the H200 and in CI
    "numpy>=2.3,<2.4",  # what Triton 3.6's interpreter (CPU tests) runs under
    "pandas>=3.0",
    "matplotlib>=3.11",
    "nvidia-ml-py>=13",  # pynvml: GPU name and memory in benchmark records
    "tqdm>=4.66",
]

setup(
    name="dig-gla-toolkit",
    version="0.1.0",
    description="Fast gated-linear-attention (GLA) diffusion backbones (DiG) with DiT and DiS baselines",
    python_requires=">=3.11",
    packages=[],  # run from the checkout: see the docstring
    py_modules=[],
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "dev": ["pytest>=9", "pytest-benchmark>=5", "ruff>=0.17"],
        "flash": ["flash-attn"],  # sdist that compiles CUDA code; DiT's flash path otherwise uses SDPA
        "mamba": ["mamba-ssm", "causal-conv1d"],  # DiS's fast selective scan
        "fla": ["flash-linear-attention"],  # fla's chunk_gla as a second GLA backend
    },
)
