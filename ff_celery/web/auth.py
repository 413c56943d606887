"""Who may act: the operator's credentials (a token, or a user and password, set when the
server starts), signed session cookies, and CSRF tokens bound to a session.

A browser signs in once (``POST /login``) and gets an HttpOnly, SameSite=Strict cookie
holding the operator's name, an expiry and a random nonce, signed with HMAC-SHA256 under a
key drawn when the app starts (restarting the server signs everyone out). Every action form
carries a CSRF token derived from the session's nonce under the same key: a page from
another site can neither read it nor forge it. Scripts (a Prometheus scrape) may instead send
``Authorization: Bearer <token>`` or Basic credentials, which no browser adds on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

#: The session cookie's name and lifetime.
SESSION_COOKIE = "ff_console_session"
SESSION_TTL_S = 12 * 3600
#: The form field every action carries.
CSRF_FIELD = "csrf_token"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Operators:
    """The credentials an operator signs in with: a token, a user and password, or both.
    None configured: nobody can act (the console is read-only)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ValueError("an operator user needs a password, and a password a user")
        if self.token is not None and not self.token:
            raise ValueError("the operator token must not be empty")
        if self.password is not None and not self.password:
            raise ValueError("the operator password must not be empty")

    @property
    def configured(self) -> bool:
        return self.token is not None or self.user is not None

    def by_token(self, token: str) -> str | None:
        """The operator's name for a correct token (``token``), else None."""
        return "token" if self.token is not None and _same(token, self.token) else None

    def by_password(self, user: str, password: str) -> str | None:
        """The user for a correct user and password, else None (both compared in constant time)."""
        if self.user is None or self.password is None:
            return None
        user_ok, password_ok = _same(user, self.user), _same(password, self.password)
        return self.user if user_ok and password_ok else None

    def by_header(self, authorization: str) -> str | None:
        """The operator an ``Authorization`` header (Bearer token or Basic) names, else None."""
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return self.by_token(credentials.strip())
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return self.by_password(user, password)
        return None


@dataclass(frozen=True)
class Session:
    operator: str
    expires_at: int
    nonce: str


@dataclass
class Sessions:
    """Signing and checking session cookies and CSRF tokens (a key per process)."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    ttl_s: int = SESSION_TTL_S

    def _mac(self, purpose: str, text: str) -> str:
        return hmac.new(self.key, f"{purpose}|{text}".encode(), hashlib.sha256).hexdigest()

    def issue(self, operator: str) -> str:
        """A cookie value for a session of ``operator`` from now on."""
        body = f"{int(time.time()) + self.ttl_s}|{secrets.token_hex(16)}|{operator}"
        encoded = base64.urlsafe_b64encode(body.encode()).decode()
        return f"{encoded}.{self._mac('session', body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, if its signature is right and it has not expired."""
        encoded, _, mac = (cookie or "").partition(".")
        try:
            body = base64.urlsafe_b64decode(encoded.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not _same(mac, self._mac("session", body)):
            return None
        expires, nonce, operator = body.split("|", 2)
        if int(expires) < time.time():
            return None
        return Session(operator=operator, expires_at=int(expires), nonce=nonce)

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, given: str) -> bool:
        return _same(given, self.csrf_token(session))

    def current(self, connection: HTTPConnection) -> Session | None:
        """The signed-in session of a request, if any."""
        return self.read(connection.cookies.get(SESSION_COOKIE))
