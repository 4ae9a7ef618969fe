"""The installed libraries and the repo's constraints file stay inside pyproject.toml's ranges, and the libraries
whose minor releases change behaviour here have an upper bound."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
#: Minor releases of these changed behaviour this project depends on (DSPy's LM interface, generation, the
#: bitsandbytes CPU kernels, TRL's SFT masking, PEFT adapters, Optuna's samplers and storages).
UPPER_BOUNDED = ("dspy", "transformers", "trl", "peft", "bitsandbytes", "optuna")


def requirements() -> dict[str, Requirement]:
    """Every third-party requirement of the package and its extras, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    reqs = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in reqs if canonicalize_name(r.name) != "medjp-agent"}


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = Version(pinned.strip())
    return pins


def test_behaviour_changing_libraries_have_an_upper_bound():
    reqs = requirements()
    for name in UPPER_BOUNDED:
        operators = {spec.operator for spec in reqs[name].specifier}
        assert operators & {"<", "<=", "~=", "=="}, f"{name} has no upper bound"


def test_installed_versions_are_inside_pyprojects_ranges():
    outside = []
    for name, req in requirements().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            assert name not in UPPER_BOUNDED, f"{name} is not installed"
            continue
        if not req.specifier.contains(installed, prereleases=True):
            outside.append(f"{name} {installed} (pyproject: {req.specifier})")
    assert not outside, "installed outside pyproject.toml's ranges: " + "; ".join(outside)


def test_constraints_pin_every_requirement_inside_its_range():
    pins = constraints()
    for name, req in requirements().items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt: {name} {pins[name]} is " \
                                                                     f"outside pyproject's {req.specifier}"
    assert not pins["torch"].local, "a local tag (+cpu) would refuse the CUDA build of the same torch release"
