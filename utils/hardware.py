"""Fast defaults chosen from the hardware actually present, never assumed, and repeatable.

bf16 autocast pays off only on CPUs with native bf16 (AVX512-BF16 or AMX); on AVX2 it was 10-50x slower: a rule.
channels_last helps some convolution stacks and hurts others on the same CPU (measured here, bf16: small_cnn 28 px
and resnet18 32 px faster with it, mobilenet_v3_small 64 px slower; fp32 the other way round for resnet18), so it
is measured on the real model and input size. A measurement depends on what else the machine is doing, and the
memory format changes the numerics, so the verdict is measured once per (machine, model, input, AMP, threads) and
cached on disk: the same command gives the same weights however busy the machine is.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import torch

CACHE_ENV = "CLASSIFIER_CACHE_DIR"  # where measured verdicts are kept (default ~/.cache/image-classifier)


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def describe_hardware(device: torch.device) -> str:
    """One line for logs and benchmark tables: what every speed figure depends on."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_native_bf16()}, "
            f"{torch.get_num_threads()} threads of {os.cpu_count()} cores, torch {torch.__version__}")


def choose_amp(requested: bool | None, device: torch.device) -> bool:
    """``--amp`` / ``--no-amp`` win; unset means fp16 on CUDA and bf16 only on CPUs with native bf16."""
    if requested is not None:
        return requested
    return device.type == "cuda" or cpu_has_native_bf16()


def choose_inference_amp(requested: bool | None, trained: bool | None, device: torch.device) -> bool:
    """AMP for a job that only predicts with a trained model: ``--amp`` / ``--no-amp`` win; unset means the precision
    the model was trained and validated in, where this machine runs it natively (fp16 on CUDA, bf16 on CPUs with
    native bf16), and fp32 otherwise. So an evaluation repeats the val accuracy training logged on the same machine,
    and a checkpoint predicts what its (fp32) exports predict unless it was trained under AMP."""
    if requested is not None:
        return requested
    return bool(trained) and choose_amp(None, device)


def choose_matmul_dtype(device: torch.device) -> torch.dtype:
    """The dtype for an optimizer's own matmuls (Muon's Newton-Schulz): bf16 where it runs natively (CUDA, CPUs with
    AVX512-BF16 or AMX), fp32 elsewhere, where bf16 is emulated and slower (airbench_m's Newton-Schulz: about 105 ms a
    step in bf16, 30 ms in fp32 on a 2-thread AVX512 Xeon without bf16) as well as less exact."""
    return torch.bfloat16 if choose_amp(None, device) else torch.float32  # AMP's rule: where low precision is native


def speed_cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "image-classifier"
    return Path(root) / "speed_choices.json"


def choose_channels_last(requested: bool | None, model: torch.nn.Module, input_shape: tuple[int, ...],
                         device: torch.device, amp_dtype: torch.dtype | None, steps: int = 5,
                         model_name: str | None = None) -> tuple[bool, str]:
    """``--channels_last`` / ``--no-channels_last`` win; CUDA takes channels_last; on CPU the verdict of a probe
    (training steps of a copy of the model in both formats, two alternating rounds of `steps` each, the faster
    round's median per format; channels_last kept when >= 5% faster) is read
    from the cache file when this (machine, model, input, AMP, threads) was measured before, and measured and
    cached otherwise. Returns the decision and a short reason for the log (naming the cache file to delete)."""
    if requested is not None:
        return requested, "set by flag"
    if device.type == "cuda":
        return True, "CUDA tensor cores prefer NHWC"
    key = "|".join([torch.backends.cpu.get_cpu_capability(), f"bf16 {cpu_has_native_bf16()}",
                    f"threads {torch.get_num_threads()}", f"torch {torch.__version__}",
                    model_name or type(model).__name__, f"{sum(p.numel() for p in model.parameters())} parameters",
                    "x".join(map(str, input_shape)), str(amp_dtype)])
    file = speed_cache_file()
    cached = _read_cache(file).get(key)
    if cached is not None:
        return bool(cached["channels_last"]), (f"cached verdict from {file} ({cached['reason']}; delete the entry "
                                               "or pass --channels_last/--no-channels_last to change it)")
    formats = (torch.contiguous_format, torch.channels_last)
    rounds = [[_time_train_steps(model, input_shape, device, amp_dtype, fmt, steps) for fmt in formats]
              for _ in range(2)]  # alternating, so a burst of load on the machine hits both formats
    contiguous, channels_last = (min(times) for times in zip(*rounds))
    decision = channels_last < 0.95 * contiguous
    reason = f"probe: {contiguous * 1e3:.0f} ms contiguous vs {channels_last * 1e3:.0f} ms channels_last per step"
    _write_cache(file, key, {"channels_last": decision, "reason": reason, "measured": time.strftime("%Y-%m-%d")})
    return decision, f"{reason}, cached in {file}"


def _read_cache(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(file: Path, key: str, value: dict) -> None:
    """Add one verdict (a read-modify-write of a small file; a lost race only costs a second measurement)."""
    from utils.checkpoint import atomic_write

    entries = {**_read_cache(file), key: value}
    text = json.dumps(entries, indent=1, sort_keys=True).encode("utf-8")
    try:
        atomic_write(file, lambda handle: handle.write(text))
    except OSError:  # a read-only home: the verdict is still used for this run
        pass


def _time_train_steps(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device,
                      amp_dtype: torch.dtype | None, memory_format: torch.memory_format, steps: int) -> float:
    """Median seconds of forward+backward on a throwaway copy (the real model's BN stats and RNG untouched)."""
    probe = copy.deepcopy(model).to(device=device, memory_format=memory_format).train()
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(input_shape, device=device).contiguous(memory_format=memory_format)
        for _ in range(steps + 2):  # the first steps pay for oneDNN primitive creation and allocation
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = probe(x)
            out.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    return sorted(times[2:])[len(times[2:]) // 2]
