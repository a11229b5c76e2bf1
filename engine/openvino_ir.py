"""OpenVINO: the ONNX export (engine/onnx.py) read by OpenVINO and saved as its IR, an .xml graph and a .bin of
weights, with the export metadata in the IR's rt_info.

The weights stay float32 (``save_model`` would compress them to fp16 by default, which breaks the 1e-4 parity), and
serving/runtime.py compiles the IR for the CPU with f32 inference precision (OpenVINO would otherwise run bf16 on
CPUs that have it). The metadata (class names, preprocessing, model name, input/output description; plain keys,
JSON values as in ONNX's metadata_props) sits under ``rt_info["classifier"]``.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.checkpoint import atomic_write

INSTALL_HINT = "pip install openvino==2026.4.1"
RT_INFO_SECTION = "classifier"  # serving/runtime.py reads the metadata from this rt_info section
XML_SUFFIX = ".xml"


def require_openvino():
    """The openvino module, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(f"the OpenVINO export needs the openvino package ({exc}); install it with: "
                          f"{INSTALL_HINT}") from exc
    return openvino


def openvino_path_of(checkpoint: str | Path) -> Path:
    """The default IR path of a checkpoint: RUN/best.pth → RUN/best.openvino.xml (and .bin beside it)."""
    return Path(checkpoint).with_suffix(".openvino.xml")


def bin_path_of(xml_path: str | Path) -> Path:
    return Path(xml_path).with_suffix(".bin")


def write_openvino_ir(onnx_path: str | Path, xml_path: str | Path, *, metadata: dict[str, str]) -> Path:
    """Read the ONNX file with OpenVINO, put ``metadata`` into rt_info and save the IR as ``xml_path`` and the .bin
    beside it, float32. Both files are saved in a temporary folder and moved into place atomically, the .bin first,
    so the .xml never names weights that are not there yet."""
    ov = require_openvino()
    xml_path = Path(xml_path)
    if xml_path.suffix != XML_SUFFIX:
        raise ValueError(f"an OpenVINO IR must be named *{XML_SUFFIX} (the weights go to *.bin beside it), got "
                         f"{xml_path}")
    model = ov.Core().read_model(str(onnx_path))
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = xml_path.parent / f".{xml_path.stem}.{os.urandom(8).hex()}"
    temporary.mkdir()
    try:
        ov.save_model(model, str(temporary / "model.xml"), compress_to_fp16=False)
        for suffix, target in ((".bin", bin_path_of(xml_path)), (".xml", xml_path)):
            data = (temporary / f"model{suffix}").read_bytes()
            atomic_write(target, lambda handle, data=data: handle.write(data))
    finally:
        for leftover in temporary.iterdir():
            leftover.unlink()
        temporary.rmdir()
    return xml_path
