"""The release: the Dockerfile and .github/workflows/release.yml.

* .github/actionlint.sh lints the workflows with actionlint (built from the Go module proxy into
  ~/.cache/lensflow/tools on the first run); when that is impossible this test FAILS with the script's
  message — it never skips. The linter must bite: a misspelt action input and an unknown job output fail;
* the workflow does what its header promises (tag trigger, both variants for amd64 and arm64, SBOM,
  provenance, keyless cosign signatures, the chart pushed as an OCI artifact) and publishes the image the
  chart uses by default;
* the Dockerfile: base pinned by digest, every pip install from a hashed lock with --require-hashes, tini
  as PID 1, OCI labels, and its HEALTHCHECK command, run here against local HTTP servers.
Nothing here builds an image or runs the workflow (no Docker engine, registry or runner is reachable).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
TOOLS = Path(os.environ.get("LENSFLOW_TOOLS_DIR", Path.home() / ".cache" / "lensflow" / "tools"))


# --- actionlint --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def actionlint() -> Path:
    proc = subprocess.run(["bash", str(ROOT / ".github" / "actionlint.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(".github/actionlint.sh failed (needs go: apt-get install -y golang-go, and the Go module "
                    f"proxy the first time):\n{(proc.stdout + proc.stderr)[-6000:]}", pytrace=False)
    assert "clean" in proc.stdout
    return TOOLS / "bin" / "actionlint"


def test_workflows_pass_actionlint(actionlint):
    assert actionlint.exists()


def test_actionlint_bites(actionlint, tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("""
on: {push: {tags: ["v*"]}}
jobs:
  a:
    runs-on: ubuntu-24.04
    steps:
      - uses: docker/build-push-action@v7
        with: {platfroms: linux/amd64}
  b:
    needs: a
    runs-on: ubuntu-24.04
    steps:
      - run: echo "${{ needs.a.outputs.digest }}"
