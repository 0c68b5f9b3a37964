"""Time and peak memory of every merge method, dense vs core space, beside the plain loop.

For a 7B-shaped layer set (one Llama block's seven target layers: q/k/v/o 4096×4096,
gate/up 11008×4096, down 4096×11008) with 4 experts at r = 128 on a GPU; on a CPU the
same set scaled down (dimensions and rank divided by the printed factor). Per method and
space it times one pass over the layer set:

- dense: densify each expert (``s_i·B_i·A_i``) and call :func:`merge_deltas` (the reference,
  what the engine's ``_fill_dense`` does per layer);
- core: :func:`core_space.core_merge` on the factors (the result stays low-rank);
- plain loop (the baseline, measured in the same run): ``Σ λ_i·s_i·B_i·A_i`` by ``addmm``,
  the cheapest way to get a dense merged delta.

Peak memory is the growth over the pass: ``torch.cuda.max_memory_allocated`` on a GPU, the
process's resident set sampled every millisecond on a CPU (Linux ``/proc``; None elsewhere).
``result_bytes`` is what the engine keeps per layer set: a dense ``out×in`` delta, or the
core result's factors.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..methods.core_space import core_merge
from ..methods.registry import list_methods, merge_deltas

FULL = {"hidden": 4096, "intermediate": 11008, "rank": 128}
EXPERTS = 4


@dataclass(frozen=True)
class ProfileShape:
    """A Llama block's target layers at ``1/divisor`` of the 7B shape."""

    divisor: int
    hidden: int
    intermediate: int
    rank: int

    @staticmethod
    def scaled(divisor: int) -> ProfileShape:
        return ProfileShape(divisor, FULL["hidden"] // divisor, FULL["intermediate"] // divisor, max(1, FULL["rank"] // divisor))

    def layers(self) -> dict[str, tuple[int, int]]:
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def describe(self) -> str:
        base = f"hidden {self.hidden}, intermediate {self.intermediate}, r={self.rank}, {EXPERTS} experts"
        if self.divisor == 1:
            return f"7B-shaped block ({base})"
        return (f"7B block scaled down ÷{self.divisor} ({base}; 7B: hidden 4096, intermediate 11008, r=128). "
                f"out, in and r all scale by {self.divisor}, so at 7B every time here grows about {self.divisor}³ = "
                f"{self.divisor ** 3}x (matmuls, SVDs and Adam steps are cubic in them) and every memory figure "
                f"{self.divisor}² = {self.divisor ** 2}x")


class _PeakMemory:
    """Peak growth of allocated (CUDA) or resident (CPU) memory while the block runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = _rss()
        self._top = self.start
        self._stop = threading.Event()
        if self.start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = _rss()
            if value is not None and value > self._top:
                self._top = value
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        if self.start is None:
            return
        self._stop.set()
        self._thread.join()
        end = _rss()
        self.peak = max(self._top, end or 0) - self.start


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _experts(shape: ProfileShape, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Per layer, ``EXPERTS`` random LoRA factors ``(A, B, scale)`` at LoRA-like magnitudes."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    layers = {}
    for name, (out, inp) in shape.layers().items():
        layers[name] = [((torch.randn(shape.rank, inp, generator=g) / inp ** 0.5).to(device, dtype),
                         (torch.randn(out, shape.rank, generator=g) * 0.01).to(device, dtype), 2.0)
                        for _ in range(EXPERTS)]
    return layers


def _timed(fn: Callable[[], int], device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with _PeakMemory(device) as memory:
        start = time.perf_counter()
        kept = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 4), "peak_bytes": memory.peak, "result_bytes": kept}


def method_figures(device: str, quick: bool, emit: Callable[[str], None] = print) -> dict:
    """Time and peak memory per method and space over one layer set (see the module docstring).

    Args:
        device: ``"cuda"`` (7B shape, bf16 factors) or ``"cpu"`` (scaled down, float32).
        quick: a smoke run: a much smaller shape and only a few methods' steps.
        emit: receives one progress line per figure.
    Returns:
        ``{"device", "shape", "scaling", "experts", "rank", "plain_loop": {...}, "methods": {name: {space: {...}}}}``;
        each figure has ``seconds``, ``peak_bytes`` (None where unmeasurable) and ``result_bytes``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        shape, dtype = ProfileShape.scaled(8 if quick else 1), torch.bfloat16
    else:
        shape, dtype = ProfileShape.scaled(64 if quick else 16), torch.float32
    layers = _experts(shape, dev, dtype)
    weights = [1.0 / EXPERTS] * EXPERTS
    emit(f"merge methods: {shape.describe()}, {len(layers)} layers on {device}")

    def plain() -> int:
        kept = 0
        with torch.no_grad():
            for factors in layers.values():
                a0, b0, _ = factors[0]
                merged = torch.zeros(b0.shape[0], a0.shape[1], device=dev, dtype=torch.float32)
                for (a, b, s), w in zip(factors, weights):
                    merged.addmm_(b.float(), a.float(), alpha=w * s)
                kept += merged.numel() * merged.element_size()
                del merged
        return kept

    plain()  # warm-up (allocator, kernels)
    small = [(a[:2, :8].float(), b[:8, :2].float(), s) for a, b, s in layers["q_proj"]]
    for method in list_methods():  # warm-up: lazily loaded code (torch.optim, linalg) is not timed
        brief = {"steps": 1} if "steps" in {p.name for p in method.params} else {}
        if "dense" in method.spaces:
            merge_deltas(method.name, [(b * s) @ a for a, b, s in small], weights, **brief)
        if "core" in method.spaces:
            core_merge(method.name, small, weights, brief)
    result = {"device": device, "shape": shape.layers(), "scaling": shape.describe(), "experts": EXPERTS,
              "rank": shape.rank, "divisor": shape.divisor, "plain_loop": _timed(plain, dev), "methods": {}}
    emit(_line("plain loop (Σ λ_i·B_i·A_i)", result["plain_loop"]))

    for method in list_methods():
        hyper = {"steps": 20} if quick and "steps" in {p.name for p in method.params} else {}
        figures = {}
        for space in method.spaces:
            if space == "dense":
                def run(m=method.name, hyper=hyper) -> int:
                    kept = 0
                    for factors in layers.values():
                        deltas = [(b.float() * s) @ a.float() for a, b, s in factors]
                        merged = merge_deltas(m, deltas, weights, seed=0, **hyper)
                        kept += merged.numel() * merged.element_size()
                        del deltas, merged
                    return kept
            else:
                def run(m=method.name, hyper=hyper) -> int:
                    kept = 0
                    for factors in layers.values():
                        a, b, _ = core_merge(m, factors, weights, hyper, seed=0)
                        kept += (a.numel() + b.numel()) * a.element_size()
                    return kept
            figures[space] = _timed(run, dev)
            emit(_line(f"{method.name} ({space})", figures[space]))
        result["methods"][method.name] = figures
    return result


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def _line(label: str, f: dict) -> str:
    return f"  {label:<34} {f['seconds']:9.3f} s   peak {_mib(f['peak_bytes']):>12}   result {_mib(f['result_bytes']):>10}"


def format_method_figures(f: dict) -> list[str]:
    """The figures as a table: one row per method, dense beside core, the plain loop first."""
    lines = [f"merge methods on {f['device']}: {f['scaling']}",
             f"  {'method':<18} {'dense s':>9} {'dense peak':>12} {'core s':>9} {'core peak':>12} {'dense/core result':>20}",
             f"  {'plain loop':<18} {f['plain_loop']['seconds']:9.3f} {_mib(f['plain_loop']['peak_bytes']):>12} {'':>9} {'':>12} "
             f"{_mib(f['plain_loop']['result_bytes']):>20}"]
    for name, spaces in f["methods"].items():
        d, c = spaces.get("dense"), spaces.get("core")
        cells = [f"{d['seconds']:9.3f}" if d else f"{'—':>9}", f"{_mib(d['peak_bytes']) if d else '—':>12}",
                 f"{c['seconds']:9.3f}" if c else f"{'—':>9}", f"{_mib(c['peak_bytes']) if c else '—':>12}"]
        result = " / ".join(_mib(x["result_bytes"]) if x else "—" for x in (d, c))
        lines.append(f"  {name:<18} {' '.join(cells)} {result:>20}")
    return lines
