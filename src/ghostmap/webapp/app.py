"""The label app: a FastAPI application over one scan and one label file.

Routes (all JSON unless said otherwise; errors are ``{"error": "one line"}`` with a 4xx):

=========================  ==========================================================
``GET  /``                 the page (static/index.html); ``/static/*`` its script and style
``GET  /api/state``        scan, classes and keys, labels, counts, queue, current position,
                           undo, training status, preview
``POST /api/label``        ``{"x", "y", "label"}``: label a position (written at once)
``POST /api/skip``         ``{"x", "y"}``: put a position off (to the back of the queue)
``POST /api/undo``         ``{}``: take back the last label or skip
``POST /api/goto``         ``{"x", "y"}``: open any position (e.g. clicked on the overview)
``POST /api/mode``         ``{"mode": "sampler" | "uncertainty"}``: where the queue comes from
``POST /api/train``        ``{}``: train and preview in the background (202)
``GET  /api/train``        training progress
``GET  /api/pattern.png``  ``?x&y&view=raw|network&scale=gamma|log|linear&gamma&lo&hi&cmap``
``GET  /api/overview.png`` virtual bright field, one pixel per probe position
``GET  /api/preview/domain.png``, ``/api/preview/confidence.png``: the preview maps
=========================  ==========================================================

Only the scan and label file given to :func:`create_app` are ever touched: no request
names a path. Request bodies are limited in size and must be JSON (which also keeps
other web sites from posting to the app), the Host header must name this machine (a guard
against DNS rebinding), and every parameter is validated.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Iterable, Literal

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from ghostmap.errors import GhostmapError
from ghostmap.reading import as_scan, open_scan
from ghostmap.training import TrainingOptions

from . import render
from .state import Conflict, LabelSession, NotFound

logger = logging.getLogger(__name__)

__all__ = ["create_app", "STATIC_DIR", "MAX_BODY_BYTES", "LOCAL_HOSTS"]

STATIC_DIR = Path(__file__).with_name("static")
#: Largest request body accepted (a label request is about 40 bytes).
MAX_BODY_BYTES = 4096
#: Host names the app answers to by default (a guard against DNS rebinding).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_MAX_COORD = 2**31 - 1


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers={"Cache-Control": "no-store"})


def _host_name(host_header: str) -> str:
    """The host name of a Host header, without the port ('[::1]:8000' -> '[::1]')."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _RequestGuard:
    """ASGI middleware: a Host header naming this machine (when ``allowed_hosts`` is given), bodies at
    most ``max_body`` bytes, and JSON (``application/json``) for every POST."""

    def __init__(self, app, max_body: int, allowed_hosts: Iterable[str] | None):
        self.app = app
        self.max_body = max_body
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None and _host_name(headers.get("host", "")) not in self.allowed_hosts:
            return await _error(400, "unexpected Host header: the label app answers only to "
                                + ", ".join(sorted(self.allowed_hosts)))(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_body):
            return await _error(413, f"request body too large (at most {self.max_body} bytes)")(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await _error(413, f"request body too large (at most {self.max_body} bytes)")(
                    scope, receive, send)
            if not message.get("more_body", False):
                break
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return await _error(415, "POST requests must send a JSON body (Content-Type: application/json)")(
                scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _Position(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: StrictInt = Field(ge=0, le=_MAX_COORD)
    y: StrictInt = Field(ge=0, le=_MAX_COORD)


class _LabelRequest(_Position):
    label: str = Field(min_length=1, max_length=64)


class _ModeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["sampler", "uncertainty"]


class _Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _validation_message(errors) -> str:
    parts = []
    for e in errors[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def create_app(
    scan,
    labels_path: str | os.PathLike,
    classes: Iterable[str] | None = None,
    budget: int = 50,
    strategy: str = "adaptive",
    step: int | None = None,
    seed: int = 0,
    *,
    training: TrainingOptions | None = None,
    dataset: str | None = None,
    allowed_hosts: Iterable[str] | None = LOCAL_HOSTS,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The label page's FastAPI application for one scan and one label file.

    Every label is written to ``labels_path`` the moment it is given (atomically); skips,
    the undo history and the open position go to a ``.session.json`` file beside it. No
    request names a path: only these two files are ever touched.

    Parameters
    ----------
    scan : str, os.PathLike or array_like
        The scan: a path (opened here and closed when the app shuts down), or anything
        :func:`ghostmap.as_scan` takes.
    labels_path : str or os.PathLike
        The CSV label file to read and write (created if missing).
    classes : iterable of str, optional
        Class names; by default the label file's, or horizontal, vertical, none.
    budget : int, optional
        Labels the sampler proposes in all.
    strategy : {'adaptive', 'random'}, optional
        The sampler's strategy (see :func:`ghostmap.propose`).
    step : int, optional
        Coarse grid step of the adaptive sampler; by default from the scan size and budget.
    seed : int, optional
        The sampler's seed.
    training : TrainingOptions, optional
        Options of "Train and preview" (see :func:`ghostmap.train`).
    dataset : str, optional
        The 4-D dataset inside an HDF5/EMD/zarr file.
    allowed_hosts : iterable of str, optional
        Host header names the app answers to (a guard against DNS rebinding); None
        answers any (for ``--host 0.0.0.0``).
    max_body : int, optional
        Largest request body accepted, in bytes.

    Returns
    -------
    fastapi.FastAPI
        The application; serve it with uvicorn (``ghostmap label`` does).

    Raises
    ------
    GhostmapError
        When the scan or the label file cannot be read.

    Examples
    --------
    >>> import uvicorn
    >>> from ghostmap.webapp import create_app
    >>> app = create_app("scan.h5", "labels.csv", budget=50)  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    session, owned = _open_session(scan, labels_path, dataset, classes=classes, budget=budget, strategy=strategy,
                                   step=step, seed=seed, training=training)
    app = FastAPI(title="ghostmap label", lifespan=_lifespan(session, owned), docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.session = session
    _add_error_handlers(app)
    _add_guards(app, max_body, allowed_hosts)
    _add_page(app)
    _add_label_routes(app, session)
    _add_image_routes(app, session)
    return app


def _open_session(scan, labels_path, dataset: str | None, **options) -> tuple[LabelSession, bool]:
    """The label session, and whether the app owns (opened, and must close) the scan."""
    owned = isinstance(scan, (str, os.PathLike))
    scan = open_scan(scan, dataset=dataset) if owned else as_scan(scan, dataset=dataset)
    try:
        return LabelSession(scan, labels_path, **options), owned
    except BaseException:
        if owned:
            scan.close()
        raise


def _lifespan(session: LabelSession, owned: bool):
    """On shutdown, let a running training finish (briefly) and close a scan the app opened."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        if owned:
            session.wait_for_training(timeout=5)
            session.scan.close()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "one line"}`` with its status code."""

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict):
        return _error(409, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return _error(404, str(exc))

    @app.exception_handler(GhostmapError)
    async def bad_input(request: Request, exc: GhostmapError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        for e in errors:
            e.pop("input", None)  # do not echo what was sent
            e.pop("url", None)
        return _error(422, _validation_message(errors), detail=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(OSError)
    async def disk_error(request: Request, exc: OSError):
        logger.error("could not write: %s", exc, exc_info=exc)
        return _error(500, f"could not write: {exc.strerror or exc}")


def _add_guards(app: FastAPI, max_body: int, allowed_hosts: Iterable[str] | None) -> None:
    """Security headers on every response; Host, size and content-type checks on every request."""

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.add_middleware(_RequestGuard, max_body=max_body, allowed_hosts=allowed_hosts)


def _add_page(app: FastAPI) -> None:
    """The page itself and its script and style."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                       "base-uri 'none'; frame-ancestors 'none'"})


def _add_label_routes(app: FastAPI, session: LabelSession) -> None:
    """The JSON routes: state, label, skip, undo, goto, queue mode, train and preview."""

    @app.get("/api/state")
    def state():
        return session.snapshot()

    @app.post("/api/label")
    def label(request: _LabelRequest):
        session.label(request.x, request.y, request.label)
        return session.snapshot()

    @app.post("/api/skip")
    def skip(request: _Position):
        session.skip(request.x, request.y)
        return session.snapshot()

    @app.post("/api/undo")
    def undo(request: _Empty):
        session.undo()
        return session.snapshot()

    @app.post("/api/goto")
    def goto(request: _Position):
        session.goto(request.x, request.y)
        return session.snapshot()

    @app.post("/api/mode")
    def mode(request: _ModeRequest):
        session.set_mode(request.mode)
        return session.snapshot()

    @app.post("/api/train", status_code=202)
    def train(request: _Empty):
        return session.start_training()

    @app.get("/api/train")
    def training_status():
        return session.training_status()


def _add_image_routes(app: FastAPI, session: LabelSession) -> None:
    """The PNG routes: a pattern with display controls, the overview, the preview maps."""

    @app.get("/api/pattern.png")
    def pattern(
        x: int = Query(ge=0, le=_MAX_COORD),
        y: int = Query(ge=0, le=_MAX_COORD),
        view: Literal["raw", "network"] = "raw",
        scale: Literal["log", "gamma", "linear"] = "gamma",
        gamma: float = Query(0.5, ge=0.05, le=5.0),
        lo: float = Query(0.0, ge=0.0, le=50.0),
        hi: float = Query(99.5, ge=50.0, le=100.0),
        cmap: Literal["magma", "gray", "viridis", "inferno"] = "magma",
    ):
        if not all(math.isfinite(v) for v in (gamma, lo, hi)):
            raise GhostmapError("gamma, lo and hi must be finite numbers")
        if not lo < hi:
            raise GhostmapError(f"lo ({lo}) must be below hi ({hi})")
        image = session.pattern(x, y, view)
        if view == "network":
            scale = "linear"  # already square-rooted and standardised: only the clipping applies
        data = render.colour_png(render.stretch(image, lo, hi, scale, gamma), cmap)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/api/overview.png")
    def overview():
        return Response(session.overview_png(), media_type="image/png")

    @app.get("/api/preview/{kind}.png")
    def preview(kind: Literal["domain", "confidence"]):
        return Response(session.preview_png(kind), media_type="image/png")