""")
    proc = subprocess.run([str(actionlint), "-no-color", "-shellcheck=", "-pyflakes=", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert '"platfroms" is not defined' in proc.stdout and 'property "digest" is not defined' in proc.stdout


# --- what the workflow does --------------------------------------------------------------------------

def test_release_workflow_builds_signs_and_pushes():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as true
    assert on == {"push": {"tags": ["v*"]}}
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    image = jobs["image"]
    assert {(i["variant"], i["name"]) for i in image["strategy"]["matrix"]["include"]} == {("cpu", "lensflow"), ("cuda", "lensflow-cuda")}
    assert image["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}
    steps = image["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action", "docker/login-action",
                   "sigstore/cosign-installer", "docker/build-push-action"):
        assert action in uses
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))["with"]
    assert build["platforms"] == "linux/amd64,linux/arm64" and build["push"] is True
    assert build["sbom"] is True and build["provenance"] == "mode=max"
    args = dict(line.split("=", 1) for line in build["build-args"].splitlines() if line)
    assert args["VARIANT"] == "${{ matrix.variant }}"
    assert {"BASE_DIGEST", "VERSION", "REVISION", "CREATED", "SOURCE"} <= set(args)
    for arg in ("BASE_DIGEST", "VERSION", "REVISION", "CREATED", "SOURCE", "VARIANT"):
        assert re.search(rf"^ARG {arg}\b", DOCKERFILE, re.M), f"the workflow passes {arg}, the Dockerfile has no such ARG"
    sign = "\n".join(s.get("run", "") for s in steps)
    assert 'cosign sign --yes "$IMAGE@$DIGEST"' in sign and "cosign verify" in sign
    assert image["env"]["IMAGE"].startswith("ghcr.io/")
    chart = jobs["chart"]
    assert chart["needs"] == ["prepare", "image"] and chart["permissions"]["id-token"] == "write"
    script = "\n".join(s.get("run", "") for s in chart["steps"])
    assert "helm package deploy/helm/lensflow" in script and 'helm push "dist/lensflow-$VERSION.tgz" "oci://$CHARTS"' in script
    assert "cosign sign --yes" in script
    assert chart["env"]["CHARTS"].startswith("ghcr.io/")


def test_the_chart_defaults_to_the_published_image():
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "lensflow" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "lensflow" / "Chart.yaml").read_text())
    assert re.fullmatch(r"ghcr\.io/[a-z0-9-]+/lensflow", values["image"]["repository"])
    assert values["image"]["tag"] == "" and values["image"]["digest"] == ""  # the chart's appVersion
    # the workflow's own check of the same (prepare job) reads the first `repository:` under `image:`
    script = yaml.safe_load(WORKFLOW.read_text())["jobs"]["prepare"]["steps"][1]["run"]
    awk = re.search(r"repo=\$\(awk '([^']+)'", script).group(1)
    got = subprocess.run(["awk", awk, str(ROOT / "deploy" / "helm" / "lensflow" / "values.yaml")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got == values["image"]["repository"]
    project = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["version"] == chart["appVersion"] == project, "a tag v<version> must match all three"


# --- the Dockerfile ----------------------------------------------------------------------------------

def test_base_image_pinned_by_digest():
    digest = re.search(r"^ARG BASE_DIGEST=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@\$\{BASE_DIGEST\}$", DOCKERFILE, re.M)
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms == ["${PYTHON_IMAGE}", "build", "${PYTHON_IMAGE}"]


def test_every_pip_install_is_hash_checked():
    installs = re.findall(r"(?:/opt/lensflow/bin/pip install|\$pip)[^;&\n]*", DOCKERFILE)
    assert 'pip="/opt/lensflow/bin/pip install --require-hashes --no-deps"' in DOCKERFILE
    for lock in sorted((ROOT / "locks").glob("*.lock")):
        if lock.name.startswith("extra-"):
            continue  # picked by EXTRA_PACKAGES: locks/extra-$p.lock
        assert any(f"-r locks/{lock.name}" in i for i in installs), f"{lock.name} is not installed"
    assert "-r locks/extra-$p.lock" in DOCKERFILE and "--no-build-isolation -r requirements.lock $extras" in DOCKERFILE
    unchecked = [i for i in installs if i.startswith("/opt/lensflow/bin/pip install") and "--require-hashes" not in i]
    # the one install without hashes is lensflow itself, from the build context (`.`), built offline
    assert unchecked == ["/opt/lensflow/bin/pip install --no-deps --no-build-isolation . \\"], unchecked
    assert "COPY locks/*.lock locks/" in DOCKERFILE
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "locks" not in dockerignore and "requirements.lock" not in dockerignore


def test_tini_is_pid_1_and_the_labels_are_set():
    runtime = DOCKERFILE[DOCKERFILE.index("# --- runtime"):]
    assert re.search(r"apt-get install -y --no-install-recommends [^\n]*\btini\b", runtime)
    assert 'ENTRYPOINT ["tini", "--", "lensflow"]' in runtime and 'CMD ["worker"]' in runtime
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("created", "CREATED"),
                     ("source", "SOURCE"), ("base.name", "PYTHON_IMAGE")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in runtime
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in runtime
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text() or \
        'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def healthcheck_command() -> list[str]:
    m = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", DOCKERFILE, re.M)
    assert m, "no HEALTHCHECK … CMD [exec form]"
    cmd = json.loads(m.group(1))
    assert cmd[:2] == ["python", "-c"]
    return [sys.executable, "-c", cmd[2]]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(status: int):
    handler = type("H", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    s = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = s.server_address[1]
    s.server_close()
    return port


def test_healthcheck_asks_healthz():
    cmd = healthcheck_command()
    ok, stalled = serve(200), serve(503)
    try:
        def run(web, api):
            env = {**os.environ, "LENSFLOW_WEB_PORT": str(web), "LENSFLOW_API_PORT": str(api)}
            return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode

        nothing = free_port()
        assert run(ok.server_address[1], nothing) == 0          # a worker that answers
        assert run(stalled.server_address[1], nothing) == 1     # its event loop stalled: 503
        assert run(nothing, ok.server_address[1]) == 0          # `lensflow api`: its own port
        assert run(nothing, free_port()) == 1                   # nothing listening
    finally:
        ok.shutdown()
        stalled.shutdown()
