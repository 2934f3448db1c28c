"""HTTP guards: Basic auth for the API, body-size limit, Host allow-list (DNS rebinding), Origin/Content-Type (CSRF).

See shared/notes/security.md §4–§5. Gradio's `auth` protects only Gradio's own routes, so /sdapi has its own check.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

MAX_BODY_BYTES = 64 * 1024 * 1024
LOCAL_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PROTECTED_PREFIXES = ("/sdapi/", "/controlnet/", "/internal/")  # our own routes (not Gradio's)
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Credentials = list[tuple[str, str]]
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def parse_credentials(text: str | None, flag: str) -> Credentials:
    """'user:pass[,user2:pass2]' → [(user, pass), …]; a malformed entry is a start-up error naming the flag."""
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{flag} expects user:password[,user:password...], got an entry without both parts")
        pairs.append((user, password))
    return pairs


def credentials_match(credentials: Credentials, user: str, password: str) -> bool:
    """Constant-time comparison against every pair (no early exit that would leak which part was wrong)."""
    found = False
    for known_user, known_password in credentials:
        user_ok = secrets.compare_digest(user.encode(), known_user.encode())
        password_ok = secrets.compare_digest(password.encode(), known_password.encode())
        found |= user_ok and password_ok
    return found


def basic_auth_dependency(credentials: Credentials) -> Any:
    """A FastAPI dependency answering 401 + WWW-Authenticate unless the request carries valid Basic credentials."""
    scheme = HTTPBasic(auto_error=False)

    def require_credentials(given: HTTPBasicCredentials | None = Depends(scheme)) -> None:
        if given is None or not credentials_match(credentials, given.username, given.password):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

    return Depends(require_credentials)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than {limit} bytes")


def _hostname(host_header: str) -> str:
    """'127.0.0.1:7860' → '127.0.0.1'; '[::1]:7860' → '::1'."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


class RequestGuard:
    """Pure ASGI middleware (no buffering of bodies, works for Gradio's streaming routes too)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES,
                 allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # None = any Host (listening on the LAN or behind a share tunnel, the names are not known in advance)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            if scope["type"] == "http":
                await _send_json(send, *refusal)
            return  # a refused websocket is simply not accepted
        if scope["type"] == "http":
            receive = self._limited(receive)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return 403, "HostNotAllowed", f"Host {host!r} is not allowed (the server listens on localhost only)"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return 413, "BodyTooLarge", f"request body is larger than {self.max_body_bytes} bytes"
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if scope["type"] != "http" or method not in STATE_CHANGING_METHODS or not path.startswith(PROTECTED_PREFIXES):
            return None
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, "CrossOriginRefused", f"cross-site request from origin {origin!r} refused"
        has_body = (length.isdigit() and int(length) > 0) or "transfer-encoding" in headers
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and content_type != "application/json" and not content_type.endswith("+json"):
            return 415, "UnsupportedMediaType", "request bodies must be JSON (Content-Type: application/json)"
        return None

    def _limited(self, receive: Callable) -> Callable:
        """Count streamed bytes too (chunked bodies have no Content-Length)."""
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive


async def _send_json(send: Callable, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail, "body": "", "errors": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
