"""The Open Inference Protocol v2's infer messages (KServe v2, Triton), in both of its encodings.

JSON: tensors' values in ``data`` (UINT8 pixels as integers; BYTES, our encoded images, as base64 strings).
Binary tensor extension (what ``tritonclient`` sends by default): the header ``Inference-Header-Content-Length``
gives the length of the JSON at the start of the body; an input whose ``parameters.binary_data_size`` is set takes
that many raw bytes after it, in input order (UINT8: row-major values; BYTES: each element a 4-byte little-endian
length and its bytes). An answer is binary when the request asks (``parameters.binary_data_output`` or an output's
``parameters.binary_data``): the probabilities as little-endian float32 after the JSON. ``Content-Encoding: gzip``
or ``deflate`` on a request is undone, with the same size limit as the body.
"""
from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass

import numpy as np
import torch

INPUT_PIXELS, INPUT_ENCODED, OUTPUT = "images", "encoded_images", "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"


class Problem(Exception):
    """A request the server answers with an error: the HTTP status, the message, and the reason for the metrics."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


@dataclass(frozen=True)
class InferRequest:
    """One parsed infer request: pixels (uint8 NCHW) or encoded images, and how the answer is to be encoded."""

    pixels: torch.Tensor | None
    encoded: list[tuple[str, bytes]] | None
    binary_output: bool
    request_id: str | None


def parse_infer(raw: bytes, headers, input_shape: tuple[int, int, int], max_bytes: int) -> InferRequest:
    """An infer request's body and headers → InferRequest, or a 400/413 Problem that names what is wrong."""
    raw = _decompressed(raw, headers.get("content-encoding"), max_bytes)
    body, binary = _split(raw, headers.get(HEADER_LENGTH.lower()))
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise Problem(400, f"expected 'inputs' to hold one tensor, either '{INPUT_PIXELS}' (UINT8 [N, "
                           f"{', '.join(map(str, input_shape))}]) or '{INPUT_ENCODED}' (BYTES [N])", "bad_request")
    tensor = inputs[0]
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    name = tensor.get("name") or (INPUT_ENCODED if datatype == "BYTES" else INPUT_PIXELS)
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise Problem(400, "each input needs 'shape' (a list of sizes), 'datatype' and 'data'", "bad_request")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or size != len(binary)):
        raise Problem(400, f"input '{name}': binary_data_size {size!r} but {len(binary)} bytes follow the JSON "
                           f"header", "bad_request")
    if size is None and tensor.get("data") is None:
        raise Problem(400, "each input needs 'shape' (a list of sizes), 'datatype' and 'data'", "bad_request")
    request_id = body.get("id")
    wanted = _binary_output(body)
    if datatype == "UINT8":
        data = binary if size is not None else tensor["data"]
        return InferRequest(_pixels(shape, data, name, input_shape), None, wanted, request_id)
    if datatype == "BYTES":
        items = _length_prefixed(binary, name) if size is not None else _base64_items(tensor["data"], name)
        return InferRequest(None, _encoded(shape, items, name), wanted, request_id)
    raise Problem(400, f"unsupported datatype {datatype!r}: send UINT8 pixels or BYTES of encoded images",
                  "bad_request")


