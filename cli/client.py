"""The CLI's client of the read service: its URL, a bearer token (LENSFLOW_API_TOKEN, or minted for
--user from the HS256 secret), one-line errors."""

from __future__ import annotations



from lensflow.streams.settings import Settings

from .core import CliError


#: seconds the CLI waits for the read service to answer
API_CALL_TIMEOUT_S = 120.0
#: lifetime of a token the CLI mints for one command
CLI_TOKEN_TTL_S = 300


def api_url(s: Settings) -> str:
    """Where the read service answers: LENSFLOW_API_URL, else http://API_HOST:API_PORT."""
    if s.api_url:
        return s.api_url.rstrip("/")
    from lensflow.api.server import url_of

    return url_of(s)


def api_token(s: Settings, user: str | None) -> tuple[str, str]:
    """(bearer token, its user) for a CLI command: LENSFLOW_API_TOKEN, else one minted for ``user`` from
    the HS256 secret (configured, or the local one), valid a few minutes."""
    import jwt

    from lensflow.api import auth

    if s.api_token is not None:
        token = s.api_token.get_secret_value()
        try:
            sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.InvalidTokenError:
            raise CliError("LENSFLOW_API_TOKEN is not a JWT: get one with `lensflow token issue`") from None
        if user is not None and sub != user:
            raise CliError(f"LENSFLOW_API_TOKEN is {sub!r}'s token, not {user!r}'s: the user comes from the token")
        return token, str(sub)
    if user is None:
        raise CliError("--user is required (or set LENSFLOW_API_TOKEN to a token of the user)")
    try:
        return auth.issue(s, user, CLI_TOKEN_TTL_S), user
    except auth.AuthError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:

        raise CliError(str(exc)) from None


def api_call(s: Settings, method: str, path: str, user: str | None, raw: bool = False, **kwargs):
    """A request to the read service as ``user``. Every failure is a one-line CliError: 503 (a store or
    the models busy or down) says to try again. ``raw``: the response itself (for images)."""
    import httpx

    url = f"{api_url(s)}{path}"
    token, _ = api_token(s, user)
    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {token}"}
    try:
        resp = httpx.request(method, url, timeout=API_CALL_TIMEOUT_S, **kwargs)
    except httpx.TimeoutException:
        raise CliError(f"the read service at {url} did not answer within {API_CALL_TIMEOUT_S:.0f} s: see its log") from None
    except httpx.HTTPError:
        raise CliError(f"no read service answers at {api_url(s)}: start it (`lensflow worker --background` runs it "
                       "locally; `lensflow api` with a Qdrant server)") from None
    if raw and resp.status_code < 400:
        return resp
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CliError(f"the read service at {url} answered HTTP {resp.status_code} without a JSON object: see its log")
    error = str(body.get("error") or "").strip()
    error = error.splitlines()[0] if error else ""
    if resp.status_code == 503:
        retry = resp.headers.get("Retry-After", "")
        raise CliError(f"the read service cannot answer now: {error or 'HTTP 503'} "
                              f"(try again{f' in {retry} s' if retry.isdigit() else ' later'})")
    if resp.status_code >= 400:
        raise CliError(error if error else f"the read service at {url} answered HTTP {resp.status_code}")
    return body
