"""Waiting for images.analyzed with a progress bar, and one line (or JSON line) per result: shared by
submit, reanalyze and deadletter replay."""

from __future__ import annotations




from .core import progress


def await_analyzed(watch, uploads: list[dict], timeout: float, started: float, quiet: bool) -> dict:
    """Wait (with a progress bar) for the ``images.analyzed`` of each upload's run; closes ``watch``."""
    try:
        with progress(quiet) as bar:
            task = bar.add_task("analyzing", total=len(uploads))
            return watch.wait({u["image_id"]: u["run_id"] for u in uploads}, timeout,
                              advance=lambda: bar.advance(task), started=started)
    finally:
        watch.close()