def infer_reply(model_name: str, version: str, probs: torch.Tensor, request: InferRequest) -> tuple[bytes, dict]:
    """The answer's body and headers: JSON, or JSON + float32 bytes when the request asked for binary."""
    output = {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
    reply = {"model_name": model_name, "model_version": version, "outputs": [output]}
    if request.request_id is not None:
        reply["id"] = request.request_id
    if not request.binary_output:
        output["data"] = probs.flatten().tolist()
        return json.dumps(reply).encode(), {"content-type": "application/json"}
    values = probs.to(torch.float32).numpy().astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(values)}
    header = json.dumps(reply).encode()
    return header + values, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def _decompressed(raw: bytes, encoding: str | None, max_bytes: int) -> bytes:
    if encoding in (None, "", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise Problem(400, f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none", "bad_request")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise Problem(400, f"the body is not valid {encoding} data ({exc})", "bad_request") from None
    if len(out) > max_bytes:
        raise Problem(413, f"the {encoding} body inflates past the limit of {max_bytes} bytes", "too_large")
    return out


def _split(raw: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON object at the start of the body and the binary bytes after it (none without the header)."""
    if header_length is None:
        head, rest = raw, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise Problem(400, f"{HEADER_LENGTH} {header_length!r} is not a length within the body's {len(raw)} "
                               f"bytes", "bad_request")
        head, rest = raw[:int(header_length)], raw[int(header_length):]
    try:
        body = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"the body is not valid JSON ({exc})", "bad_request") from None
    if not isinstance(body, dict):
        raise Problem(400, "the body must be a JSON object with 'inputs'", "bad_request")
    return body, rest


def _binary_output(body: dict) -> bool:
    """Whether the answer is to be binary; unknown output names are refused."""
    wanted = bool((body.get("parameters") or {}).get("binary_data_output", False))
    for output in body.get("outputs") or []:
        if not isinstance(output, dict) or output.get("name") != OUTPUT:
            raise Problem(400, f"unknown output {output!r}; the model has one output, '{OUTPUT}'", "bad_request")
        wanted = bool((output.get("parameters") or {}).get("binary_data", wanted))
    return wanted


def _pixels(shape: list[int], data, input_name: str, input_shape: tuple[int, int, int]) -> torch.Tensor:
    if len(shape) != 4 or tuple(shape[1:]) != input_shape or shape[0] < 1:
        raise Problem(400, f"input '{input_name}' has shape {shape}; expected [N, "
                           f"{', '.join(map(str, input_shape))}] (letterboxed RGB, N >= 1)", "bad_request")
    count = int(np.prod(shape))
    if isinstance(data, bytes):
        if len(data) != count:
            raise Problem(400, f"input '{input_name}': {len(data)} bytes of UINT8 data for shape {shape}, which "
                               f"needs {count}", "bad_request")
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).reshape(shape).copy())
    try:
        values = np.asarray(data, dtype=np.int64).reshape(shape)
    except (ValueError, TypeError):
        raise Problem(400, f"input '{input_name}': data must hold {count} integers for shape {shape}",
                      "bad_request") from None
    if values.size and (values.min() < 0 or values.max() > 255):
        raise Problem(400, f"input '{input_name}': UINT8 values must lie in 0..255", "bad_request")
    return torch.from_numpy(values.astype(np.uint8))


def _base64_items(data, input_name: str) -> list[bytes]:
    if not isinstance(data, list):
        raise Problem(400, f"input '{input_name}': BYTES 'data' must be a list of base64 strings", "bad_request")
    items = []
    for i, item in enumerate(data):
        try:
            items.append(base64.b64decode(item, validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise Problem(400, f"cannot decode image '{input_name}[{i}]': not a base64 string", "decode") from None
    return items


def _length_prefixed(data: bytes, input_name: str) -> list[bytes]:
    """Triton's serialized BYTES tensor: per element a uint32 little-endian length, then the element."""
    items, at = [], 0
    while at < len(data):
        if at + 4 > len(data):
            raise Problem(400, f"input '{input_name}': BYTES data ends inside an element's length", "bad_request")
        length = int.from_bytes(data[at:at + 4], "little")
        if at + 4 + length > len(data):
            raise Problem(400, f"input '{input_name}': element {len(items)} claims {length} bytes, fewer remain",
                          "bad_request")
        items.append(data[at + 4:at + 4 + length])
        at += 4 + length
    return items


def _encoded(shape: list[int], items: list[bytes], input_name: str) -> list[tuple[str, bytes]]:
    if len(shape) != 1 or shape[0] < 1 or len(items) != shape[0]:
        raise Problem(400, f"input '{input_name}': BYTES shape must be [N] with N >= 1 and N elements "
                           f"(got shape {shape}, {len(items)} elements)", "bad_request")
    return [(f"{input_name}[{i}]", item) for i, item in enumerate(items)]
