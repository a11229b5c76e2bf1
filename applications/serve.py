"""``--serve MODEL_OR_DEPLOY_JSON``: the exported model as an HTTP service (serving/server.py) under uvicorn.

    python main.py --serve checkpoints/RUN/best.torchscript.pt [--host 127.0.0.1 --port 8000]
        [--max_batch_size 16 --max_wait_ms 5 --max_queue 256 --max_body_mb 16 --topk 5 --threads T]

The model is loaded by serving.runtime (the demo's loader: TorchScript, ONNX, AOTInductor, OpenVINO, or what a
deploy.json names, with its threads), warmed up in the inference thread, and served until SIGTERM or Ctrl-C. On
either, uvicorn stops accepting connections, answers the requests in flight (for at most GRACEFUL_SHUTDOWN_S), and the
batcher drains its queue. After SIGTERM the process ends on the signal itself (exit status 143 in a shell), as uvicorn
re-raises it.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from config import Config
from utils.errors import DataError, UsageError
from utils.logger import setup_logging

GRACEFUL_SHUTDOWN_S = 30  # how long requests in flight may take to finish after SIGTERM


def check(cfg: Config) -> None:
    """The flags' own rules, and the packages, before the model is loaded."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--serve needs {exc.name}: pip install -r requirements.txt (fastapi, uvicorn, "
                         "prometheus-client, python-multipart)") from None
    if cfg.max_wait_ms < 0:
        raise UsageError(f"--max_wait_ms must be >= 0, got {cfg.max_wait_ms}")
    if not Path(cfg.serve).exists():
        raise UsageError(f"--serve {cfg.serve}: no such file; export a model with python main.py --jit --resume CKPT "
                         "(or --onnx), or give the deploy.json written beside one")


def run(cfg: Config, explicit: set[str]) -> None:
    """Load the model, bind the address, serve until stopped."""
    import uvicorn

    from serving.runtime import ModelFileError, load_exported
    from serving.server import ServerSettings, create_app

    log = setup_logging(None, True)
    try:
        threads = model_threads(cfg)
        model = load_exported(cfg.serve, threads=threads)
    except ModelFileError as exc:
        raise (UsageError if exc.exit_code == 2 else DataError)(f"--serve: {exc}") from None
    settings = ServerSettings(max_batch_size=cfg.max_batch_size, max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue,
                              max_body_bytes=int(cfg.max_body_mb * 2**20), topk=cfg.topk)
    name = model.name if model.name not in ("", "?") else Path(cfg.serve).stem.split(".")[0]
    app = create_app(model, settings, name=name)
    sock = listening_socket(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    log.info("serving %s (%s, %s, %d classes, input %s) from %s at %s: page %s/, POST %s/predict, protocol %s/v2/"
             "models/%s, metrics %s/metrics; batches of up to %d images, waiting up to %g ms; threads per model "
             "call: %s",
             name, model.format, model.name, len(model.class_names), "x".join(map(str, model.preprocessing.image_size)),
             cfg.serve, url, url, url, url, name, url, cfg.max_batch_size, cfg.max_wait_ms,
             model.threads or threads or "the runtime's default")
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it has handled gracefully
        pass
    finally:
        sock.close()


def model_threads(cfg: Config) -> int | None:
    """--threads; else a deploy.json's own (None here); else every core but one, which the HTTP event loop needs.
    With all cores the model's threads and the event loop take turns on them: on 2 busy cores, mobilenet_v3_small
    unbatched served about a third of the requests/s with 2 threads that it served with 1 (benchmarks/serve.py)."""
    if cfg.threads:
        return cfg.threads
    if Path(cfg.serve).suffix.lower() == ".json":
        return None
    return max(1, (os.cpu_count() or 1) - 1)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one, which the log then names)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it a
    # response written in two parts (headers, body) waits for the client's delayed ACK, 40 ms on Linux
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose another "
                         "--port, or --port 0 for any free one") from None
    sock.set_inheritable(True)
    return sock
