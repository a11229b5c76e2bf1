"""Fast defaults chosen from the hardware actually present, never assumed.

bf16 autocast pays off only on CPUs with native bf16 (AVX512-BF16 or AMX); on AVX2 it was 10-50x slower.
channels_last helps some convolution stacks and hurts others on the same CPU, so it is measured on the real
model and input size instead of guessed.
"""
from __future__ import annotations

import copy
import os
import time

import torch


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


def choose_channels_last(requested: bool | None, model: torch.nn.Module, input_shape: tuple[int, ...],
                         device: torch.device, amp_dtype: torch.dtype | None, steps: int = 3) -> tuple[bool, str]:
    """``--channels_last`` / ``--no-channels_last`` win; unset times a few training steps of a copy of the
    model in both memory formats and keeps channels_last only when it is at least 5% faster.

    Returns the decision and a short reason for the log.
    """
    if requested is not None:
        return requested, "set by flag"
    if device.type == "cuda":
        return True, "CUDA tensor cores prefer NHWC"
    timings = {fmt: _time_train_steps(model, input_shape, device, amp_dtype, fmt, steps)
               for fmt in (torch.contiguous_format, torch.channels_last)}
    contiguous, channels_last = timings[torch.contiguous_format], timings[torch.channels_last]
    reason = f"probe: {contiguous * 1e3:.0f} ms contiguous vs {channels_last * 1e3:.0f} ms channels_last per step"
    return channels_last < 0.95 * contiguous, reason


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
