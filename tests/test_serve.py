"""The HTTP inference service (main.py --serve): a real server process on 127.0.0.1 with a free port, a tiny model
trained and exported here, and plain HTTP from the standard library.

Dynamic batching under 64 concurrent requests (a batch larger than 1 seen in /metrics), the same probabilities as
the demo, every Open Inference Protocol v2 endpoint, the error answers (400, 404, 413, 503), and SIGTERM draining
the requests in flight. The batcher's rules are also checked in-process on a stand-in model, where batch sizes are
exact.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import main as entry
from config import FlagError
from helpers import REPO, TIMEOUT
from serving.batcher import Batcher, QueueFull, ShuttingDown
from serving.runtime import load_exported, load_image_tensor
from utils.errors import DataError, UsageError

pytest.importorskip("fastapi", reason="--serve needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("uvicorn", reason="--serve needs uvicorn (pip install -r requirements.txt)")

START_TIMEOUT = 120  # seconds for a server process to import, load, warm up and report ready
REQUEST_TIMEOUT = 60
MODEL_NAME = "small_cnn_tiny"


# --- a server process and an HTTP client ------------------------------------------------------------------------------


class Server:
    """``python main.py --serve MODEL --port 0 ...`` as a context manager: started, waited for until ready, and
    stopped (SIGTERM, then a kill if it hangs) on exit. ``url`` is its address; ``log`` its output so far."""

    def __init__(self, model: Path, *flags: str, log_path: Path) -> None:
        self.cmd = [sys.executable, "main.py", "--serve", str(model), "--host", "127.0.0.1", "--port", "0", *flags]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "Server":
        self._log = open(self.log_path, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{self.log}"
            found = re.search(r" at (http://127\.0\.0\.1:\d+)", self.log)
            if found:
                self.url = found.group(1)
                try:
                    if get(self, "/v2/health/ready")[0] == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server was not ready within {START_TIMEOUT} s:\n{self.log}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    @property
    def log(self) -> str:
        return self.log_path.read_text()


def call(server: Server, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request on a fresh connection; error statuses are returned, not raised."""
    request = urllib.request.Request(server.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get(server: Server, path: str) -> tuple[int, dict | str]:
    status, headers, body = call(server, "GET", path)
    is_json = headers.get("content-type", "").startswith("application/json")
    return status, json.loads(body) if is_json else body.decode()


def post_json(server: Server, path: str, document: dict) -> tuple[int, dict]:
    status, _, body = call(server, "POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field per (filename, bytes), and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def predict(server: Server, files: list[tuple[str, bytes]], topk: int = 10) -> tuple[int, dict]:
    body, content_type = multipart(files)
    status, _, reply = call(server, "POST", f"/predict?topk={topk}", body, {"Content-Type": content_type})
    return status, json.loads(reply)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition ``text`` (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for_queue(server: Server, depth: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(get(server, "/metrics")[1], "classifier_queue_depth") >= depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"the queue never held {depth} requests")


def by_class(predictions: list[dict]) -> dict[str, float]:
    return {p["class"]: p["probability"] for p in predictions}


# --- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """small_cnn_tiny at 16x16 trained for one epoch on the tiny digits, exported with --jit and with --onnx."""
    out = tmp_path_factory.mktemp("serve")
    entry.run_command(["--data", str(tiny_digits), "--model", MODEL_NAME, "--image_size", "16", "16", "--epochs", "1",
                       "--warmup", "0", "-b", "8", "-j", "0", "--checkpoint_dir", str(out / "ck"), "--log_dir",
                       str(out / "logs"), "--name", "run", "--device", "cpu", "--no-amp", "--no-channels_last"])
    ckpt = out / "ck" / "run" / "last.pth"
    entry.run_command(["--jit", "--resume", str(ckpt), "--output", str(out / "model.pt")])
    entry.run_command(["--onnx", "--resume", str(ckpt), "--output", str(out / "model.onnx")])
    return {"checkpoint": ckpt, "torchscript": out / "model.pt", "onnx": out / "model.onnx"}


@pytest.fixture(scope="module")
def images(tiny_digits) -> list[Path]:
    return sorted((tiny_digits / "test").rglob("*.png"))


def demo_probabilities(model: Path, folder: Path) -> dict[str, dict[str, float]]:
    """image file name -> class -> probability, as demos/classifier.py --json prints them (all 10 classes)."""
    proc = subprocess.run([sys.executable, "demos/classifier.py", str(model), str(folder), "--topk", "10", "--json"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return {Path(item["image"]).name: by_class(item["predictions"]) for item in json.loads(proc.stdout)}


# --- the server -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_64_concurrent_requests_are_batched_and_answer_as_the_demo(exports, images, tiny_digits, tmp_path, fmt):
    demo = demo_probabilities(exports[fmt], tiny_digits / "test")
    files = [images[i % len(images)] for i in range(64)]
    start = threading.Barrier(64)

    def one(path: Path) -> tuple[int, dict]:
        start.wait(timeout=REQUEST_TIMEOUT)  # all 64 leave together
        if files.index(path) % 2:  # half as raw bytes, half as multipart forms
            status, _, reply = call(server, "POST", "/predict?topk=10", path.read_bytes(),
                                    {"Content-Type": "image/png", "X-Filename": path.name})
            return status, json.loads(reply)
        return predict(server, [(path.name, path.read_bytes())])

    with Server(exports[fmt], "--max_batch_size", "16", "--max_wait_ms", "50", "--max_queue", "64",
                log_path=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(64) as pool:
            replies = list(pool.map(one, files))
        metrics = get(server, "/metrics")[1]
    assert [status for status, _ in replies] == [200] * 64, replies
    worst = 0.0
    for path, (_, reply) in zip(files, replies):
        (result,) = reply["results"]
        assert result["image"] == path.name and reply["model"] == MODEL_NAME
        probs = by_class(result["predictions"])
        assert set(probs) == set(demo[path.name]) and len(probs) == 10
        assert max(probs, key=probs.get) == max(demo[path.name], key=demo[path.name].get)  # the same top-1
        worst = max(worst, max(abs(probs[c] - demo[path.name][c]) for c in probs))
        assert result["predictions"] == sorted(result["predictions"], key=lambda p: -p["probability"])
    assert worst <= 1e-5, f"max |server - demo| = {worst:.2e}"
    batches = metric(metrics, "classifier_batch_size_count")
    assert metric(metrics, "classifier_batch_size_sum") == 64  # the warm-up calls are not counted
    assert batches < 64 and metric(metrics, "classifier_batch_size_bucket", le="1.0") < batches, metrics
    assert metric(metrics, "classifier_requests_total", endpoint="/predict", status="200") == 64
    assert metric(metrics, "classifier_request_seconds_count", endpoint="/predict") == 64
    assert metric(metrics, "classifier_images_total") == 64
    assert metric(metrics, "classifier_ready") == 1


def test_protocol_endpoints_and_bad_input(exports, images, tmp_path):
    model = load_exported(exports["torchscript"])
    pixels = torch.stack([load_image_tensor(p, model.preprocessing) for p in images[:3]])
    with torch.inference_mode():
        expected = model(pixels)
    truncated = images[0].read_bytes()[:60]
    with Server(exports["torchscript"], "--max_body_mb", "0.05", "--topk", "3", log_path=tmp_path / "server.log") as s:
        assert get(s, "/v2/health/live") == (200, {"live": True})
        assert get(s, "/v2/health/ready") == (200, {"ready": True})
        assert get(s, "/v2")[1]["name"] == "classifier-serving"
        assert get(s, f"/v2/models/{MODEL_NAME}/ready") == (200, {"name": MODEL_NAME, "ready": True})
        status, meta = get(s, f"/v2/models/{MODEL_NAME}")
        assert status == 200 and meta["name"] == MODEL_NAME and meta["versions"] == ["1"]
        assert meta["classes"] == model.class_names and meta["preprocessing"] == model.preprocessing.to_dict()
        assert meta["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 3, 16, 16]}
        assert meta["inputs"][1] == {"name": "encoded_images", "datatype": "BYTES", "shape": [-1]}
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
        assert get(s, f"/v2/models/{MODEL_NAME}/versions/1")[1] == meta

        # infer: UINT8 pixels (flat data, row-major) and BYTES of encoded files (base64 in JSON)
        status, reply = post_json(s, f"/v2/models/{MODEL_NAME}/infer", {"id": "r1", "inputs": [
            {"name": "images", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.flatten().tolist()}]})
        assert status == 200 and reply["id"] == "r1" and reply["model_name"] == MODEL_NAME, reply
        (output,) = reply["outputs"]
        assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [3, 10]
        assert torch.tensor(output["data"]).view(3, 10).sub(expected).abs().max() <= 1e-5
        encoded = [base64.b64encode(p.read_bytes()).decode() for p in images[:3]]
        status, reply = post_json(s, f"/v2/models/{MODEL_NAME}/versions/1/infer", {"inputs": [
            {"name": "encoded_images", "shape": [3], "datatype": "BYTES", "data": encoded}],
            "outputs": [{"name": "probabilities"}]})
        assert status == 200, reply
        assert torch.tensor(reply["outputs"][0]["data"]).view(3, 10).sub(expected).abs().max() <= 1e-5

        # /predict with the server's --topk 3 and several files in one form
        status, reply = predict_default_topk(s, [(p.name, p.read_bytes()) for p in images[:2]])
        assert status == 200 and [r["image"] for r in reply["results"]] == [images[0].name, images[1].name]
        assert [len(r["predictions"]) for r in reply["results"]] == [3, 3] and reply["latency_ms"] > 0
        assert reply["results"][0]["predictions"][0]["index"] == int(expected[0].argmax())

        # 400: an undecodable image is named; so is a bad BYTES element; malformed requests say what is expected
        status, reply = predict(s, [(images[0].name, images[0].read_bytes()), ("cut.png", truncated)])
        assert status == 400 and "'cut.png'" in reply["error"] and "truncated PNG" in reply["error"], reply
        status, _, body = call(s, "POST", "/predict", b"not an image", {"Content-Type": "image/jpeg",
                                                                        "X-Filename": "notes.jpg"})
        assert status == 400 and "'notes.jpg'" in json.loads(body)["error"]
        assert call(s, "POST", "/predict", b"")[0] == 400
        status, reply = post_json(s, f"/v2/models/{MODEL_NAME}/infer", {"inputs": [
            {"name": "encoded_images", "shape": [2], "datatype": "BYTES",
             "data": [encoded[0], base64.b64encode(b"GIF89a broken").decode()]}]})
        assert status == 400 and "'encoded_images[1]'" in reply["error"], reply
        for bad in ({"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "UINT8", "data": [0] * 192}]},
                    {"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]},
                    {"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "UINT8", "data": [300] * 768}]},
                    {"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "UINT8", "data": [1, 2]}]},
                    {"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "UINT8", "data": [0] * 768}],
                     "outputs": [{"name": "logits"}]},
                    {"inputs": []}, {"no": "inputs"}):
            status, reply = post_json(s, f"/v2/models/{MODEL_NAME}/infer", bad)
            assert status == 400 and reply["error"], (bad, reply)
        status, _, body = call(s, "POST", f"/v2/models/{MODEL_NAME}/infer", b"{not json",
                               {"Content-Type": "application/json"})
        assert status == 400 and "JSON" in json.loads(body)["error"]
        assert get(s, "/predict?topk=0")[0] == 405
        assert call(s, "POST", "/predict?topk=0", images[0].read_bytes())[0] == 400

        # 404: an unknown model, version or path
        for path in ("/v2/models/resnet50", "/v2/models/resnet50/ready", f"/v2/models/{MODEL_NAME}/versions/7",
                     "/v2/nothing"):
            status, reply = get(s, path)
            assert status == 404 and reply["error"], (path, reply)
        status, reply = post_json(s, "/v2/models/resnet50/infer", {"inputs": []})
        assert status == 404 and "resnet50" in reply["error"] and MODEL_NAME in reply["error"]

        # 413: a body over --max_body_mb (50 KB), declared up front or sent in chunks
        status, _, body = call(s, "POST", "/predict", b"\0" * 60_000, {"Content-Type": "image/png"})
        assert status == 413 and "--max_body_mb" in json.loads(body)["error"]
        assert chunked_post(s, "/predict", [b"\0" * 20_000] * 3) == 413
        assert chunked_post(s, "/predict", [images[0].read_bytes()]) == 200  # chunked and small is fine
        metrics = get(s, "/metrics")[1]
    assert metric(metrics, "classifier_errors_total", endpoint="/predict", reason="too_large") == 2
    assert metric(metrics, "classifier_errors_total", endpoint="/predict", reason="decode") == 2
    assert metric(metrics, "classifier_errors_total", endpoint="/v2/models/{model_name}", reason="unknown_model") == 1
    assert metric(metrics, "classifier_requests_total", endpoint="/predict", status="413") == 2


def test_tritonclient_binary_tensors_and_compression(exports, images, tmp_path):
    """The protocol's own client (tritonclient[http]) with its defaults: the binary tensor extension for inputs
    and outputs, BYTES as length-prefixed elements; JSON outputs on request; gzip and deflate request bodies."""
    httpclient = pytest.importorskip("tritonclient.http", reason="pip install -r requirements-test.txt")
    import numpy as np

    model = load_exported(exports["torchscript"])
    pixels = torch.stack([load_image_tensor(p, model.preprocessing) for p in images[:4]])
    with torch.inference_mode():
        expected = model(pixels).numpy()
    encoded = np.array([p.read_bytes() for p in images[:4]], dtype=np.object_)
    with Server(exports["torchscript"], log_path=tmp_path / "server.log") as server:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=REQUEST_TIMEOUT)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
        meta = client.get_model_metadata(MODEL_NAME)
        assert meta["inputs"][0]["shape"] == [-1, 3, 16, 16] and meta["outputs"][0]["name"] == "probabilities"
        answers = {}
        for name, array, datatype in (("images", pixels.numpy(), "UINT8"), ("encoded_images", encoded, "BYTES")):
            for binary_in in (True, False) if datatype == "UINT8" else (True,):
                tensor = httpclient.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array, binary_data=binary_in)
                for binary_out in (True, False):
                    for compression in (None, "gzip", "deflate"):
                        result = client.infer(MODEL_NAME, [tensor], request_id="7", outputs=[
                            httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)],
                            request_compression_algorithm=compression)
                        answers[name, binary_in, binary_out, compression] = result
        default = client.infer(MODEL_NAME, [tensor])  # no outputs named: binary_data_output in the parameters
        client.close()
        metrics = get(server, "/metrics")[1]
    assert len(answers) == 18
    for key, result in answers.items():
        assert result.get_response()["id"] == "7"
        assert np.abs(result.as_numpy("probabilities") - expected).max() <= 1e-5, key
        assert ("data" in result.get_output("probabilities")) is not key[2], key
    assert np.abs(default.as_numpy("probabilities") - expected).max() <= 1e-5
    assert "data" not in default.get_output("probabilities")
    assert metric(metrics, "classifier_requests_total", endpoint="/v2/models/{model_name}/infer",
                  status="200") == 19


def test_binary_extension_errors(exports, images, tmp_path):
    """Malformed binary requests get a 400 that says what is wrong; a gzip bomb gets a 413."""
    import gzip

    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 768}}]}).encode()
    path = f"/v2/models/{MODEL_NAME}/infer"
    with Server(exports["torchscript"], "--max_body_mb", "0.05", log_path=tmp_path / "server.log") as server:
        ok = call(server, "POST", path, header + bytes(768), {"Inference-Header-Content-Length": str(len(header))})
        assert ok[0] == 200 and json.loads(ok[2])["outputs"][0]["shape"] == [1, 10]
        cases = {"binary_data_size": (header + bytes(700), str(len(header)), {}),
                 "Inference-Header-Content-Length": (header + bytes(768), "999999", {}),
                 "not valid JSON": (header + bytes(768), str(len(header) - 3), {}),
                 "Content-Encoding": (header, None, {"Content-Encoding": "br"}),
                 "not valid gzip": (b"plain", None, {"Content-Encoding": "gzip"})}
        for expected, (body, length, extra) in cases.items():
            headers = {**extra, **({"Inference-Header-Content-Length": length} if length else {})}
            status, _, reply = call(server, "POST", path, body, headers)
            assert status == 400 and expected in json.loads(reply)["error"], (expected, reply)
        bytes_header = json.dumps({"inputs": [{"name": "encoded_images", "shape": [1], "datatype": "BYTES",
                                               "parameters": {"binary_data_size": 8}}]}).encode()
        status, _, reply = call(server, "POST", path, bytes_header + (100).to_bytes(4, "little") + b"abcd",
                                {"Inference-Header-Content-Length": str(len(bytes_header))})
        assert status == 400 and "claims 100 bytes" in json.loads(reply)["error"]
        bomb = gzip.compress(b"{" + b" " * 200_000 + b"}")
        status, _, reply = call(server, "POST", path, bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "inflates past" in json.loads(reply)["error"] and len(bomb) < 50_000


def predict_default_topk(server: Server, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
    body, content_type = multipart(files)
    status, _, reply = call(server, "POST", "/predict", body, {"Content-Type": content_type})
    return status, json.loads(reply)


def chunked_post(server: Server, path: str, chunks: list[bytes]) -> int:
    """POST with Transfer-Encoding: chunked (no Content-Length); the status."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
    try:
        connection.request("POST", path, body=iter(chunks), headers={"Content-Type": "image/png"},
                           encode_chunked=True)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_full_queue_answers_503(exports, images, tmp_path):
    # One request may wait; the batcher holds it for 2 s hoping for company, so a second one finds the queue full.
    data = images[0].read_bytes()
    with Server(exports["onnx"], "--max_queue", "1", "--max_batch_size", "64", "--max_wait_ms", "2000",
                log_path=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, server, "POST", "/predict", data)
            wait_for_queue(server, 1)
            status, headers, body = call(server, "POST", "/predict", data)
            assert status == 503 and headers.get("retry-after") == "1", body
            assert "--max_queue 1" in json.loads(body)["error"]
            assert first.result(timeout=REQUEST_TIMEOUT)[0] == 200  # the queued one is still answered
        assert call(server, "POST", "/predict", data)[0] == 200  # and the queue takes requests again
        metrics = get(server, "/metrics")[1]
    assert metric(metrics, "classifier_errors_total", endpoint="/predict", reason="queue_full") == 1
    assert metric(metrics, "classifier_requests_total", endpoint="/predict", status="503") == 1


def test_sigterm_stops_taking_requests_and_answers_those_in_flight(exports, images, tmp_path):
    files = images[:8]
    server = Server(exports["torchscript"], "--max_batch_size", "64", "--max_wait_ms", "6000",
                    log_path=tmp_path / "server.log")
    with server, ThreadPoolExecutor(len(files)) as pool:
        def timed(path: Path) -> tuple[float, tuple[int, dict]]:
            reply = predict(server, [(path.name, path.read_bytes())])
            return time.monotonic(), reply

        pending = [pool.submit(timed, path) for path in files]
        wait_for_queue(server, len(files))  # all 8 are in, waiting for the batch to fill or the 6 s to pass
        server.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer accepting: the listening socket is closed
            socket.create_connection(tuple_of(server.url), timeout=5).close()
        answers = [future.result(timeout=REQUEST_TIMEOUT) for future in pending]
        code = server.proc.wait(timeout=TIMEOUT)
    model = load_exported(exports["torchscript"])
    with torch.inference_mode():
        expected = model(torch.stack([load_image_tensor(p, model.preprocessing) for p in files]))
    for path, row, (_, (status, reply)) in zip(files, expected, answers):
        assert status == 200, reply
        assert abs(by_class(reply["results"][0]["predictions"])[model.class_names[int(row.argmax())]]
                   - float(row.max())) <= 1e-5
    assert all(finished > stopped for finished, _ in answers)  # they were in flight when the signal came
    assert code in (0, -signal.SIGTERM), server.log  # uvicorn re-raises SIGTERM once it has shut down
    assert "stopped: every accepted request was answered" in server.log and "Traceback" not in server.log


def tuple_of(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def test_a_deploy_manifest_is_served_with_its_runtime_and_threads(exports, images, tmp_path):
    from serving.runtime import write_deploy_manifest

    manifest = write_deploy_manifest(tmp_path / "deploy.json", {
        "model": os.path.relpath(exports["onnx"], tmp_path), "runtime": "onnxruntime", "threads": 1, "batch_size": 1,
        "p50_ms": 0.1, "p99_ms": 0.2, "fps": 1000.0, "top1": None, "cpu": "test", "measured": "test"})
    with Server(manifest, log_path=tmp_path / "server.log") as server:
        meta = get(server, f"/v2/models/{MODEL_NAME}")[1]
        status, reply = predict(server, [(images[0].name, images[0].read_bytes())])
        log = server.log
    assert meta["format"] == "ONNX" and meta["platform"] == "onnxruntime_onnx"
    assert status == 200 and len(reply["results"][0]["predictions"]) == 10
    assert "; threads per model call: 1" in log, log


# --- the command line -------------------------------------------------------------------------------------------------


def test_serve_flag_errors(exports, tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        entry.run_command(["--serve", str(tmp_path / "missing.pt")])
    with pytest.raises(FlagError, match="--max_batch_size belongs to --serve"):
        entry.run_command(["--max_batch_size", "4", "--evaluation", "--resume", str(exports["checkpoint"])])
    with pytest.raises(UsageError, match="--max_wait_ms must be >= 0"):
        entry.run_command(["--serve", str(exports["torchscript"]), "--max_wait_ms", "-1"])
    with pytest.raises(DataError, match="--serve: .*last.pth"):  # a checkpoint is not an export
        entry.run_command(["--serve", str(exports["checkpoint"])])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UsageError, match="cannot listen there"):
            entry.run_command(["--serve", str(exports["onnx"]), "--port", str(taken.getsockname()[1])])


def test_connections_to_the_listening_socket_get_tcp_nodelay():
    """asyncio turns Nagle's algorithm off only on sockets made with proto IPPROTO_TCP; a socket made with proto 0
    made every answer (headers and body written apart) wait for the client's delayed ACK: 40 ms a request."""
    import asyncio

    from applications.serve import listening_socket

    sock = listening_socket("127.0.0.1", 0)

    async def nodelay_of_accepted() -> int:
        accepted = asyncio.get_running_loop().create_future()

        def on_connection(reader, writer) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        value = await asyncio.wait_for(accepted, REQUEST_TIMEOUT)
        writer.close()
        server.close()
        return value

    assert asyncio.run(nodelay_of_accepted()) != 0


# --- the batcher, in-process on a stand-in model ----------------------------------------------------------------------


class Recorder:
    """A model that returns each image's first pixel as its 'probabilities' and records every batch size."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        time.sleep(self.delay)
        return batch[:, 0, 0, :1].float()


def tagged(*values: int) -> torch.Tensor:
    batch = torch.zeros(len(values), 3, 2, 2, dtype=torch.uint8)
    batch[:, 0, 0, 0] = torch.tensor(values, dtype=torch.uint8)
    return batch


def test_batcher_groups_splits_refuses_and_drains():
    model = Recorder()
    batcher = Batcher(model, input_shape=(3, 2, 2), max_batch_size=16, max_wait_ms=300, max_queue=4)
    batcher.start()
    assert batcher.ready.wait(10)
    warmup = len(model.sizes)
    assert sorted(set(model.sizes)) == list(range(1, 17))  # every batch size warmed up
    futures = [batcher.submit(tagged(i)) for i in range(3)]  # within 300 ms of each other: one call
    big = batcher.submit(tagged(*range(10, 30)))  # 20 images: 13 join the first call, 7 the next
    assert [f.result(10).flatten().tolist() for f in futures] == [[0.0], [1.0], [2.0]]
    assert big.result(10).flatten().tolist() == [float(v) for v in range(10, 30)]
    assert model.sizes[warmup:] == [16, 7]
    with pytest.raises(ValueError, match="expected a uint8 batch"):
        batcher.submit(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    batcher.close()

    patient = Batcher(Recorder(), input_shape=(3, 2, 2), max_batch_size=16, max_wait_ms=5000, max_queue=2)
    patient.start()
    assert patient.ready.wait(10)
    waiting = [patient.submit(tagged(i)) for i in range(2)]  # held for up to 5 s, hoping for a fuller batch
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        patient.submit(tagged(2))
    started = time.monotonic()
    patient.close()  # draining does not wait out max_wait_ms
    assert [f.result(0).item() for f in waiting] == [0.0, 1.0] and time.monotonic() - started < 4

    slow = Batcher(Recorder(delay=0.2), input_shape=(3, 2, 2), max_batch_size=2, max_wait_ms=0, max_queue=8)
    slow.start()
    assert slow.ready.wait(10)
    queued = [slow.submit(tagged(i)) for i in range(6)]
    slow.close()  # refuses new requests, answers the six queued ones, and stops
    assert [f.result(0).item() for f in queued] == [float(i) for i in range(6)]
    with pytest.raises(ShuttingDown):
        slow.submit(tagged(7))


def test_a_model_error_fails_its_batch_only_and_a_failed_warm_up_stays_not_ready():
    def picky(batch: torch.Tensor) -> torch.Tensor:
        if (batch[:, 0, 0, 0] == 13).any():
            raise RuntimeError("unlucky image")
        return batch[:, 0, 0, :1].float()

    batcher = Batcher(picky, input_shape=(3, 2, 2), max_batch_size=2, max_wait_ms=200, max_queue=8)
    batcher.start()
    assert batcher.ready.wait(10)
    unlucky, neighbour = batcher.submit(tagged(13)), batcher.submit(tagged(1))  # one call of two images
    later = batcher.submit(tagged(2))
    with pytest.raises(RuntimeError, match="unlucky image"):
        unlucky.result(10)
    with pytest.raises(RuntimeError, match="unlucky image"):
        neighbour.result(10)
    assert later.result(10).item() == 2.0  # the next call works
    batcher.close()

    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for this CPU")

    dead = Batcher(broken, input_shape=(3, 2, 2), max_batch_size=2, max_wait_ms=0, max_queue=8)
    dead.start()
    request = dead.submit(tagged(1))
    with pytest.raises(RuntimeError, match="no kernel"):
        request.result(10)  # answered (500 over HTTP), not left waiting
    assert not dead.ready.is_set()  # /v2/health/ready keeps answering 503
    dead.close()
