"""Install the GLA diffusion toolkit: `pip install -e .` (extras: dev, flash, mamba, fla)."""

from setuptools import setup

setup(
    name="dig-gla-toolkit",
    version="0.1.0",
    description="Fast gated-linear-attention (GLA) diffusion backbones (DiG) with DiT and DiS baselines",
    python_requires=">=3.11",
    packages=["kernels", "kernels.gla", "models", "bench"],
    install_requires=[
        "torch>=2.4",
        "triton>=3.2; platform_system == 'Linux'",  # Triton ships Linux wheels only
        "numpy",
        "pandas",
        "matplotlib",
        "nvidia-ml-py",  # pynvml: GPU name and memory in benchmark records
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "ruff"],
        "flash": ["flash-attn"],  # sdist that compiles CUDA code; DiT's flash path otherwise uses SDPA
        "mamba": ["mamba-ssm", "causal-conv1d"],  # DiS's fast selective scan
        "fla": ["flash-linear-attention"],  # fla's chunk_gla as a second GLA backend
    },
)
