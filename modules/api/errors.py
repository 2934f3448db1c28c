"""A1111-shaped JSON errors: {"error", "detail", "body", "errors"}.

Bad input never becomes a 500: request validation, pydantic errors raised inside handlers and every ValueError
our modules raise for invalid values (RequestError, UnknownSamplerError, UnknownModelError, SettingsError,
ImageDecodeError, UnknownStyleError) answer 422 with a message naming the field. JobFailed (a real engine failure)
answers 500 with the message only.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from modules.jobs import JobFailed
from modules.models.manager import NoCheckpointError


def error_response(status: int, error: str, detail: Any, errors: Any = "",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    content = {"error": error, "detail": detail, "body": "", "errors": errors or detail}
    return JSONResponse(status_code=status, content=jsonable_encoder(content), headers=headers)


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """'width: Input should be a multiple of 8; steps: …' — the field path without the 'body' prefix."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = error.get("msg", "invalid value")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def _plain_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # pydantic puts the offending exception object into `ctx`; keep only what JSON can carry.
    return [{key: error[key] for key in ("loc", "msg", "type") if key in error} for error in errors]


async def _request_validation(_: Request, error: RequestValidationError) -> JSONResponse:
    errors = list(error.errors())
    return error_response(422, "RequestValidationError", describe_validation_errors(errors), _plain_errors(errors))


async def _pydantic_validation(_: Request, error: ValidationError) -> JSONResponse:
    errors = list(error.errors())
    return error_response(422, "ValidationError", describe_validation_errors(errors), _plain_errors(errors))


async def _value_error(_: Request, error: ValueError) -> JSONResponse:
    return error_response(422, type(error).__name__, str(error))


async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
    return error_response(error.status_code, type(error).__name__, error.detail,
                          headers=getattr(error, "headers", None))


async def _no_checkpoint(_: Request, error: NoCheckpointError) -> JSONResponse:
    return error_response(503, "NoCheckpointError", str(error))


async def _job_failed(_: Request, error: JobFailed) -> JSONResponse:
    return error_response(500, "JobFailed", str(error))


async def _unexpected(_: Request, error: Exception) -> JSONResponse:
    # Starlette re-raises after this response, so uvicorn logs the traceback once.
    return error_response(500, type(error).__name__, "internal error; see the server log", str(error))


def install_error_handlers(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException as StarletteHTTPException  # 404/405 from the router

    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ValidationError, _pydantic_validation)
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NoCheckpointError, _no_checkpoint)
    app.add_exception_handler(JobFailed, _job_failed)
    app.add_exception_handler(Exception, _unexpected)
