"""AOTInductor: the export as a torch.export program with a dynamic batch axis, compiled ahead of time into a .pt2
package (a zip holding a shared library with the weights and the generated C++ kernels).

The program is the network ``--jit`` exports (engine/export.py): uint8 NCHW letterboxed RGB in, probabilities out,
normalisation inside, Conv+BatchNorm pairs folded. The package's own metadata (``aot_inductor.metadata``, a string
map read back with ``get_metadata()``) holds the class names, preprocessing, model name and input/output description
under the keys ONNX files use (``engine.export.plain_metadata``); serving/runtime.py loads the package with
``torch._inductor.aoti_load_package``, which needs torch only: no compiler, no Python source of the model.

Compiling needs a C++ compiler (g++, or ``CXX``); the kernels are built for this machine's instruction set, which
the package records (``AOTI_CPU_ISA``), so export it on the kind of machine that will run it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch._inductor import aoti_compile_and_package

from utils.checkpoint import atomic_write
from utils.errors import DataError

PT2_SUFFIX = ".pt2"  # aoti_compile_and_package insists on it
COMPILER_HINT = ("AOTInductor compiles C++: install a compiler (Debian/Ubuntu: apt-get install g++) or point CXX at "
                 "one, or export with --jit or --onnx instead")


class ExportError(DataError):
    """A checkpoint that cannot be exported in the form asked for, here: one ``error:`` line naming the form, the
    reason and the alternatives."""


def require_cpp_compiler() -> str:
    """The C++ compiler inductor will use, or an ImportError (a missing tool, like a missing package: main.py prints
    it as one line) that says how to get one."""
    from torch._inductor import exc as inductor_exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except (inductor_exc.InvalidCxxCompiler, OSError, RuntimeError) as error:
        wanted = os.environ.get("CXX", "g++")
        raise ImportError(f"no working C++ compiler ({wanted} --version failed: {type(error).__name__}); "
                          f"{COMPILER_HINT}") from None


def export_program(module: nn.Module, images: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of ``module`` on ``images`` with the batch axis dynamic (any size from 1 up)."""
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(module.eval(), (images,), dynamic_shapes={"images": {0: batch}})


def write_aoti_package(module: nn.Module, images: torch.Tensor, path: str | Path, *, model_name: str,
                       metadata: dict[str, str]) -> Path:
    """Export ``module`` with a dynamic batch, compile it with AOTInductor and write the package to ``path`` (a
    .pt2 file, compiled in a temporary folder and written atomically, so a failed compile leaves nothing), with
    ``metadata`` (plain keys, JSON values) in the package."""
    path = Path(path)
    if path.suffix != PT2_SUFFIX:
        raise ValueError(f"an AOTInductor package must be named *{PT2_SUFFIX}, got {path}")
    require_cpp_compiler()
    try:
        program = export_program(module, images)
    except Exception as exc:  # noqa: BLE001  torch.export raises many types (data-dependent control flow, ...)
        raise ExportError(f"torch.export cannot capture {model_name} ({_first_line(exc)}); export it with --jit or "
                          "--onnx instead") from exc
    with tempfile.TemporaryDirectory(prefix="aoti_") as workdir:
        compiled = Path(workdir) / path.name  # the archive's top folder is named after the file
        try:
            with _quiet_cpp_extension():
                aoti_compile_and_package(program, package_path=str(compiled),
                                         inductor_configs={"aot_inductor.metadata": dict(metadata)})
        except Exception as exc:  # noqa: BLE001  the C++ compile and the code generation fail in many ways
            raise ExportError(f"AOTInductor could not compile {model_name} on this machine ({_first_line(exc)}); "
                              "export it with --jit or --onnx instead") from exc
        with compiled.open("rb") as source:
            atomic_write(path, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
    return path


@contextlib.contextmanager
def _quiet_cpp_extension():
    """torch.utils.cpp_extension warns "No CUDA runtime is found" on every CPU-only machine: not news here."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
