"""Bearer tokens of the read service: JWTs whose ``sub`` is the user id (PyJWT).

Verified with an HS256 secret (``LENSFLOW_API_JWT_SECRET``) or an OIDC issuer's JWKS
(``LENSFLOW_API_JWKS_URL`` + ``LENSFLOW_API_AUDIENCE``); ``exp`` and ``sub`` are required. Locally,
with neither configured, a secret is generated on first use into ``DATA_DIR/api/jwt-secret``
(created with ``O_EXCL`` and mode 0600, so two processes starting at once agree on one), and
``lensflow token issue`` signs with it: the CLI and the gallery work with no set-up.

Scopes are the ``scope`` claim, space-separated (RFC 8693 §4.2); ``admin`` opens the operator routes.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from lensflow.streams.errors import StageFailure
from lensflow.streams.records import check_user_id
from lensflow.streams.settings import Settings

#: the scope of operator actions (cross-user reads, re-analysis)
ADMIN = "admin"
#: the algorithms a JWKS key may sign with (never "none", never HS* with a public key)
JWKS_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
#: the longest lifetime `token issue` mints (a year)
MAX_TTL_S = 366 * 24 * 3600


class AuthError(Exception):
    """A request without a usable credential: 401 (``status``) or 403 (a valid token lacking a scope)."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    """Who a request is: the user id (the token's ``sub``) and the token's scopes."""

    user: str
    scopes: frozenset[str] = frozenset()

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes


def secret_file(settings: Settings) -> Path:
    return settings.data_path / "api" / "jwt-secret"


def local_secret(settings: Settings) -> str:
    """The locally generated HS256 secret, made on first use (0600, written once, atomically)."""
    path = secret_file(settings)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        for _ in range(50):
            if (text := path.read_text().strip()):
                return text
            time.sleep(0.02)
        raise
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def uses_local_secret(settings: Settings) -> bool:
    """Whether tokens are checked against the generated local secret (nothing configured)."""
    return settings.api_jwt_secret is None and not settings.api_jwks_url


def hs256_secret(settings: Settings) -> str:
    """The HS256 secret: configured, or the local one. Raises AuthError with JWKS (nothing to sign with)."""
    if settings.api_jwt_secret is not None:
        return settings.api_jwt_secret.get_secret_value()
    if settings.api_jwks_url:
        raise AuthError("tokens come from the OIDC issuer (LENSFLOW_API_JWKS_URL): there is no local secret to "
                        "sign with; get a token from the issuer and set LENSFLOW_API_TOKEN")
    return local_secret(settings)


def parse_ttl(text: str) -> int:
    """Seconds of a lifetime written ``90``, ``90s``, ``15m``, ``1h``, ``7d``; ValueError otherwise."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"not a lifetime: {text!r} (examples: 90s, 15m, 1h, 7d)") from None
    if not 0 < seconds <= MAX_TTL_S:
        raise ValueError(f"a lifetime between 1 s and {MAX_TTL_S // 86400} days, not {text!r}")
    return int(seconds)


def issue(settings: Settings, user: str, ttl_s: int = 3600, scopes: list[str] | tuple[str, ...] = ()) -> str:
    """A token for ``user`` signed with the HS256 secret, valid ``ttl_s`` seconds."""
    try:
        check_user_id(user)
    except StageFailure as exc:
        raise ValueError(exc.message) from None
    now = int(time.time())
    claims = {"sub": user, "iat": now, "nbf": now, "exp": now + int(ttl_s)}
    if scopes:
        claims["scope"] = " ".join(dict.fromkeys(scopes))
    if settings.api_audience:
        claims["aud"] = settings.api_audience
    if settings.api_issuer:
        claims["iss"] = settings.api_issuer
    return jwt.encode(claims, hs256_secret(settings), algorithm="HS256")


class Verifier:
    """Checks bearer tokens for one API process (the JWKS client caches the issuer's keys)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.api_jwks_url, cache_keys=True, lifespan=300, timeout=10) \
            if settings.api_jwks_url else None
        self._secret = None if self._jwks is not None else hs256_secret(settings)

    @property
    def blocking(self) -> bool:
        """Whether ``verify`` may wait on the network (a JWKS key not cached yet): run it off the loop."""
        return self._jwks is not None

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <JWT>`` header, or AuthError (401)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("missing bearer token: send Authorization: Bearer <token> (`lensflow token issue`)")
        s = self.settings
        options = {"require": ["exp", "sub"], "verify_aud": bool(s.api_audience)}
        try:
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
                claims = jwt.decode(token, key, algorithms=JWKS_ALGORITHMS, audience=s.api_audience,
                                    issuer=s.api_issuer, options=options, leeway=30)
            else:
                claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=s.api_audience,
                                    issuer=s.api_issuer, options=options, leeway=30)
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired: get a new one (`lensflow token issue`)") from None
        except jwt.PyJWKClientError as exc:
            raise AuthError(f"the token's signing key is not the issuer's ({type(exc).__name__})") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({type(exc).__name__})") from None
        user = claims.get("sub")
        try:
            check_user_id(user)
        except StageFailure:
            raise AuthError("invalid token: its subject is not a lensflow user id") from None
        scope = claims.get("scope") or ""
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        return Principal(user=user, scopes=scopes)
