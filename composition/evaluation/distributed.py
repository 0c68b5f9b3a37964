"""Evaluation over several processes with torch.distributed (``torchrun --nproc-per-node N``).

The paper's scripts split a question file into ``--num-chunks`` contiguous chunks, run one
process per GPU on ``--chunk-idx`` and concatenate the prediction files
(THUNLP-MT/ModelCompose ``modelcompose/eval/model_multimodal_qa_loader.py`` ``split_list`` /
``get_chunk``, ``scripts/model_composition/test/MCUB-4.sh``). Here torchrun starts the
processes; each takes one contiguous shard (the same split), one GPU each when there are
GPUs (NCCL), gloo on CPU; rank 0 gathers every answer and writes exactly what a single
process writes.

Answers travel as JSON bytes in uint8 tensors (no pickle, unlike ``all_gather_object``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

from ..errors import CompositionError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        """Destroy the process group: its worker threads end here, not during interpreter teardown."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting WORLD_SIZE > 1) started this process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_distributed(device: str | None) -> DistContext:
    """Join the torchrun job: NCCL and this process's GPU (``LOCAL_RANK``) when running on CUDA, else gloo.

    ``device`` is the user's ``--device`` (None = cuda when available). On CUDA the local
    GPU is made the current device, so every ``"cuda"`` tensor of this process lands on it.
    """
    import torch  # bound here first: the `import torch.distributed.nn` below makes `torch` a local name
    import torch.distributed as dist

    try:
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except (KeyError, ValueError):
        raise CompositionError("RANK, WORLD_SIZE and LOCAL_RANK must be set to run over several processes; "
                               "start the command with torchrun --nproc-per-node N -m composition mcub ...") from None
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise CompositionError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
        if local >= torch.cuda.device_count():
            raise CompositionError(f"process {local} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                                   "visible); use --nproc-per-node at most the number of GPUs.")
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    # torch.distributed.nn's functions take `group=group.WORLD` as a default argument, evaluated when the
    # module is imported. Imported after the group exists (transformers imports it while a model loads),
    # they keep the default group alive for good: destroy_process_group cannot free it, gloo's worker
    # threads outlive it and die during interpreter teardown, which aborted a rank now and then
    # ("terminate called without an active exception"). Imported first, their default is None.
    import torch.distributed.nn  # noqa: F401
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, backend)


def shard(n: int, world_size: int, rank: int) -> range:
    """The original's split: contiguous chunks of ``ceil(n / world_size)``; late ranks may get none."""
    size = math.ceil(n / world_size) if n else 0
    return range(min(rank * size, n), min((rank + 1) * size, n))


def all_gather_json(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (anything JSON can hold), in rank order, on every rank."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else torch.device("cpu")
    payload = torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8, device=device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    gathered = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return [json.loads(bytes(g[: int(s.item())].cpu().tolist()).decode("utf-8")) for g, s in zip(gathered, sizes)]
