"""requirements.lock and locks/*.lock (what the Docker image installs with `pip install --require-hashes`)
pin every runtime dependency of pyproject.toml, at a version pyproject allows, each with its hashes, and
no package at two versions: the files cannot drift apart, or from pyproject, unnoticed. (Whether they are
what locks/compile.py would write today needs PyPI: `locks/compile.py --check`.)"""

import re
import runpy
import tomllib

from packaging.requirements import Requirement

from tests.conftest import ROOT

LOCKS = sorted((ROOT / "locks").glob("*.lock"))
COMPILE = runpy.run_path(str(ROOT / "locks" / "compile.py"))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hashes])} of a compiled requirements file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            assert current, f"{path.name}: a hash before any requirement"
            algo, _, digest = line[len("--hash="):].partition(":")
            assert algo == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest), f"{path.name}: {line}"
            pins[current][1].append(digest)
            continue
        assert not raw[0].isspace() and not line.startswith("-"), f"{path.name}: unexpected line {raw!r}"
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==
        assert spec.operator == "==", f"{path.name}: {line} is not pinned with =="
        current = canonical(req.name)
        assert current not in pins, f"{path.name}: {req.name} twice"
        pins[current] = (spec.version, [])
    return pins


BASE = parse(ROOT / "requirements.lock")


def test_every_dependency_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [Requirement(d) for d in project["dependencies"]]
    # the extras the image always carries (locks/compile.py IMAGE_EXTRAS), where pyproject has them
    for extra in COMPILE["IMAGE_EXTRAS"]:
        deps += [Requirement(d) for d in project.get("optional-dependencies", {}).get(extra, [])]
    for dep in deps:
        name = canonical(dep.name)
        assert name in BASE, f"{dep.name} is not pinned in requirements.lock (regenerate it: see its header)"
        assert dep.specifier.contains(BASE[name][0], prereleases=True), f"{dep.name}=={BASE[name][0]} is outside {dep.specifier}"
    for extra in deps[0].extras:  # faust-streaming[rocksdict]: the extra's package is pinned too
        assert canonical(extra) in BASE


def test_every_pin_has_hashes():
    """pip's --require-hashes refuses a requirement without a hash: every pin has at least one."""
    for path in [ROOT / "requirements.lock", *LOCKS]:
        pins = parse(path)
        assert pins, f"{path.name} pins nothing"
        bare = [name for name, (_, hashes) in pins.items() if not hashes]
        assert not bare, f"{path.name}: no --hash for {bare} (regenerate: locks/compile.py)"


def test_no_package_at_two_versions():
    """The image installs requirements.lock and then locks/*.lock into one venv: a package pinned at another
    version in a later file would replace the first (build.lock is installed first, so it is checked too)."""
    seen = {name: ("requirements.lock", version) for name, (version, _) in BASE.items()}
    for path in LOCKS:
        for name, (version, _) in parse(path).items():
            where, v = seen.setdefault(name, (path.name, version))
            assert v == version, f"{name} is {v} in {where} but {version} in {path.name}"


def test_the_extras_and_variants_have_their_locks():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    for extra in ("s3", "gcs", "heif"):
        (pkg,) = [canonical(Requirement(d).name) for d in optional[extra]]
        lock = ROOT / "locks" / f"extra-{pkg}.lock"
        assert lock.exists() and pkg in parse(lock), f"EXTRA_PACKAGES={pkg} needs {lock.name} (locks/compile.py)"
        assert pkg not in BASE
    image = parse(ROOT / "locks" / "image.lock")
    assert image["opencv-python-headless"][0] == BASE["opencv-python"][0], "headless OpenCV at the lock's opencv-python version"
    assert set(image) == {"opencv-python-headless"}
    cuda = parse(ROOT / "locks" / "cuda.lock")
    assert cuda["onnxruntime-gpu"][0] == COMPILE["ORT_GPU"]
    for dep in map(Requirement, optional.get("gpu", [])):  # pyproject's gpu extra, where it has one
        assert dep.specifier.contains(COMPILE["ORT_GPU"]), f"locks/cuda.lock's onnxruntime-gpu is outside {dep}"
    assert not set(cuda) & set(BASE), "cuda.lock repeats requirements.lock"
    build = parse(ROOT / "locks" / "build.lock")
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for req in map(Requirement, backend):  # lensflow itself is built with --no-build-isolation from build.lock
        assert canonical(req.name) in build and req.specifier.contains(build[canonical(req.name)][0]), req
