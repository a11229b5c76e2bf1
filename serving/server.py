"""The HTTP inference service: a FastAPI app around one exported model, its batcher and its metrics.

    GET  /v2                                   server metadata (Open Inference Protocol v2, as KServe and Triton)
    GET  /v2/health/live, /v2/health/ready     liveness; readiness after the warm-up calls
    GET  /v2/models/{name}[/versions/1]        classes, input shapes and datatypes, preprocessing
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}[/versions/1]/infer  protocol JSON: one input, UINT8 [N, 3, H, W] letterboxed pixels or
                                               BYTES [N] of encoded images; FP32 [N, C] out; JSON or the
                                               binary tensor extension (serving/protocol.py)
    POST /predict[?topk=K][&answer=A]          image files (multipart, any field names) or one image as the raw
                                               body -> the top-k classes of each, with names; answer=unknown adds
                                               the class or "unknown", answer=set the conformal set (a calibrated
                                               export: main.py --calibrate)
    GET  /metrics                              Prometheus text format
    GET  /                                     the web page (serving/static/index.html)

Errors are JSON ``{"error": "..."}`` (the protocol's error object): 400 for an image that cannot be decoded (named)
or a malformed request, 404 for an unknown model or path, 413 for a body over the limit, 503 when the queue is
full, while draining or before the warm-up finishes (readiness only). Images are decoded and letterboxed by the
preprocessing code training uses (dataloader/preprocess.py, loaded by serving.runtime without the training
pipeline), in a worker thread so that a large photo does not stall the event loop.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Router

from serving import runtime
from serving.runtime import answer_text, can_answer, prediction_sets, require_answer, set_names
from serving.batcher import Batcher, QueueFull, ShuttingDown
from serving.metrics import ServerMetrics
from serving.protocol import INPUT_ENCODED, INPUT_PIXELS, OUTPUT, Problem, infer_reply, parse_infer
from utils.logger import get_logger
from utils.metrics import ranked_classes

STATIC = Path(__file__).resolve().parent / "static"
VERSION = "1"  # the one model version this server holds, as the protocol's paths name it
# decode_image reads a path; its pieces, applied to bytes here, give the same pixels (dataloader/preprocess.py)
_preprocess = runtime._preprocess


@dataclass(frozen=True)
class ServerSettings:
    """How the app batches, what it accepts and answers; main.py's --serve flags."""

    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 16 * 2**20
    topk: int = 5


def decode_image_bytes(data: bytes, name: str, preprocessing: runtime.Preprocessing) -> torch.Tensor:
    """Encoded image bytes to the uint8 CHW tensor ``load_image_tensor`` makes of the same file: the same checks
    (empty, truncated PNG/JPEG), OpenCV decode, depth and channel conversion, letterbox or centre crop."""
    try:
        rgb = _preprocess.decode_image_bytes(data, name)
    except _preprocess.ImageDecodeError as exc:
        raise Problem(400, f"cannot decode image '{name}': {exc.reason}", "decode") from None
    return _preprocess.to_chw_uint8(preprocessing.fit(rgb))


def check_answer(answer: str, model: runtime.ExportedModel) -> None:
    """``?answer=``: top, unknown or set; the last two need the calibration the exported file carries."""
    try:
        require_answer(model.calibration, answer)
    except ValueError as exc:
        raise Problem(400, str(exc), "bad_request") from None


def top_classes(probs: torch.Tensor, class_names: list[str], k: int) -> list[list[dict]]:
    """The k most probable classes of each row, best first (ties: the lower class index first, the project's one
    prediction rule)."""
    ranked = ranked_classes(probs, min(k, probs.shape[1]))
    return [[{"class": class_names[i], "index": i, "probability": float(row[i])} for i in idx.tolist()]
            for row, idx in zip(probs, ranked)]


