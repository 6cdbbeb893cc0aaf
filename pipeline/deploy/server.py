"""The HTTP server of a deploy folder: FastAPI on uvicorn, onnxruntime underneath, dynamic batching between them.

FastAPI + uvicorn: both maintained, asyncio-native (one process holds the model once and batches across requests
without locks), and small; TorchServe is unmaintained, Triton needs its own model repository and a C++ server.
Bodies are read and checked here rather than by a pydantic model so that each mistake gets its own status and
sentence (and a body over ``max_bytes`` is refused before it is read whole).

Endpoints: ``POST /v1/predict {"texts": [...]}``, ``GET /health``, ``GET /metrics`` (Prometheus text). SIGTERM or
SIGINT: the listening socket closes, requests that arrive on open connections get 503, the ones in flight are
answered (up to ``shutdown_timeout_s``), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import time
from types import SimpleNamespace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from pipeline.deploy.batcher import Batcher
from pipeline.deploy.serve_metrics import ServeMetrics

log = logging.getLogger("pipeline.serve")


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _json_kind(v) -> str:
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if v is None else kinds.get(type(v), type(v).__name__)


async def read_texts(request: Request, max_bytes: int, max_texts: int) -> list[str]:
    """The checked ``texts`` of a predict request, or BadRequest saying what is wrong."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise BadRequest(
            413, "too_large", f"the body has {int(length):,} bytes; the limit is {max_bytes:,} (max_bytes)"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(413, "too_large", f"the body is over {max_bytes:,} bytes (max_bytes)")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, "malformed_json", f'the body is not valid JSON ({e}); send {{"texts": ["..."]}}') from e
    if not isinstance(doc, dict):
        raise BadRequest(400, "not_an_object", f'the body is a JSON {_json_kind(doc)}; send {{"texts": ["..."]}}')
    if "texts" not in doc:
        raise BadRequest(
            422, "missing_texts", f'missing "texts" (the body has {sorted(doc)}): send {{"texts": ["..."]}}'
        )
    unknown = sorted(set(doc) - {"texts"})
    if unknown:
        raise BadRequest(422, "unknown_key", f'unknown key(s) {unknown}: the body holds only "texts"')
    texts = doc["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, "not_a_list", f'"texts" is a JSON {_json_kind(texts)}; it must be a list of strings')
    if not texts:
        raise BadRequest(422, "empty_texts", '"texts" is empty: send at least one text')
    if len(texts) > max_texts:
        raise BadRequest(413, "too_many_texts", f"{len(texts)} texts; the limit is {max_texts} a request (max_texts)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadRequest(422, "not_a_string", f"texts[{i}] is not a string but a JSON {_json_kind(t)}")
    return texts


def create_app(predictor, cfg, token: str | None, on_ready=None) -> FastAPI:
    metrics = ServeMetrics()
    batcher = Batcher(predictor.predict, cfg.max_batch, cfg.max_wait_ms / 1000, metrics)
    state = SimpleNamespace(draining=False, accepted=0, answered=0, refused=0)
    about = {"variant": predictor.variant, "task": predictor.info["task"]["name"], "type": predictor.type}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        if on_ready:
            on_ready()
        yield
        await batcher.stop()
        await task
        batcher.pool.shutdown()

    app = FastAPI(lifespan=lifespan, title="bertrun", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    def error(status: int, reason: str, message: str, t0: float | None = None, **headers) -> JSONResponse:
        if t0 is not None:
            metrics.answered(status, time.perf_counter() - t0, reason)
        return JSONResponse({"error": message, "reason": reason}, status_code=status, headers=headers or None)

    def unauthorized(request: Request) -> bool:
        if token is None:
            return False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode())

    @app.post("/v1/predict")
    async def predict(request: Request):
        t0 = time.perf_counter()
        if state.draining:
            state.refused += 1
            return error(
                503, "shutting_down", "the server is shutting down: not taking new requests", t0, connection="close"
            )
        if unauthorized(request):
            return error(
                401,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer ...)",
                t0,
                **{"www-authenticate": "Bearer"},
            )
        try:
            texts = await read_texts(request, cfg.max_bytes, cfg.max_texts)
        except BadRequest as e:
            return error(e.status, e.reason, e.message, t0)
        state.accepted += 1
        metrics.inflight += 1
        try:
            results = await batcher.submit(texts)
        except Exception as e:  # noqa: BLE001 - a failed model call fails this request, never the server
            log.exception("prediction failed")
            state.answered += 1
            return error(500, "model_error", f"the model call failed: {type(e).__name__}: {e}", t0)
        finally:
            metrics.inflight -= 1
        body = {**about, "results": results}
        cut = [i for i, r in enumerate(results) if r["truncated"]]
        if cut:
            body["warnings"] = [
                f"texts {cut} are over {predictor.max_len} tokens: truncated, only their start was read"
            ]
        metrics.answered(200, time.perf_counter() - t0)
        state.answered += 1
        return JSONResponse(body)

    @app.get("/health")
    async def health():
        status = "shutting_down" if state.draining else "ok"
        body = {"status": status, **about, "labels": predictor.names, "max_batch": cfg.max_batch}
        return JSONResponse(body, status_code=503 if state.draining else 200)

    @app.get("/metrics")
    async def prometheus(request: Request):
        if unauthorized(request):
            return error(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)")
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error(500, "internal", f"internal error: {type(exc).__name__}")

    return app


class Server(uvicorn.Server):
    """uvicorn's server, with two changes: a stop signal also tells the app to refuse new requests, and after the
    graceful shutdown the process exits normally (uvicorn raises the signal again, which ends it with -15)."""

    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.serve_state = state

    def handle_exit(self, sig, frame) -> None:
        self.serve_state.draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        original = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in original.items():
                signal.signal(s, h)


def serve(predictor, cfg, token: str | None, sock) -> None:
    host, port = sock.getsockname()[:2]

    def ready() -> None:
        print(
            f"serving {predictor.variant} of {cfg.model.path} on http://{host}:{port} (max_batch {cfg.max_batch}, "
            f"max_wait_ms {cfg.max_wait_ms:g}, {predictor.threads} threads); POST /v1/predict, GET /health, "
            f"GET /metrics",
            flush=True,
        )

    app = create_app(predictor, cfg, token, ready)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=cfg.access_log,
        timeout_graceful_shutdown=int(cfg.shutdown_timeout_s),
        lifespan="on",
        log_config=None,
    )
    server = Server(config, app.state.serve)
    server.run(sockets=[sock])
    st = app.state.serve
    print(
        f"stopped: {st.accepted} predict requests accepted, {st.answered} answered, {st.refused} refused while "
        f"stopping",
        flush=True,
    )
