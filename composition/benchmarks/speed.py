"""Performance figures: ``python -m composition bench [--device cpu|cuda] [--json] [--quick] [--app]``.

Every figure is printed beside a baseline measured in the same run:

- side by side: all the variants in one batch vs one variant alone vs the variants one by
  one, with the prefill floor (prompt tokens the batch must process / the one variant's);
- recomposition: online (resolve + coefficient table: coefficients are scalars) and
  materialized (the engine's merge vs a plain per-layer ``W + Σ λ B@A`` loop, with the
  memory floor);
- decode (CUDA): ms per token of a 7B-shaped model vs ``model.generate`` and the memory
  floor (bytes of weights / peak bandwidth);
- MCUB: items/s with items and variants batched vs one item at a time, and the prefill of
  that batch's rows with passes of at most N prompt tokens (``prefill_passes``);
- merge methods: time and peak memory of every registered method, dense vs core space,
  beside the plain loop, on a 7B-shaped layer set (4 experts, r=128) on a GPU, scaled down
  on a CPU with the scaling printed (``composition/methods/profile.py``).

``--only gpu`` runs the 7B-shaped section alone: it needs only torch and transformers (no
offline base, no bundled experts), which is all a bare GPU machine has; with
``--device cpu --quick`` the same path is rehearsed at tiny sizes. The app's cold start and
memory are the app's figures: ``python -m studio.cold_start``.

Timing: warm-up runs first, then the median of the repeats (``torch.cuda.synchronize``
around each on a GPU). Sections that need CUDA say so and are skipped on a CPU.
``--quick`` runs every section on tiny random models (a smoke test, not figures).
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from modalities.checks import check_int
from modalities import MODALITY_NAMES

from ..composer import ComposedModel, RowRequest
from ..discovery import REPO_ROOT
from ..inputs import ModalInput
from ..errors import CompositionError
from ..expert import Expert
from ..random_models import (OFFLINE_ENCODERS, SMALL_GPU, TINY, VICUNA_7B, ModelShape, SyntheticBase, byte_tokenizer,  # noqa: F401
                      scaled_random_expert, synthetic_base)
from ..generate import GenerationConfig
from ..lora import LLAMA_TARGETS
from .methods import format_method_figures, method_figures
from ..variants import DAMC, TEXT_ROUTE, Coefficients, VariantKind

REPO = REPO_ROOT
MODALITIES = tuple(MODALITY_NAMES)  # the registry's, in prompt order
QUESTION = "What do these inputs have in common?"
# Tokens per input of the offline encoders (DESIGN.md §4): what synthetic features mimic.
FEATURE_TOKENS = {"image": 49, "audio": 32, "video": 57, "point": 64}
# The offline encoders: modality -> (kind, feature dim); random experts on the real base use them.
EXAMPLE_FILES = {"image": "image-example.png", "audio": "audio-example.wav", "video": "video-example.mp4", "point": "point-example.npy"}
# Peak memory bandwidth (bytes/s) by GPU name; other GPUs use the measured copy bandwidth.
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12),
                  ("A10G", 0.6e12), ("L4", 0.3e12))
SECTIONS = ("side_by_side_one_input", "side_by_side_all_inputs", "recompose_online", "recompose_materialized", "mcub",
            "prefill_passes",
            "chat", "methods", "gpu")
FIGURE_TARGETS = {"side_by_side_one_input": 1.5, "side_by_side_all_inputs": 2.5, "side_by_side_all_inputs_seconds": 5.0,
           "side_by_side_gpu": 1.15, "materialize_gpu_ms": 15.0, "decode_vs_floor": 2.0, "mcub_batched_vs_one": 2.0}


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``quick``: tiny random models, few tokens, one repeat (a smoke test)."""

    device: str = "cpu"
    quick: bool = False
    new_tokens: int = 32
    repeats: int = 3
    warmup: int = 1
    mcub_items: int = 4
    only: tuple[str, ...] = ()  # section names to run (empty: all of them)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise CompositionError(f"device {self.device!r}; expected cpu or cuda.")
        for name in ("new_tokens", "repeats", "mcub_items"):
            check_int(getattr(self, name), name, 1, error=CompositionError)
        check_int(self.warmup, "warmup", 0, error=CompositionError)
        unknown = sorted(set(self.only) - set(SECTIONS))
        if unknown:
            raise CompositionError(f"--only {unknown[0]!r} is not a section; expected some of {', '.join(SECTIONS)}.")


