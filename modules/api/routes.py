"""The /sdapi/v1 router and its installation into a FastAPI app (error handlers included)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

from modules.api.controlnet import add_controlnet_routes
from modules.api.errors import install_error_handlers
from modules.api.extension_routes import add_extension_listing
from modules.api.extras_routes import add_extras_routes
from modules.api.generation import add_generation_routes
from modules.api.listings import add_listing_routes
from modules.api.scripts import add_script_routes
from modules.api.security import basic_auth_dependency, parse_credentials
from modules.api.settings_routes import add_settings_routes

if TYPE_CHECKING:
    from modules.app import App

API_PREFIX = "/sdapi/v1"


def create_api_router(app: App) -> APIRouter:
    """Every /sdapi/v1 route; with --api-auth each one requires HTTP Basic credentials."""
    credentials = parse_credentials(app.options.api_auth, "--api-auth")
    dependencies = [basic_auth_dependency(credentials)] if credentials else []
    router = APIRouter(prefix=API_PREFIX, tags=["sdapi"], dependencies=dependencies)
    add_generation_routes(router, app)
    add_settings_routes(router, app)
    add_listing_routes(router, app)
    add_extras_routes(router, app)
    add_script_routes(router, app)
    add_extension_listing(router, app)
    return router


def install_api(fastapi_app: FastAPI, app: App) -> None:
    fastapi_app.include_router(create_api_router(app))
    add_controlnet_routes(fastapi_app, app)  # /controlnet/* (the A1111 ControlNet extension's routes)
    install_error_handlers(fastapi_app)
