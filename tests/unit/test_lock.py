"""requirements.lock (what the Docker image installs) pins every runtime dependency of pyproject.toml,
at a version pyproject allows: the two cannot drift apart unnoticed."""

import re
import tomllib

from packaging.requirements import Requirement

from tests.conftest import ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_dependency_is_pinned_within_its_range():
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    for dep in deps:
        name = canonical(dep.name)
        assert name in pins, f"{dep.name} is not pinned in requirements.lock (regenerate it: see its header)"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{dep.name}=={pins[name]} is outside {dep.specifier}"
    for extra in deps[0].extras:  # faust-streaming[rocksdict]: the extra's package is pinned too
        assert canonical(extra) in pins
