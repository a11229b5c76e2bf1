"""Everything about processes and ranks. The only module that imports torch.distributed.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain ``python main.py`` has none of them and runs as a
world of one through the same code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


_OPENED = 0  # init_distributed calls not yet matched by cleanup_distributed (applications can nest: --repeat)


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group from torchrun's environment (nccl with CUDA, gloo without).

    ``device`` is "auto" (CUDA when available), "cpu" or "cuda". Under torchrun on CPU the cores are split
    between the local processes, otherwise two processes on two cores run slower than one. Calls nest: the group
    is created by the first and destroyed by the matching last ``cleanup_distributed``.
    """
    global _OPENED
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available; use --device cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if local_world > 1 and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None,
                                **_restart_store(rank, world_size))
    _OPENED += 1
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def _restart_store(rank: int, world_size: int) -> dict:
    """A store of this attempt's own for the process group when torchrun shares its agent's store.

    That store outlives a restart of the workers (``--max-restarts``), so keys the previous attempt wrote (gloo's
    peer addresses) would be read by the new one, which then waits on dead processes: a hang after kill -9 of one
    worker in a two-node run. Torch's own per-attempt prefix, the agent's restart count, differs between nodes
    (an agent restarted for a peer's failure does not count it; pytorch#135712), so it cannot be the key.

    Instead rank 0 hosts a fresh store on a free port and announces port and a random token in the shared store.
    The other ranks take an announcement only when a live store on that port holds the token: the previous
    attempt's rank 0, whose announcement may still be there, is dead before this attempt starts.
    Elsewhere (plain torchrun env://, Ray, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1): {} and torch's default."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    import secrets
    import time
    from datetime import timedelta

    host, timeout = os.environ["MASTER_ADDR"], timedelta(minutes=10)
    shared = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    if rank == 0:
        token = secrets.token_hex(8)
        store = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        store.set("classifier/token", token)
        shared.set("classifier/attempt_store", f"{store.port}:{token}")
        return {"store": store, "rank": rank, "world_size": world_size}
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        port, token = shared.get("classifier/attempt_store").decode().split(":")
        try:
            store = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=timedelta(seconds=2))
            if store.get("classifier/token").decode() == token:
                store.set_timeout(timeout)
                return {"store": store, "rank": rank, "world_size": world_size}
        except (RuntimeError, ValueError):  # the previous attempt's store: gone, or another server on its port
            pass
        time.sleep(0.2)
    raise RuntimeError(f"rank {rank}: no process-group store from rank 0 on {host} within {timeout}")


def cleanup_distributed() -> None:
    global _OPENED, _HOST_GROUP
    _OPENED = max(0, _OPENED - 1)
    if _OPENED == 0 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _HOST_GROUP = None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when the world has more than one process."""
    if not info.is_distributed:
        return model
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (one collective, so metrics cost one sync per epoch)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor whose first dimension differs between ranks, in rank order."""
    if not is_dist():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    max_size = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


def all_gather_shards(tensor: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Like `all_gather_tensor` (rows of every rank, in rank order), plus the slice holding this rank's own rows.

    Lets a rank decide over the global batch (e.g. its hardest samples) and keep its own part of the answer.
    """
    if not is_dist():
        return tensor, slice(0, tensor.shape[0])
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    start = sum(counts[: get_rank()])
    return torch.cat([g[:n] for g, n in zip(gathered, counts)]), slice(start, start + tensor.shape[0])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the sum over ranks of `tensor`, without autograd history and without a host sync.

    See `all_reduce_sum_differentiable` when the gradient must flow through the sum.
    """
    out = tensor.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_predictions(indices: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-gather per-sample results and return them sorted by dataset index, each sample exactly once.

    DistributedSampler pads the last shard with repeated samples so every rank gets the same count; those
    repeats are dropped here, so metrics equal a single-process run whatever the world size.
    """
    all_indices = all_gather_tensor(indices)
    gathered = [all_gather_tensor(t) for t in tensors]
    unique, first = _first_occurrence(all_indices)
    return (unique, *(g[first] for g in gathered))


def _first_occurrence(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return sorted_idx[keep], order[keep]


_HOST_GROUP = None  # a gloo group for small host-side collectives when the main backend is nccl


def any_rank(flags: list[bool]) -> list[bool]:
    """Each flag OR-ed over all ranks, on the host (a gloo group beside nccl, so the GPU stream is not synced):
    every rank takes the same decision at the same step (stop on a signal, write a checkpoint)."""
    if not is_dist():
        return list(flags)
    global _HOST_GROUP
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return [bool(v) for v in tensor.tolist()]


def gather_objects(obj: object) -> list[object]:
    """One picklable object from every rank, in rank order, on every rank (e.g. each rank's RNG state)."""
    if not is_dist():
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Send a picklable object from rank 0 to every rank (e.g. the run name chosen on rank 0)."""
    if not is_dist():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; the gradient of every rank's x is the sum over ranks of dL/dy."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_differentiable(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with autograd: the backward pass sums the incoming gradients over ranks too."""
    return _AllReduceSum.apply(tensor) if is_dist() else tensor


def average_buffers(model: torch.nn.Module) -> None:
    """Replace every floating-point buffer by its mean over ranks (BN statistics recomputed per shard)."""
    if is_dist():
        world = get_world_size()
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank.

    DDP broadcasts buffers before each forward, but the last training forward then updates them locally, so
    without this every rank would evaluate with slightly different statistics.
    """
    if is_dist():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
