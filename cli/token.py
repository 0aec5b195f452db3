"""`lensflow token issue`: a bearer token for the read service."""

from __future__ import annotations

import json
from typing import Optional

import typer


from .app import token_app
from .core import CliError, friendly, settings




@token_app.command("issue")
@friendly
def token_issue(user: str = typer.Option(..., "--user", "-u", help="The token's user (its `sub`)."),
                ttl: str = typer.Option("1h", "--ttl", help="Lifetime: 90s, 15m, 1h, 7d …"),
                scope: Optional[list[str]] = typer.Option(None, "--scope", help="A scope (repeatable): admin."),
                as_json: bool = typer.Option(False, "--json", help="Print {token, user, expires_in, scopes}.")) -> None:
    """Mint a token signed with the HS256 secret (LENSFLOW_API_JWT_SECRET, or the local one, made on
    first use in DATA_DIR/api/jwt-secret). Print it; use it as `Authorization: Bearer <token>`."""

    from lensflow.api import auth

    s = settings()
    try:
        seconds = auth.parse_ttl(ttl)
        token = auth.issue(s, user, seconds, scope or ())
    except auth.AuthError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print(json.dumps({"token": token, "user": user, "expires_in": seconds, "scopes": list(scope or [])}))
    else:
        print(token)
