"""The README documents every setting with its real default (the table is `lensflow config --markdown`)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_readme_settings_table_matches_the_code():
    table = subprocess.run([sys.executable, "-m", "lensflow.cli", "config", "--markdown"],
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()
    readme = (ROOT / "README.md").read_text()
    missing = [line for line in table if line not in readme]
    assert not missing, "README's settings table is stale; paste `lensflow config --markdown`:\n" + "\n".join(missing)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    head = readme.split("## ", 1)[0]
    assert "make demo" in head and "make test" in head
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_error_codes_table_matches_the_code():
    from lensflow.streams.errors import codes_markdown

    readme = (ROOT / "README.md").read_text()
    missing = [line for line in codes_markdown().splitlines() if line not in readme]
    assert not missing, "README's error-code table is stale; paste lensflow.streams.errors.codes_markdown():\n" + "\n".join(missing)


def test_readme_topic_catalogue_matches_the_topology():
    from lensflow.streams.topology import catalogue_markdown

    readme = (ROOT / "README.md").read_text()
    missing = [line for line in catalogue_markdown().splitlines() if line not in readme]
    assert not missing, "README's topic catalogue is stale; paste lensflow.streams.topology.catalogue_markdown():\n" + "\n".join(missing)
