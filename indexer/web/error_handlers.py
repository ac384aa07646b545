"""How the web app answers the errors its routes raise: a bad request is a 4xx with a
message, never a 500; a fault of the server's own (its models, its database) a 500,
or a 503 with Retry-After where trying again may help, its reason in the log and not
in the reply. Apart from the routes (``app.py``): they raise, and these say which
status each error is."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from usesearch.errors import (
    AuditOutdatedError,
    CatalogBusyError,
    CatalogUnavailableError,
    ClientGoneError,
    DamagedRowsError,
    EmbeddingsLostError,
    ImageGoneError,
    IndexReadOnlyError,
    MissingExtraError,
    MissingWeightsError,
    ModelOutputError,
    NotFoundError,
    ServerBusyError,
    UsesearchError,
    first_line,
)

from ..catalog import failure_kind
from .schema import validation_error

log = logging.getLogger(__name__)


def add_error_handlers(app: FastAPI) -> None:
    """Each error's status and one-line ``detail`` (``create_app`` adds them first)."""

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(UsesearchError)  # a bad upload or region: the one-line reason
    async def user_error(_: Request, exc: UsesearchError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(MissingExtraError)  # a sound request this server cannot answer as installed
    async def missing_extra(_: Request, exc: MissingExtraError):
        return JSONResponse({"detail": str(exc)}, status_code=501)

    @app.exception_handler(MissingWeightsError)
    async def missing_weights(_: Request, exc: MissingWeightsError):
        return JSONResponse({"detail": str(exc)}, status_code=501)

    @app.exception_handler(ModelOutputError)  # the server's models at fault, not the request
    async def model_fault(_: Request, exc: ModelOutputError):
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.exception_handler(ServerBusyError)
    async def busy(_: Request, exc: ServerBusyError):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(NotFoundError)  # not KeyError: a bug inside a lookup is a 500, not "not found"
    async def not_found(_: Request, exc: NotFoundError):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(IndexReadOnlyError)  # the request is sound: this server cannot write
    async def read_only(_: Request, exc: IndexReadOnlyError):
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(ClientGoneError)  # no one reads it: the status is for the access log
    async def client_gone(_: Request, exc: ClientGoneError):
        return JSONResponse({"detail": str(exc)}, status_code=499)

    @app.exception_handler(AuditOutdatedError)  # the request is sound, the lists it acts on are old
    async def audit_outdated(_: Request, exc: AuditOutdatedError):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(EmbeddingsLostError)  # the server's files, not the request: was a 400 naming them
    @app.exception_handler(DamagedRowsError)
    async def index_damaged(_: Request, exc: UsesearchError):
        log.warning("index files damaged: %s", exc)
        detail = "the index's embedding files are damaged or missing (the server's log says why and what mends it)"
        return JSONResponse({"detail": detail}, status_code=500)

    @app.exception_handler(ImageGoneError)
    async def image_gone(_: Request, exc: ImageGoneError):
        return JSONResponse({"detail": str(exc)}, status_code=410)

    @app.exception_handler(CatalogUnavailableError)  # (an opened index's search: catalog.catalog_errors)
    async def catalog_unreachable(_: Request, exc: CatalogUnavailableError):
        log.warning("database unreachable: %s", exc)
        detail = "the index database cannot be reached; try again later"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(CatalogBusyError)
    async def catalog_busy(_: Request, exc: CatalogBusyError):
        log.warning("database busy: %s", exc)
        return JSONResponse(
            {"detail": "the index database is busy; try again"}, status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(OperationalError)
    async def database_error(_: Request, exc: OperationalError):
        # A missing table or a damaged file was "busy; try again" before: a client
        # retried what no retry mends. The reason goes to the log, not to the client.
        kind = failure_kind(exc)
        log.warning("database %s: %s", kind, first_line(exc.orig or exc))
        if kind == "busy":
            detail, retry = "the index database is busy; try again", "5"
        elif kind == "unreachable":
            detail, retry = "the index database cannot be reached; try again later", "30"
        else:
            return JSONResponse({"detail": "the index database failed (the server's log says why)"}, status_code=500)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": retry})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        # Never echo a whole input back: a 100 KB query would make a 100 KB error.
        errors = [validation_error(e) for e in exc.errors()[:10]]
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
        return JSONResponse({"detail": "; ".join(problems), "errors": errors}, status_code=422)
