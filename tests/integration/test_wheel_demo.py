"""`lensflow stack up` and `lensflow demo` from the installed wheel (tests/wheel.py: a fresh venv outside the
checkout, dependencies from PyPI), run from a folder outside the checkout: the stack's scripts come out of the
package (importlib.resources), and the demo submits the sample photos shipped in it. On the shared stack, in
a namespace of its own (topic prefix, keyspace, consumer group, data dir, ports); ~35 s after the install."""

from __future__ import annotations

import re

from tests.integration.conftest import Namespace


def test_stack_up_and_demo_from_the_wheel(stack, models, installed_wheel, tmp_path):
    ns = Namespace(stack, tmp_path / "data")
    try:
        env = {k: v for k, v in ns.env.items() if k.startswith("LENSFLOW_") and k != "LENSFLOW_STAGES"}
        up = installed_wheel.lensflow("stack", "up", timeout=900, **env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "cassandra schema:" in up.stderr and "stack ready" in up.stderr
        demo = installed_wheel.lensflow("demo", "--no-keep-worker", timeout=900, **env)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "submitting the sample photos shipped with lensflow" in demo.stderr
        assert str(installed_wheel.venv) in demo.stderr  # the package's own copy, not the checkout's
        statuses = re.findall(r"^\S+\s+(complete|partial|failed)\s+[\d.]+s\s+(\S+)$", demo.stdout, re.M)
        assert len(statuses) == 6 and all(st == "complete" for st, _ in statuses), demo.stdout
        assert "Canberra" in demo.stdout  # the metadata stage found its place: geonames prepared from its wheel
        ns.cql  # noqa: B018  (a session, so close() drops the namespace's keyspace)
    finally:
        ns.close()
