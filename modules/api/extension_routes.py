"""Extensions over HTTP: GET /sdapi/v1/extensions (A1111 shape) and the routers extensions add, each mounted under
its own prefix, after the core routes and never over them (a clash disables that extension)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute, Mount

from modules.api.security import basic_auth_dependency, parse_credentials
from modules.extensions.host import ExtensionRecord
from modules.extensions.registry import RegistrationError, RouteSpec

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


class ExtensionItem(BaseModel):
    """A1111 /sdapi/v1/extensions entry; `status` and `error` are ours (why an extension is not running)."""

    name: str
    remote: str | None = Field(None, description="git remote of the extension's own checkout, if any")
    branch: str | None = None
    commit_hash: str | None = None
    version: str = Field(description="the manifest's version")
    commit_date: int | None = Field(None, description="unix time of the checked-out commit")
    enabled: bool
    status: str = Field(description="enabled, disabled, failed or 'restart to load'")
    error: str = ""


def extension_item(record: ExtensionRecord) -> ExtensionItem:
    git = record.git
    return ExtensionItem(name=record.name, remote=git.remote, branch=git.branch, commit_hash=git.commit_hash,
                         version=record.manifest.version if record.manifest else "", commit_date=git.commit_date,
                         enabled=record.enabled, status=record.status, error=record.problem)


def add_extension_listing(router: APIRouter, app: App) -> None:
    @router.get("/extensions", response_model=list[ExtensionItem], summary="Installed extensions and their status")
    def extensions() -> list[ExtensionItem]:
        return [extension_item(record) for record in app.extensions.records()]


def route_keys(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) of every route, mounts as path prefixes (method "*")."""
    keys: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, APIRoute):
            keys |= {(prefix + route.path, method) for method in route.methods}
        elif isinstance(route, Mount):
            keys.add((prefix + route.path, "*"))
        elif hasattr(route, "path"):
            keys.add((prefix + route.path, "*"))
    return keys


def clashes(existing: set[tuple[str, str]], spec: RouteSpec) -> list[str]:
    """The extension's routes that an existing route (or mount) already serves."""
    mounts = [path.rstrip("/") + "/" for path, method in existing if method == "*"]
    return sorted(f"{method} {path}" for path, method in route_keys(spec.router.routes, f"/{spec.prefix}")
                  if (path, method) in existing or (path, "*") in existing
                  or any(path.startswith(mount) for mount in mounts))


def install_extension_routes(fastapi_app: FastAPI, app: App) -> list[str]:
    """Include each enabled extension's routers under /<prefix> (with --api-auth when set); returns the prefixes."""
    credentials = parse_credentials(app.options.api_auth, "--api-auth")
    dependencies = [basic_auth_dependency(credentials)] if credentials else []
    mounted = []
    for spec in app.extensions.routes():
        taken = clashes(route_keys(fastapi_app.router.routes), spec)
        if taken:
            app.extensions.fail(spec.extension, "add_api_routes",
                                RegistrationError(f"routes already served: {', '.join(taken[:5])}"))
            continue
        fastapi_app.include_router(spec.router, prefix=f"/{spec.prefix}", dependencies=dependencies)
        mounted.append(spec.prefix)
    return mounted
