"""The install is what the README promises: pins hold, pip is consistent, conda and pip agree."""

import importlib.metadata
import re
import subprocess
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_reqs = {str(Requirement(d)) for d in pip_deps if d != "-e ."}
    project = pyproject()
    pip_reqs = {str(Requirement(d)) for d in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert conda_reqs == pip_reqs
    assert "-e ." in pip_deps  # the conda env installs the package itself
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert SpecifierSet(project["requires-python"]).contains(python.split("=")[1] + ".0")


def test_constraints_agree_with_pyproject():
    deps = {Requirement(d).name: Requirement(d).specifier for d in pyproject()["dependencies"]}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert deps[req.name] == req.specifier, req.name


def test_installed_versions_honour_pins():
    for dep in pyproject()["dependencies"]:
        req = Requirement(dep)
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} violates {req}"


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_torch_is_not_pulled_twice():
    """A loose setuptools pin once made pip swap the CPU torch for a CUDA one plus nvidia wheels."""
    names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in importlib.metadata.distributions()}
    if "+cpu" in importlib.metadata.version("torch"):
        assert not {n for n in names if n.startswith("nvidia-")}
