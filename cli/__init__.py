"""The `lensflow` command line (typer + rich), an edge above the runtime (``streams/``) and the stages:
a package of command modules over one small shared core (``core``: consoles and errors; ``events``:
waiting for images.analyzed; ``supervise``: background processes; ``client``: the read service).
Every failure is one clear line on stderr and a non-zero exit code, never a traceback (set
LENSFLOW_DEBUG=1 to get the traceback).

Exit codes: 0 ok; 1 `submit --wait` finished but some image failed; 2 usage or runtime error;
3 `stack status`: a service is not running; 4 `submit --wait` timed out.
"""

from __future__ import annotations

from . import stack, worker, submit, show, search, token, models, meta, demo, deadletter  # noqa: I001  (the order of --help)
from .app import app

#: the command modules: importing them registers their commands on ``app``
COMMANDS = (stack, worker, submit, show, search, models, token, meta, demo, deadletter)


def main() -> None:
    app()