def model_metadata(model: runtime.ExportedModel, name: str, max_batch_size: int) -> dict:
    """The protocol's model metadata, plus what a client needs to prepare images: the classes and preprocessing."""
    input_shape = [3, *map(int, model.preprocessing.image_size)]
    platform = {"TorchScript": "pytorch_torchscript", "ONNX": "onnxruntime_onnx", "AOTInductor": "pytorch_aotinductor",
                "OpenVINO": "openvino"}.get(model.format, model.format.lower())
    return {"name": name, "versions": [VERSION], "platform": platform,
            "inputs": [{"name": INPUT_PIXELS, "datatype": "UINT8", "shape": [-1, *input_shape]},
                       {"name": INPUT_ENCODED, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(model.class_names)]}],
            "classes": list(model.class_names), "preprocessing": model.preprocessing.to_dict(),
            "format": model.format, "max_batch_size": max_batch_size,
            "calibration": model.calibration.to_dict() if model.calibration else None,
            "description": f"send either {INPUT_PIXELS} (letterboxed RGB pixels, NCHW) or {INPUT_ENCODED} (encoded "
                           "image files, base64 strings in JSON); the output holds class probabilities in the order "
                           "of 'classes'"}


def create_app(model: runtime.ExportedModel, settings: ServerSettings = ServerSettings(), *,
               name: str | None = None) -> FastAPI:
    """The app serving ``model`` under ``name`` (default: its architecture). Its lifespan starts the batcher
    (warm-up, then ready) and, at shutdown, after the server has stopped taking connections and answered the
    requests in flight, drains whatever is still queued."""
    name = name or model.name
    log = get_logger()
    pre = model.preprocessing
    input_shape = (3, *map(int, pre.image_size))
    metrics = ServerMetrics(settings.max_batch_size)
    batcher = Batcher(model.run, input_shape=input_shape, max_batch_size=settings.max_batch_size,
                      max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, metrics=metrics)
    calibrated = can_answer(model.calibration, "unknown") and can_answer(model.calibration, "set")
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace("__CALIBRATED__", str(calibrated).lower())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        # uvicorn has stopped accepting connections and answered the requests in flight (or given up waiting)
        log.info("shutting down: %d requests still queued are answered first", batcher.depth)
        await run_in_threadpool(batcher.close)
        log.info("stopped: every accepted request was answered")

    app = FastAPI(title=f"{name} classifier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_RequestGuard, metrics=metrics, max_body_bytes=settings.max_body_bytes, router=app.router)

    # --- errors: the protocol's {"error": ...} everywhere -------------------------------------------------------------
    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem):
        metrics.observe_error(_endpoint(request.scope), exc.reason)
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        metrics.observe_error(_endpoint(request.scope), reason)
        message = f"no such path {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        metrics.observe_error(_endpoint(request.scope), "bad_request")
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": details}, 400)

    def check_model(model_name: str, version: str | None = None) -> None:
        if model_name != name:
            raise Problem(404, f"unknown model '{model_name}'; this server serves '{name}'", "unknown_model")
        if version is not None and version != VERSION:
            raise Problem(404, f"unknown version '{version}' of model '{name}'; it has version {VERSION}",
                          "unknown_model")

    async def classify(images: torch.Tensor) -> torch.Tensor:
        try:
            future = batcher.submit(images)
        except QueueFull as exc:
            raise Problem(503, f"server busy: {exc}; retry later", "queue_full", {"Retry-After": "1"}) from None
        except ShuttingDown as exc:
            raise Problem(503, str(exc), "shutting_down") from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001  the model failed on this batch
            raise Problem(500, f"inference failed: {type(exc).__name__}: {exc}", "inference") from exc

    async def decode_all(files: list[tuple[str, bytes]]) -> torch.Tensor:
        def work() -> torch.Tensor:
            return torch.stack([decode_image_bytes(data, file_name, pre) for file_name, data in files])

        return await run_in_threadpool(work)

    # --- Open Inference Protocol v2 -----------------------------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata():
        return {"name": "classifier-serving", "version": VERSION, "extensions": []}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": batcher.ready.is_set()}, 200 if batcher.ready.is_set() else 503)

    @app.get("/v2/models/{model_name}/ready")
    @app.get("/v2/models/{model_name}/versions/{version}/ready")
    async def model_ready(model_name: str, version: str | None = None):
        check_model(model_name, version)
        return JSONResponse({"name": name, "ready": batcher.ready.is_set()}, 200 if batcher.ready.is_set() else 503)

    @app.get("/v2/models/{model_name}")
    @app.get("/v2/models/{model_name}/versions/{version}")
    async def metadata(model_name: str, version: str | None = None):
        check_model(model_name, version)
        return model_metadata(model, name, settings.max_batch_size)

    @app.post("/v2/models/{model_name}/infer")
    @app.post("/v2/models/{model_name}/versions/{version}/infer")
    async def infer(model_name: str, request: Request, version: str | None = None):
        check_model(model_name, version)
        parsed = parse_infer(await request.body(), request.headers, input_shape, settings.max_body_bytes)
        pixels = parsed.pixels if parsed.encoded is None else await decode_all(parsed.encoded)
        content, headers = infer_reply(name, VERSION, await classify(pixels), parsed)
        return Response(content, headers=headers)

    # --- the simple API and the page ----------------------------------------------------------------------------------
    @app.post("/predict")
    async def predict(request: Request, topk: int | None = None, answer: str = "top"):
        started = time.perf_counter()
        k = settings.topk if topk is None else topk
        if k < 1:
            raise Problem(400, f"topk must be >= 1, got {k}", "bad_request")
        check_answer(answer, model)
        files = await _uploaded_images(request)
        probs = await classify(await decode_all(files))
        results = [{"image": file_name, "predictions": top}
                   for (file_name, _), top in zip(files, top_classes(probs, model.class_names, k))]
        if answer == "unknown":
            for result, text in zip(results, answer_text(probs, model.class_names, model.calibration, answer)):
                result["answer"] = text
        elif answer == "set":  # a list of class names (empty: unknown)
            for result, names in zip(results, set_names(prediction_sets(probs, model.calibration), model.class_names)):
                result["answer"] = names
        return JSONResponse({"model": name, "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                             "results": results})

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    return app


async def _uploaded_images(request: Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file of a multipart form, or of the raw body as one image."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        files = [(value.filename or key, await value.read()) for key, value in form.multi_items()
                 if isinstance(value, UploadFile)]
        await form.close()
        if not files:
            raise Problem(400, "the form holds no files; send each image as a file field", "bad_request")
        return files
    body = await request.body()
    if not body:
        raise Problem(400, "empty body: POST an image file's bytes, or a multipart form of image files",
                      "bad_request")
    return [(request.headers.get("x-filename") or "request body", body)]


def _endpoint(scope: dict) -> str:
    """The route template of a request ('/v2/models/{model_name}/infer'), so that metrics have few label values."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class _RequestGuard:
    """Pure ASGI middleware: refuses a body over the limit with 413 before the app reads it, and counts every
    request (route, status, latency) in the metrics."""

    def __init__(self, app, *, metrics: ServerMetrics, max_body_bytes: int, router: Router) -> None:
        self.app, self.metrics, self.max_body_bytes, self.router = app, metrics, max_body_bytes, router

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            receive = await self._limit_body(scope, receive)
            if receive is None:
                status = 413
                scope["route"] = next((r for r in self.router.routes if r.matches(scope)[0] == Match.FULL), None)
                await self._too_large(send)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            endpoint = _endpoint(scope)
            if status == 413:
                self.metrics.observe_error(endpoint, "too_large")
            self.metrics.observe_request(endpoint, status, time.perf_counter() - started)

    async def _limit_body(self, scope, receive):
        """``receive`` when the body fits; None when it does not. A declared Content-Length is checked before
        anything is read; a chunked body is read here, up to the limit, and replayed to the app."""
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                return receive if int(length) <= self.max_body_bytes else None
            except ValueError:
                return receive  # the HTTP parser has already refused it
        if scope["method"] in ("GET", "HEAD"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _too_large(self, send) -> None:
        limit = self.max_body_bytes / 2**20
        body = json.dumps({"error": f"request body over the limit of {limit:g} MB (--max_body_mb); send fewer or "
                                    "smaller images per request"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
