"""Fault injection for the promise tests, loaded by a lensflow process started with this folder on
PYTHONPATH (Python imports ``sitecustomize`` at start-up). It does nothing unless
``LENSFLOW_TEST_FAULTS`` names faults; it never replaces a service, it makes one real call fail the
way a real fault would (see ``tests/integration/faults/inject.py``)."""

import os

if os.environ.get("LENSFLOW_TEST_FAULTS"):
    from tests.integration.faults.inject import install

    install(os.environ["LENSFLOW_TEST_FAULTS"])
