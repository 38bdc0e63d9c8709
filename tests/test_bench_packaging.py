"""setup.py: it installs no top-level package (`kernels` is also a package on the index), and its
ranges hold what the suite was run with and exclude what is known to break it."""

import runpy
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup_arguments():
    captured = {}
    patch = pytest.MonkeyPatch()
    patch.setattr(setuptools, "setup", lambda **arguments: captured.update(arguments))
    try:
        runpy.run_path(str(REPO / "setup.py"))
    finally:
        patch.undo()
    return captured


def requirements(setup_arguments) -> dict:
    return {Requirement(text).name: Requirement(text) for text in setup_arguments["install_requires"]}


def test_no_top_level_package_is_installed(setup_arguments):
    assert setup_arguments["packages"] == [] and setup_arguments["py_modules"] == []


@pytest.mark.parametrize("package, allowed, excluded", [
    ("numpy", ["2.3.0", "2.3.5"], ["2.4.0", "2.5.2"]),  # Triton 3.6's interpreter fails under 2.4
    ("triton", ["3.6.0"], ["3.7.0", "3.9.0"]),  # never run with the suite
    ("torch", ["2.11.0", "2.13.0"], ["2.14.0", "2.10.0"]),
])
def test_ranges_exclude_what_breaks_the_suite(setup_arguments, package, allowed, excluded):
    specifier = requirements(setup_arguments)[package].specifier
    assert all(specifier.contains(version) for version in allowed), (package, specifier)
    assert not any(specifier.contains(version) for version in excluded), (package, specifier)


def test_the_ci_pins_lie_in_the_ranges(setup_arguments):
    ranges = requirements(setup_arguments)
    for line in (REPO / "requirements-ci.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        pin = Requirement(line)
        if pin.name in ranges:
            version = next(iter(pin.specifier)).version
            assert ranges[pin.name].specifier.contains(version), (pin, ranges[pin.name])