# --- timing -------------------------------------------------------------------------
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, repeats: int, warmup: int, device) -> tuple[float, object]:
    """Median wall seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs, and its last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def memory_bandwidth(device) -> tuple[float, str]:
    """Peak bytes/s: the GPU's spec sheet when its name is known, else a measured copy."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BANDWIDTH:
            if key in name:
                return value, f"{name} spec"
    n = (64 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    seconds, _ = measure(lambda: dst.copy_(src), repeats=5, warmup=2, device=device)
    return 2 * src.numel() * src.element_size() / seconds, "measured copy"


# --- models -------------------------------------------------------------------------
class SyntheticFeatures:
    """A stand-in encoder: fixed random features per modality, ``FEATURE_TOKENS`` rows each (or ``tokens``)."""

    def __init__(self, feature_dim: int, tokens: dict[str, int] | None = None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.features = {m: torch.randn(n, feature_dim, generator=g) for m, n in (tokens or FEATURE_TOKENS).items()}

    def __call__(self, expert: Expert, item: ModalInput) -> torch.Tensor:
        return self.features[item.modality]


class CachedFeatures:
    """Runs an encoder once per (encoder, input content); the encoders are not what is benchmarked."""

    def __init__(self, encode: Callable[[Expert, ModalInput], torch.Tensor]) -> None:
        self.encode = encode
        self.cache: dict[tuple, torch.Tensor] = {}
        self.seconds = 0.0

    def __call__(self, expert: Expert, item: ModalInput) -> torch.Tensor:
        ref = expert.config.encoder
        data = item.data.detach().contiguous().cpu()
        key = (ref.kind, ref.source, expert.name if expert.encoder_state else "", tuple(data.shape), str(data.dtype),
               zlib.crc32(data.numpy().tobytes()))
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.encode(expert, item)
            self.seconds += time.perf_counter() - start
        return self.cache[key]


@dataclass
class Setup:
    """A composed model, one input per modality, and what to say about where they came from."""

    cm: ComposedModel
    inputs: list[ModalInput]
    description: str
    device: str


def fixed_length_view(cm: ComposedModel) -> ComposedModel:
    """A view of ``cm`` whose generation never stops at EOS: every row makes exactly the asked tokens."""
    view = cm.subset(cm.experts)
    view.base = copy.copy(cm.base)
    view.base.eos_token_ids = []
    return view


def synthetic_setup(base: SyntheticBase, *, rank: int, kinds: Sequence[str], targets: Sequence[str] = LLAMA_TARGETS,
                    feature_dim: int = 64, tokens: dict[str, int] | None = None) -> Setup:
    """Random experts of ``kinds`` (one per modality and kind) on ``base``, with synthetic features."""
    device = str(base.model.get_input_embeddings().weight.device)
    experts = [scaled_random_expert(base, m, kind, rank=rank, targets=targets, encoder=("synthetic", feature_dim), boundary_tokens=2,
                             seed=100 + 10 * i + j)
               for j, kind in enumerate(kinds) for i, m in enumerate(MODALITIES)]
    cm = ComposedModel(base, experts, feature_fn=SyntheticFeatures(feature_dim, tokens))
    inputs = [ModalInput(m, torch.zeros(1), f"{m} (synthetic features)") for m in MODALITIES]
    what = f"{base.name}, {len(experts)} random experts ({'+'.join(kinds)}, LoRA r={rank} on {len(targets)} layer kinds)"
    return Setup(fixed_length_view(cm), inputs, what, device)


def bundled_expert_folders() -> list[Path]:
    from ..discovery import BUNDLED_EXPERTS, expert_folders

    return expert_folders([BUNDLED_EXPERTS]) if BUNDLED_EXPERTS.is_dir() else []


def random_real_experts(base) -> list[Expert]:
    """Untrained experts shaped like the bundled ones (LoRA r=4 on q,k,v,o, 2+2 boundary tokens), both kinds."""
    return [scaled_random_expert(base, m, kind, rank=4, targets=("q_proj", "k_proj", "v_proj", "o_proj"), encoder=OFFLINE_ENCODERS[m],
                          boundary_tokens=2, seed=100 + 10 * i + j)
            for j, kind in enumerate(("decoupled", "shared")) for i, m in enumerate(MODALITIES)]


def real_setup(device: str) -> Setup:
    """The offline base (SmolLM2-135M-Instruct), the bundled experts (or random ones), the example files."""
    from ..base_llm import load_base_llm
    from ..inputs import load_inputs
    from ..composer import encode_with_registry

    base = load_base_llm(device=device)
    cm = ComposedModel(base, feature_fn=CachedFeatures(encode_with_registry))
    folders = bundled_expert_folders()
    for folder in folders:
        cm.load_expert(folder)
    if folders:
        what = f"{base.name}, {len(folders)} bundled experts (assets/experts)"
    else:
        for expert in random_real_experts(base):
            cm.add_expert(expert)
        what = (f"{base.name}, 8 random experts (assets/experts holds no experts: untrained LoRA r=4 on q,k,v,o, "
                "one decoupled and one shared per modality, the offline encoders)")
    inputs = load_inputs({m: [REPO / "examples" / f] for m, f in EXAMPLE_FILES.items()})
    return Setup(fixed_length_view(cm), inputs, what, device)


# --- side by side -------------------------------------------------------------------
def bench_variants(cm: ComposedModel, modalities: Sequence[str]) -> list[str]:
    """NaiveMC and DAMC (where their experts exist), then one expert per input (decoupled first)."""
    names, seen = [], set()
    for rv in cm.plan(set(modalities)).variants:
        if rv.kind is VariantKind.EXPERT:
            modality = next(iter(rv.modalities))
            if modality in seen:
                continue
            seen.add(modality)
        names.append(rv.name)
    return names


def side_by_side(setup: Setup, modalities: Sequence[str], config: BenchConfig) -> dict:
    """All variants in one batch vs the one variant (DAMC) alone vs the variants one by one."""
    cm = setup.cm
    inputs = [i for i in setup.inputs if i.modality in modalities]
    variants = bench_variants(cm, modalities)
    one = DAMC if DAMC in variants else variants[0]
    gen = GenerationConfig(max_new_tokens=config.new_tokens)
    timing = dict(repeats=config.repeats, warmup=config.warmup, device=setup.device)
    batched_s, answers = measure(lambda: cm.compare(QUESTION, inputs, variants, config=gen), **timing)
    one_s, _ = measure(lambda: cm.compare(QUESTION, inputs, [one], config=gen), **timing)
    sequential_s, _ = measure(lambda: cm.compare(QUESTION, inputs, variants, config=gen, batched=False), **timing)
    tokens = {a.name: a.prompt_tokens for a in answers}
    return {"inputs": list(modalities), "variants": variants, "one_variant": one, "new_tokens": config.new_tokens,
            "generated_tokens": min(a.new_tokens for a in answers),
            "batched_s": batched_s, "one_variant_s": one_s, "sequential_s": sequential_s,
            "ratio_vs_one": batched_s / one_s, "ratio_vs_sequential": batched_s / sequential_s,
            "prompt_tokens": tokens, "prefill_floor": sum(tokens.values()) / tokens[one],
            "padded_prefill_ratio": len(tokens) * max(tokens.values()) / tokens[one]}


# --- recomposition ------------------------------------------------------------------
def coefficient_series(cm: ComposedModel, n: int = 4) -> list[Coefficients]:
    """Distinct λ / μ settings, so each timed recomposition really changes something."""
    names = [e.name for e in cm.experts.values() if e.training == "decoupled"]
    return [Coefficients(lambdas={name: round(0.2 + 0.1 * ((i + k) % 5), 2) for k, name in enumerate(names)},
                         mus={m: round(0.6 + 0.1 * i, 2) for m in MODALITIES}) for i in range(n)]


def schedule_series(cm: ComposedModel, n: int = 4) -> list[Coefficients]:
    """Distinct λ schedules over the layers (and one by module), as ``coefficient_series`` has numbers."""
    names = [e.name for e in cm.experts.values() if e.training == "decoupled"]
    def schedule(i: int, k: int):
        rising = [round(0.1 * ((i + k) % 4), 2), 0.3, round(0.5 - 0.05 * i, 2)]
        return rising if k % 2 == 0 else [{"filter": "self_attn", "value": rising}, {"value": round(0.2 + 0.1 * i, 2)}]

    return [Coefficients(lambdas={name: schedule(i, k) for k, name in enumerate(names)},
                         mus={m: round(0.6 + 0.1 * i, 2) for m in MODALITIES}) for i in range(n)]


def recompose_online(setup: Setup, config: BenchConfig) -> dict:
    """A coefficient change online: resolve the variants and rebuild the coefficient table; the same with λ
    schedules over the layers (the table gets a module axis), and what that axis costs a decode step."""
    cm, present = setup.cm, {i.modality for i in setup.inputs}
    variants = bench_variants(cm, sorted(present))
    timing = dict(repeats=max(config.repeats, 20), warmup=max(config.warmup, 2), device=setup.device)
    out: dict = {"variants": len(variants)}
    for key, series in (("", coefficient_series(cm)), ("schedule_", schedule_series(cm))):
        step = iter(range(10 ** 9))
        seconds, table = measure(lambda: cm.compose(cm.plan(present, variants, series[next(step) % len(series)])), **timing)
        out.update({f"{key}table_shape": list(table.shape), f"{key}seconds": seconds})
    out["schedule_vs_scalar"] = out["schedule_seconds"] / out["seconds"]
    decode = {key: decode_ms_per_token(setup, [DAMC], config, coefficients)[0]
              for key, coefficients in (("scalar", coefficient_series(cm)[0]), ("schedule", schedule_series(cm)[0]))}
    out.update({"decode_ms_scalar": decode["scalar"], "decode_ms_schedule": decode["schedule"],
                "decode_schedule_vs_scalar": decode["schedule"] / decode["scalar"]})
    return out


def text_route_coefficients(cm: ComposedModel, coefficients: Coefficients, present: set[str], variant: str = DAMC) -> dict[int, float]:
    return dict(cm.plan(present, [variant], coefficients).variants[0].routes[TEXT_ROUTE])


def merged_layers(cm: ComposedModel, coef: dict[int, float]) -> list:
    """The routed layers that carry at least one of the slots ``coef`` uses."""
    return [layer for layer in cm.layers.values() if any(c != 0.0 and slot in layer.lowrank for slot, c in coef.items())]


def plain_merge_loop(cm: ComposedModel, coef: dict[int, float]) -> None:
    """The baseline: per layer with deltas, ``W + Σ λ_i B_i @ A_i``, one expert at a time, in the weight's dtype."""
    with torch.no_grad():
        for layer in merged_layers(cm, coef):
            merged = layer._original_weight.clone()
            for slot, c in coef.items():
                factors = layer.lowrank.get(slot)
                if factors is not None and c != 0.0:
                    merged.addmm_(factors.B_scaled, factors.A, alpha=c)
            layer.base.weight.copy_(merged)


def merge_bytes(cm: ComposedModel, coef: dict[int, float]) -> int:
    """Bytes a merge must move at least: read each original weight, write the weight, read the used factors."""
    total = 0
    for layer in merged_layers(cm, coef):
        w = layer.weight
        total += 2 * w.numel() * w.element_size()
        for slot, c in coef.items():
            f = layer.lowrank.get(slot)
            if f is not None and c != 0.0:
                total += (f.A.numel() + f.B_scaled.numel()) * f.A.element_size()
    return total


def recompose_materialized(setup: Setup, config: BenchConfig, bandwidth: float) -> dict:
    """Materializing DAMC after a coefficient change: the engine vs the plain loop, and the memory floor."""
    cm, present = setup.cm, {i.modality for i in setup.inputs}
    series = coefficient_series(cm)
    cm.materialize(DAMC, series[0], present)  # keeps the originals: later merges rewrite from them
    step = iter(range(1, 10 ** 9))
    timing = dict(repeats=config.repeats, warmup=config.warmup, device=setup.device)
    try:
        ours_s, _ = measure(lambda: cm.materialize(DAMC, series[next(step) % len(series)], present), **timing)
        coef = text_route_coefficients(cm, series[0], present)
        cm.materialize(DAMC, series[0], present)
        layers = merged_layers(cm, coef)
        probe = layers[:: max(1, len(layers) // 4)]
        ours = [layer.weight.detach().float().clone() for layer in probe]
        change = max(float((w - layer._original_weight.float()).abs().max()) for layer, w in zip(probe, ours))
        loop_s, _ = measure(lambda: plain_merge_loop(cm, coef), **timing)
        diff = max(float((layer.weight.float() - w).abs().max()) for layer, w in zip(probe, ours))
    finally:
        cm.dematerialize()
    floor_s = merge_bytes(cm, coef) / bandwidth
    return {"variant": DAMC, "experts": len(coef), "layers": len(layers), "seconds": ours_s, "plain_loop_s": loop_s,
            "ratio_vs_plain_loop": ours_s / loop_s, "memory_floor_s": floor_s, "ratio_vs_floor": ours_s / floor_s,
            "max_abs_change": change, "max_abs_diff_vs_plain_loop": diff}


# --- decode -------------------------------------------------------------------------
def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads at least: every parameter but the input embedding (one row of it is read)."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)


class StepClock:
    """A ``generate`` streamer that only records when each new token arrives (synchronized on a GPU)."""

    def __init__(self, device) -> None:
        self.device = device
        self.stamps: list[float] = []
        self.seen_prompt = False

    def put(self, value) -> None:
        if not self.seen_prompt:  # the first call carries the prompt
            self.seen_prompt = True
            return
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_generate_ms_per_token(base, prompt_tokens: int, new_tokens: int, config: BenchConfig, device: str) -> float:
    """``model.generate`` (greedy, EOS never before ``new_tokens``) on the plain model: ms between generated tokens."""
    ids = torch.randint(3, 250, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)

    def once():
        clock = StepClock(device)
        base.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1 + new_tokens,
                            min_new_tokens=1 + new_tokens, do_sample=False, pad_token_id=base.tokenizer.pad_token_id,
                            streamer=clock)
        return 1000 * (clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1)

    samples = [once() for _ in range(config.warmup + config.repeats)][config.warmup:]
    return statistics.median(samples)


def decode_ms_per_token(setup: Setup, variants: Sequence[str], config: BenchConfig,
                        coefficients: Coefficients | None = None) -> tuple[float, int]:
    """The engine's decode: ms between generated tokens (after prefill), and the prompt length of the first row."""
    cm = setup.cm
    plan = cm.plan({i.modality for i in setup.inputs}, variants, coefficients or Coefficients())
    request = RowRequest(QUESTION, tuple(setup.inputs))
    # Every step is timed, as many as asked for: the model never stops at an end-of-text token here.
    generation = GenerationConfig(max_new_tokens=1 + config.new_tokens)
    prompt_tokens = []

    def once():
        stamps: list[float] = []
        answers = cm.generate_rows([request], plan, generation, on_step=lambda _: stamps.append(time.perf_counter()))
        prompt_tokens[:] = [answers[0][0].prompt_tokens]  # each step above ends with a host sync
        return 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    samples = [once() for _ in range(config.warmup + config.repeats)][config.warmup:]
    return statistics.median(samples), prompt_tokens[0]


# --- conversations ------------------------------------------------------------------
CHAT_TURNS = ("What is in the image?", "What colour is it?", "Is there anything else?", "Describe it again.", "Thank you. Anything more?")


def chat_history_reuse(setup: Setup, config: BenchConfig) -> dict:
    """A five-turn conversation (the image in turn 1), each variant continuing its KV cache from the turn before,
    against the same turns prefilled whole: seconds per turn, and the prompt tokens each prefills."""
    import uuid

    from ..composer import Turn

    cm = setup.cm
    image = [i for i in setup.inputs if i.modality == "image"]
    variants = bench_variants(cm, ("image",))
    plan = cm.plan({"image"}, variants, Coefficients())
    generation = GenerationConfig(max_new_tokens=config.new_tokens)
    turns = [Turn(text, tuple(image) if k == 0 else ()) for k, text in enumerate(CHAT_TURNS)]

    def conversation(session: str | None) -> tuple[list[float], list[int], list[int]]:
        cm.kv_cache.forget()  # each run starts cold: no cache from another run's identical turns
        answers: dict[str, list[list[int]]] = {}
        seconds, prompt, reused = [], [], []
        for t in range(1, len(turns) + 1):
            sync(setup.device)
            start = time.perf_counter()
            replies = cm.chat(turns[:t], plan, generation, answers, session=session)
            sync(setup.device)
            seconds.append(time.perf_counter() - start)
            prompt.append(sum(r.prompt_tokens for r in replies))
            reused.append(sum(r.reused_tokens for r in replies))
            for r in replies:
                answers.setdefault(r.variant.name, []).append(r.token_ids)
        return seconds, prompt, reused

    runs = {"reuse": [], "full": []}
    for k in range(config.warmup + config.repeats):
        for mode in ("reuse", "full"):
            result = conversation(uuid.uuid4().hex if mode == "reuse" else None)
            if k >= config.warmup:
                runs[mode].append(result)
    median = lambda mode, t: statistics.median(r[0][t] for r in runs[mode])  # noqa: E731
    _, prompt, reused = runs["reuse"][-1]
    return {"variants": variants, "turns": len(turns), "new_tokens": config.new_tokens,
            "turn1_s": median("reuse", 0), "turn5_reuse_s": median("reuse", 4), "turn5_full_s": median("full", 4),
            "turn5_full_vs_reuse": median("full", 4) / median("reuse", 4),
            "turn5_reuse_vs_turn1": median("reuse", 4) / median("reuse", 0),
            "turn5_prompt_tokens": prompt[4], "turn5_reused_tokens": reused[4],
            "turn5_prefilled_tokens": prompt[4] - reused[4], "prefill_tokens_saved_share": reused[4] / prompt[4],
            "per_turn_reuse_s": [median("reuse", t) for t in range(len(turns))],
            "per_turn_full_s": [median("full", t) for t in range(len(turns))]}


# --- MCUB ---------------------------------------------------------------------------
def mcub_items(quick: bool, limit: int) -> tuple[list, str]:
    """MCUB-synth-4 items (a built set of seed 0, else the bundled examples' items) for the throughput figure."""
    from ..evaluation import ALL_FOUR, SynthSetMissing, load_mcub, synth_sets

    examples = REPO / "examples" / "mcub" / "mcub-synth4.json"
    if quick:
        return load_mcub(examples)[:limit], f"examples/mcub ({examples.name})"
    try:
        path = synth_sets("synth-4", seed=0, n_items=max(16, limit), at_least=True)[ALL_FOUR]
    except SynthSetMissing as missing:  # building is training's job; the examples are the same kind of items
        print(f"note: {missing}; using examples/mcub instead", file=sys.stderr)
        return load_mcub(examples)[:limit], f"examples/mcub ({examples.name})"
    return load_mcub(path)[:limit], f"MCUB-synth-4 (seed 0, {path.parent.name})"


class PartTimer:
    """Wall seconds spent in named functions while active (the MCUB figure's "where the time goes").

    Wraps module attributes for the duration of a ``with`` block and restores them after; the
    functions still run as before, each call timed.
    """

    def __init__(self, targets: dict[str, tuple[object, str]], device="cpu") -> None:
        self.targets = targets
        self.device = device
        self.seconds = {name: 0.0 for name in targets}
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> "PartTimer":
        for name, (owner, attr) in self.targets.items():
            real = getattr(owner, attr)

            def timed(*args, _real=real, _name=name, **kwargs):
                start = time.perf_counter()
                try:
                    return _real(*args, **kwargs)
                finally:
                    sync(self.device)  # a GPU's kernels finish inside the part that queued them
                    self.seconds[_name] += time.perf_counter() - start

            self._saved.append((owner, attr, real))
            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, real in reversed(self._saved):
            setattr(owner, attr, real)
        self._saved.clear()


def mcub_parts(device="cpu") -> PartTimer:
    """Timers on the MCUB path: reading the items' files, the encoders, prefill and decode."""
    from .. import composer, generate
    from ..evaluation import runner

    return PartTimer({"files": (runner, "_load_chunk_inputs"), "encoders": (composer.ComposedModel, "encode_inputs"),
                      "prefill": (generate, "prefill"), "prefill_shared": (generate, "prefill_shared"),
                      "decode": (generate, "decode")}, device)


def mcub_throughput(setup: Setup, config: BenchConfig) -> dict:
    """Items/s of ``evaluate``: all items and variants in one batch vs one item (all its variants) at a time,
    and where each run's time goes (files read and decoded, encoders, prefill, decode, the rest)."""
    from ..evaluation import DEFAULT_CONFIG, evaluate

    items, source = mcub_items(config.quick, config.mcub_items)
    cm = setup.cm
    variants = bench_variants(cm, MODALITIES)
    parts = {}

    def run(batch_items: int, key: str):
        """One timed evaluation: (its result, its wall seconds); its parts are kept under ``key``."""
        with mcub_parts(setup.device) as timer:
            sync(setup.device)
            start = time.perf_counter()
            result = evaluate(cm, items, variants, config=DEFAULT_CONFIG, batch_items=batch_items)
            sync(setup.device)
            total = time.perf_counter() - start
        seconds = dict(timer.seconds)
        seconds["prefill"] += seconds.pop("prefill_shared")
        seconds["other"] = max(total - sum(seconds.values()), 0.0)
        parts.setdefault(key, []).append(seconds)
        return result, total

    # The two runs alternate (batched, one at a time, batched, ...): this machine's speed drifts
    # over minutes, and each pair sees the same drift; the figure is the median pair's ratio.
    seconds: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    results = {}
    for repeat in range(config.warmup + config.repeats):
        for key, batch_items in (("batched", len(items)), ("one_at_a_time", 1)):
            results[key], total = run(batch_items, key)
            if repeat >= config.warmup:
                seconds[key].append(total)
    ratios = [single / batch for batch, single in zip(seconds["batched"], seconds["one_at_a_time"])]
    batched_s, single_s = statistics.median(seconds["batched"]), statistics.median(seconds["one_at_a_time"])
    batched, single = results["batched"], results["one_at_a_time"]
    same = [p.answer for p in batched.predictions] == [p.answer for p in single.predictions]
    # The breakdown of the run nearest the median (the warm-up runs are left out).
    breakdown = {}
    for key, median_s in (("batched", batched_s), ("one_at_a_time", single_s)):
        runs = parts[key][config.warmup:]
        best = min(runs, key=lambda r: abs(sum(r.values()) - median_s))
        breakdown[key] = {k: round(v, 3) for k, v in best.items()}
    prompt_tokens = _mcub_prompt_tokens(cm, items, variants)
    return {"data": source, "items": len(items), "variants": variants, "new_tokens": DEFAULT_CONFIG.max_new_tokens,
            "batched_items_per_s": len(items) / batched_s, "one_item_at_a_time_items_per_s": len(items) / single_s,
            "speedup": statistics.median(ratios), "speedup_per_repeat": [round(r, 3) for r in ratios],
            "batched_s": batched_s, "one_item_at_a_time_s": single_s,
            "seconds_by_part": breakdown, "same_answers": same, **prompt_tokens}


def _mcub_rows(cm: ComposedModel, items: list, variants: Sequence[str]) -> tuple[list, list]:
    """Every (item, variant) prompt row of ``items``, item by item, and the plan's resolved variants."""
    from ..composer import RowRequest
    from ..evaluation.runner import _load_chunk_inputs
    from ..inputs import decoder_needs

    plan = cm.plan(set(items[0].modalities), variants)
    inputs = _load_chunk_inputs(items, decoder_needs(cm.experts.values()))
    with cm.lock:
        rows = [row for item, item_inputs in zip(items, inputs)
                for row, _ in cm._request_rows(RowRequest(item.question, item_inputs), plan.variants)]
    return rows, list(plan.variants)


def _mcub_prompt_tokens(cm: ComposedModel, items: list, variants: Sequence[str]) -> dict:
    """Prompt tokens of all rows, and those a batch of every item prefills once its shared prefixes are shared."""
    from ..composer import shared_prefixes

    rows, resolved = _mcub_rows(cm, items, variants)
    total = sum(r.length for r in rows)
    saved = sum((len(members) - 1) * length for members, length in shared_prefixes(rows, len(resolved)))
    return {"prompt_tokens": total, "prompt_tokens_prefilled_batched": total - saved}


PASS_BUDGETS = (None, 4096, 2048, 1024, 512)  # prompt tokens per prefill pass; None: one pass per length bucket


def prefill_passes(setup: Setup, config: BenchConfig) -> dict:
    """Prefill seconds per prompt token of the MCUB batch's rows (every item, every variant) with passes of
    at most N tokens (``generate.PREFILL_TOKENS`` is the engine's N), the budgets taken in turn."""
    from ..generate import PREFILL_TOKENS, length_buckets, prefill

    cm = setup.cm
    items, source = mcub_items(config.quick, config.mcub_items)
    rows, resolved = _mcub_rows(cm, items, bench_variants(cm, MODALITIES))
    batch = cm.routed_batch(rows)
    table = cm.coef_table(resolved * len(items))
    seconds: dict[str, list[float]] = {str(b): [] for b in PASS_BUDGETS}
    for repeat in range(config.warmup + config.repeats):
        for budget in PASS_BUDGETS:
            with cm.lock:
                sync(setup.device)
                start = time.perf_counter()
                prefill(cm.model, cm.router, batch, table, max_tokens=budget)
                sync(setup.device)
            if repeat >= config.warmup:
                seconds[str(budget)].append(time.perf_counter() - start)
    padded = {}
    for budget in PASS_BUDGETS:
        buckets = length_buckets(batch.lengths, max_tokens=budget)
        padded[str(budget)] = (len(buckets), sum(len(b) * max(batch.lengths[i] for i in b) for b in buckets))
    whole = statistics.median(seconds["None"])
    passes = [{"max_tokens": budget, "passes": padded[str(budget)][0], "padded_tokens": padded[str(budget)][1],
               "seconds": statistics.median(seconds[str(budget)]),
               "ms_per_token": 1000 * statistics.median(seconds[str(budget)]) / padded[str(budget)][1],
               "vs_one_pass_per_bucket": statistics.median(seconds[str(budget)]) / whole} for budget in PASS_BUDGETS]
    return {"data": source, "items": len(items), "rows": len(rows), "prompt_tokens": sum(batch.lengths),
            "engine_max_tokens": PREFILL_TOKENS, "passes": passes}


# --- the sections together ----------------------------------------------------------
def gpu_section(config: BenchConfig, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    """7B-shaped bf16 model, 4 random decoupled experts at r=128 (small sizes with --quick).

    ``device`` and ``dtype`` are for tests: the same code path on a CPU with ``--quick`` sizes.
    """
    shape, rank, feature_dim = (SMALL_GPU, 8, 64) if config.quick else (VICUNA_7B, 128, 1024)
    base = synthetic_base(shape, device, dtype)
    bandwidth, source = memory_bandwidth(device)
    floor_ms = 1000 * weight_bytes(base.model) / bandwidth
    hf_prompt = 256
    hf_ms = hf_generate_ms_per_token(base, hf_prompt, config.new_tokens, config, device)  # before any layer is routed
    setup = synthetic_setup(base, rank=rank, kinds=("decoupled",), feature_dim=feature_dim)
    cm = setup.cm
    variants = bench_variants(cm, MODALITIES)
    out = {"model": setup.description, "bandwidth_gb_s": bandwidth / 1e9, "bandwidth_source": source,
           "side_by_side": side_by_side(setup, MODALITIES, config)}
    one_ms, prompt = decode_ms_per_token(setup, [DAMC], config)
    all_ms, _ = decode_ms_per_token(setup, variants, config)
    out["recompose"] = recompose_materialized(setup, config, bandwidth)
    cm.materialize(DAMC, Coefficients(), set(MODALITIES))
    try:
        materialized_ms, _ = decode_ms_per_token(setup, [DAMC], config)
    finally:
        cm.dematerialize()
    out["decode"] = {"prompt_tokens": prompt, "hf_generate_prompt_tokens": hf_prompt, "floor_ms_per_token": floor_ms,
                     "hf_generate_ms_per_token": hf_ms, "online_one_variant_ms_per_token": one_ms,
                     "online_all_variants_ms_per_token": all_ms, "all_variants": len(variants),
                     "materialized_ms_per_token": materialized_ms, "online_vs_floor": one_ms / floor_ms,
                     "materialized_vs_floor": materialized_ms / floor_ms, "hf_generate_vs_floor": hf_ms / floor_ms,
                     "online_vs_hf_generate": one_ms / hf_ms if hf_ms > 0 else None, "all_variants_vs_one": all_ms / one_ms}
    del setup, cm, base
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return out


def run_benchmark(config: BenchConfig, emit: Callable[[str], None] = print) -> dict:
    """Run the sections asked for (all by default); ``emit`` gets the human-readable lines as they come."""
    result: dict = {"device": config.device, "quick": config.quick, "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(), "new_tokens": config.new_tokens, "repeats": config.repeats,
                    "warmup": config.warmup, "targets": FIGURE_TARGETS}
    wanted = set(config.only or SECTIONS)
    engine = [n for n in SECTIONS if n not in ("gpu", "methods") and n in wanted]
    if engine:  # the offline base (or tiny models) only when an engine section runs
        if config.quick:
            setup = synthetic_setup(synthetic_base(TINY, config.device, torch.float32), rank=4, kinds=("decoupled", "shared"),
                                    tokens={"image": 6, "audio": 4, "video": 7, "point": 8})
        else:
            setup = real_setup(config.device)
        result["setup"] = setup.description
        emit(f"setup: {setup.description}; device {config.device}, {torch.get_num_threads()} CPU threads, "
             f"{config.new_tokens} new tokens, median of {config.repeats} after {config.warmup} warm-up")
        sections = {
            "side_by_side_one_input": (lambda: side_by_side(setup, ("image",), config), format_side_by_side),
            "side_by_side_all_inputs": (lambda: side_by_side(setup, MODALITIES, config), format_side_by_side),
            "recompose_online": (lambda: recompose_online(setup, config), format_online),
            "recompose_materialized": (lambda: recompose_materialized(setup, config, memory_bandwidth(config.device)[0]),
                                       format_materialized),
            "mcub": (lambda: mcub_throughput(setup, config), format_mcub),
            "prefill_passes": (lambda: prefill_passes(setup, config), format_prefill_passes),
            "chat": (lambda: chat_history_reuse(setup, config), format_chat),
        }
        for name in engine:
            result[name] = run_section(name, *sections[name], emit)
    if "methods" in wanted:  # per merge method, dense vs core space, beside the plain loop (7B-shaped layers on a GPU)
        result["methods"] = run_section("methods", lambda: method_figures(config.device, config.quick, emit),
                                        format_method_figures, emit)
    if "gpu" in wanted:
        if config.device == "cuda":
            result["gpu"] = run_section("gpu", lambda: gpu_section(config), format_gpu, emit)
        elif config.only:  # asked for by name on a CPU: the same code path, rehearsed in fp32
            result["gpu"] = run_section("gpu", lambda: gpu_section(config, device="cpu", dtype=torch.float32), format_gpu, emit)
            result["gpu"]["rehearsal"] = "cpu, fp32: the code path of the GPU section, not its figures"
        else:
            why = "--device cpu" if torch.cuda.is_available() else "no CUDA GPU on this machine"
            result["gpu"] = {"skipped": f"needs CUDA ({why}); rehearse it with --only gpu --quick"}
            emit(f"gpu (7B-shaped side by side, materialize, decode): skipped, needs CUDA ({why})")
    return result


def run_section(name: str, run: Callable[[], dict], fmt: Callable[[dict], list[str]], emit: Callable[[str], None]) -> dict:
    """One section; a failure is reported in its place (the other sections still run)."""
    try:
        figures = run()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports what failed and goes on
        emit(f"{name}: failed ({type(exc).__name__}: {exc})")
        return {"error": f"{type(exc).__name__}: {exc}"}
    for line in fmt(figures):
        emit(line)
    return figures


# --- text output --------------------------------------------------------------------
def format_side_by_side(f: dict, gpu: bool = False) -> list[str]:
    n = len(f["variants"])
    target = FIGURE_TARGETS["side_by_side_gpu" if gpu else "side_by_side_one_input" if len(f["inputs"]) == 1 else "side_by_side_all_inputs"]
    extra = f"; ≤ {FIGURE_TARGETS['side_by_side_all_inputs_seconds']:.0f} s in all" if len(f["inputs"]) > 1 and not gpu else ""
    return [f"side by side, {'+'.join(f['inputs'])} input{'s' if len(f['inputs']) > 1 else ''}: {', '.join(f['variants'])}",
            f"  {n} variants in one batch {f['batched_s']:.3f} s = {f['ratio_vs_one']:.2f}x one variant "
            f"({f['one_variant']} alone {f['one_variant_s']:.3f} s; target ≤ {target}x{extra}); prefill floor "
            f"{f['prefill_floor']:.2f}x (prompt tokens {sum(f['prompt_tokens'].values())} vs {f['prompt_tokens'][f['one_variant']]}; "
            f"padded to one length: {f['padded_prefill_ratio']:.2f}x)",
            f"  the variants one by one {f['sequential_s']:.3f} s: batch / one by one = {f['ratio_vs_sequential']:.2f}x "
            f"({f['generated_tokens']} new tokens per row, EOS ignored)"]


def format_chat(f: dict) -> list[str]:
    return [f"conversation, {f['turns']} turns ({', '.join(f['variants'])}), {f['new_tokens']} new tokens a turn:",
            f"  turn 5 with the previous turn's KV cache {f['turn5_reuse_s']:.3f} s vs prefilled whole {f['turn5_full_s']:.3f} s "
            f"({f['turn5_full_vs_reuse']:.2f}x); turn 1 {f['turn1_s']:.3f} s (turn 5 / turn 1 = {f['turn5_reuse_vs_turn1']:.2f}x)",
            f"  turn 5 prefills {f['turn5_prefilled_tokens']} of {f['turn5_prompt_tokens']} prompt tokens "
            f"({100 * f['prefill_tokens_saved_share']:.0f} % reused)"]


def format_online(f: dict) -> list[str]:
    return [f"recompose online (resolve {f['variants']} variants + coefficient table {f['table_shape']}): "
            f"{1000 * f['seconds']:.3f} ms",
            f"  with λ schedules over the layers (table {f['schedule_table_shape']}): {1000 * f['schedule_seconds']:.3f} ms "
            f"({f['schedule_vs_scalar']:.2f}x a scalar change); DAMC decode {f['decode_ms_schedule']:.1f} ms/token with a "
            f"schedule vs {f['decode_ms_scalar']:.1f} scalar ({f['decode_schedule_vs_scalar']:.2f}x)"]


def format_materialized(f: dict) -> list[str]:
    return [f"recompose materialized ({f['variant']}, {f['experts']} experts, {f['layers']} layers): {1000 * f['seconds']:.2f} ms; "
            f"plain per-layer loop {1000 * f['plain_loop_s']:.2f} ms (ratio {f['ratio_vs_plain_loop']:.2f}x); memory floor "
            f"{1000 * f['memory_floor_s']:.2f} ms ({f['ratio_vs_floor']:.2f}x); weights change by up to {f['max_abs_change']:.2g}, "
            f"max |diff| vs loop {f['max_abs_diff_vs_plain_loop']:.2g}"]


def format_mcub(f: dict) -> list[str]:
    lines = [f"MCUB ({f['data']}, {f['items']} items x {len(f['variants'])} variants, {f['new_tokens']} new tokens): "
             f"batched {f['batched_items_per_s']:.3f} items/s vs one item at a time {f['one_item_at_a_time_items_per_s']:.3f} "
             f"items/s ({f['speedup']:.2f}x; target ≥ {FIGURE_TARGETS['mcub_batched_vs_one']:g}x)"]
    if "seconds_by_part" in f:
        for key, label in (("batched", "batched"), ("one_at_a_time", "one at a time")):
            p = f["seconds_by_part"][key]
            lines.append(f"  {label}: files {p['files']:.2f} s, encoders {p['encoders']:.2f} s, prefill {p['prefill']:.2f} s, "
                         f"decode {p['decode']:.2f} s, other {p['other']:.2f} s")
        lines.append(f"  prompt tokens {f['prompt_tokens']}, of which a batch prefills {f['prompt_tokens_prefilled_batched']} "
                     f"(shared prefixes once per variant); same answers both ways: {f['same_answers']}")
    return lines


def format_prefill_passes(f: dict) -> list[str]:
    lines = [f"prefill passes ({f['items']} MCUB items, {f['rows']} rows, {f['prompt_tokens']} prompt tokens; "
             f"the engine's budget: {f['engine_max_tokens']} tokens a pass):"]
    for p in f["passes"]:
        label = "one pass per length bucket" if p["max_tokens"] is None else f"at most {p['max_tokens']} tokens a pass"
        lines.append(f"  {label}: {p['passes']} passes, {p['seconds']:.2f} s, {p['ms_per_token']:.3f} ms per padded token "
                     f"({p['vs_one_pass_per_bucket']:.2f}x one pass per bucket)")
    return lines


def format_gpu(f: dict) -> list[str]:
    d, r = f["decode"], f["recompose"]
    lines = [f"gpu: {f['model']}; peak bandwidth {f['bandwidth_gb_s']:.0f} GB/s ({f['bandwidth_source']})"]
    lines += ["  " + line for line in format_side_by_side(f["side_by_side"], gpu=True)]
    lines += ["  " + line + f"  [target ≤ {FIGURE_TARGETS['materialize_gpu_ms']:.0f} ms]" for line in format_materialized(r)]
    lines += [f"  decode ({d['prompt_tokens']} prompt tokens): memory floor {d['floor_ms_per_token']:.2f} ms/token; "
              f"model.generate {d['hf_generate_ms_per_token']:.2f} ms/token ({d['hf_generate_vs_floor']:.2f}x floor); engine online 1 variant {d['online_one_variant_ms_per_token']:.2f} ms/token "
              f"({d['online_vs_floor']:.2f}x floor), {d['all_variants']} variants {d['online_all_variants_ms_per_token']:.2f} ms/token "
              f"({d['all_variants_vs_one']:.2f}x one), materialized {d['materialized_ms_per_token']:.2f} ms/token "
              f"({d['materialized_vs_floor']:.2f}x floor; target ≤ {FIGURE_TARGETS['decode_vs_floor']}x)"]
    return lines


def to_json(result: dict) -> str:
    def clean(value):
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(result), indent=2)
