"""The expert training recipe (every stage, both training kinds), on the engine's own routing.

Point encoder pre-training (point clouds only, no LLM pass, minutes): train the point
encoder as a classifier of the scene's categories and colours, then freeze it and encode
the training clouds once (``training.point_pretrain`` says why).
Stage 0 (the slot reader, once per modality, no LLM pass, minutes): train the projector, a
small Q-Former, so that its six output tokens are the LLM's own input embeddings of the
scene's words in answer order ("red ball blue cube nothing nothing"; ``training.slots`` says
why), then freeze it. The LLM stages only learn to read these word-like tokens.
Stage 1 (alignment, once per modality): train the prefix/suffix tokens on "describe"
questions, the LLM and the projector untouched — as LLaVA's pre-training stage.
Stage 2 (instruction tuning, per training kind): from the stage-1 result, train the LoRA
deltas + prefix/suffix on every question kind:
- ``shared``: one delta D for every token (NaiveMC-style experts); its loss weighs every
  row alike (``TrainConfig.row_weighted``), so a "No." counts as much as a description;
- ``decoupled``: a text delta T for text tokens and a modality delta M for the tokens of
  the modality block (DAMC-style experts); its loss weighs every answer token alike.
Stage 3 (option-letter lookup, per expert, text only): train the text-side delta (T of a
decoupled expert, D of a shared one) on text-only option questions whose answer names are
given, the loss on the letters only ("cone (B)": the "B"). The base LLM cannot copy the
letter of a named option (chance level, measured), so each expert must carry that skill,
and carry it strongly enough to survive the 1/K scaling of a composition
(``training.lookup`` says more). A shared expert's D also reads the modality tokens, so its
stage 3 replays half a stage-2 batch each step (``TrainConfig.stage3_replay``).
Training runs through RoutedLinear (``train_slot``), the same routing that inference
uses, so what is trained is exactly what is composed later.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modalities.checks import check_float, check_int, is_int

from composition.expert import TRAINING_KINDS, EncoderRef, Expert, ExpertConfig, ProjectorSpec
from composition.generate import pad_rows
from composition.lora import LoraDelta
from composition.prompt import build_prompt_row, user_message
from composition.variants import TEXT_ROUTE, route_names

from .checkpoint import BuildPaused, BuildState, Resumed, StateMismatch
from .data import ENCODERS, ModalityData
from .instructions import KINDS, MAX_INPUTS, MULTI_INPUT_SHARE, common_question, question_for
from .slots import SLOT_QUERIES, SLOT_WORDS, read_slots, slot_accuracy, slot_targets, train_slot_reader
from .world import TRAINED_ON

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = TARGETS + ("gate_proj", "up_proj", "down_proj")  # the variant training.curves compares
SCHEDULES = ("cosine", "constant")  # after the warm-up: cosine decay to 0 (the recipe), or a constant rate
FEATURE_DIMS = {"image": 1280, "audio": 384, "video": 1280, "point": 256}
# The slot reader (training.slots): a Q-Former of 2 layers, width 96 (the 12 heads of
# composition/projectors.py divide it), about the size of the linear projector it replaced
# (0.8 M parameters for image features), so the bundle stays small.
QFORMER_LAYERS, QFORMER_WIDTH = 2, 96


def projector_spec(modality: str, hidden: int) -> ProjectorSpec:
    """The bundled experts' projector for ``modality``: the slot reader over its encoder's tokens."""
    from modalities.encoders import encoder_spec

    tokens = encoder_spec(ENCODERS[modality]).num_tokens
    return ProjectorSpec("qformer", FEATURE_DIMS[modality], hidden, queries=SLOT_QUERIES, layers=QFORMER_LAYERS,
                         width=QFORMER_WIDTH, intermediate=2 * QFORMER_WIDTH, positions=tokens)


def _keyed_parts(projector: nn.Module, prefix: torch.Tensor, suffix: torch.Tensor,
                 encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a modality's parts under the keys build states save them with."""
    tensors = {f"projector.{k}": v for k, v in projector.state_dict().items()}
    tensors |= {"prefix": prefix.detach(), "suffix": suffix.detach()}
    return tensors | {f"point_encoder.{k}": v for k, v in encoder_state.items()}


def expert_name(modality: str, training: str) -> str:
    """An expert's name (and bundled folder): the modality for decoupled experts, ``<modality>-shared`` for shared ones."""
    return modality if training == "decoupled" else f"{modality}-shared"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (validated on construction)."""

    point_pretrain_steps: int = 800
    point_pretrain_batch_size: int = 32
    lr_point_pretrain: float = 1e-3
    # Stage 0, the slot reader: classifier steps (batch 32, ~0.1 s each on one CPU thread).
    stage0_steps: int = 2500
    # Stage-0 steps are multiplied by this for the listed modalities: the point slot reader
    # read every slot of a held-out cloud in 0.87 of clouds at 2500 steps and 0.935 at 7500
    # (image 0.95 at 2500; README "What the bundled experts can do"). A factor, not a count,
    # so a short test run (stage0_steps=3) stays short for point clouds too.
    stage0_scale_by_modality: tuple[tuple[str, int], ...] = (("point", 3),)
    stage0_batch_size: int = 32
    lr_stage0: float = 1e-3
    stage1_steps: int = 30
    # Image, reading the slot reader's words: held-out 0.84 at 70 steps, 0.95 at 140 (before
    # stage 3; README "Where the steps should go").
    stage2_steps: int = 140
    stage2_steps_by_modality: tuple[tuple[str, int], ...] = ()
    batch_size: int = 8
    rank: int = 4
    alpha: float = 8.0
    lr_tokens: float = 2e-3  # the learned prefix/suffix tokens (stages 1-2)
    lr_lora: float = 2e-3
    warmup_steps: int = 8
    # Stage 3: text-only rows are short, so a larger batch costs about what stage 2's does.
    stage3_steps: int = 30
    stage3_batch_size: int = 16
    lr_stage3: float = 1e-3
    # The trainings whose stage-2 loss weighs every row alike instead of every answer token:
    # a "Yes."/"No." or "Three." row is a token or two beside a description's dozen, and
    # without this the shared experts answered every yes/no question with one constant
    # (README "What the bundled experts can do"). The decoupled experts never did, and are
    # trained per token as they were built.
    row_weighted: tuple[str, ...] = ("shared",)
    # The trainings whose stage 3 also replays stage-2 rows (half a stage-2 batch per step):
    # a shared delta reads the modality tokens too, and text-only lookup rows alone wore the
    # shared experts' yes/no answers down. Only "shared" can be listed (see __post_init__).
    stage3_replay: tuple[str, ...] = ("shared",)
    prefix_tokens: int = 2
    suffix_tokens: int = 2
    seed: int = 0
    kinds: tuple[str, ...] = tuple(KINDS)

    def stage2_steps_for(self, modality: str) -> int:
        """Stage-2 steps for one modality (the per-modality override, else ``stage2_steps``)."""
        return dict(self.stage2_steps_by_modality).get(modality, self.stage2_steps)

    def stage0_steps_for(self, modality: str) -> int:
        """Stage-0 steps for one modality (``stage0_steps`` times the modality's factor, else 1)."""
        return self.stage0_steps * dict(self.stage0_scale_by_modality).get(modality, 1)

    def __post_init__(self) -> None:
        for name in ("point_pretrain_steps", "stage0_steps", "stage1_steps", "stage2_steps", "stage3_steps", "batch_size",
                     "point_pretrain_batch_size", "stage0_batch_size", "stage3_batch_size", "rank", "warmup_steps"):
            check_int(getattr(self, name), name, 0 if "steps" in name else 1, owner="TrainConfig")
        for name in ("alpha", "lr_stage0", "lr_tokens", "lr_lora", "lr_stage3", "lr_point_pretrain"):
            check_float(getattr(self, name), name, 0, open_min=True, owner="TrainConfig")
        for name, least in (("stage2_steps_by_modality", 0), ("stage0_scale_by_modality", 1)):
            for modality, value in getattr(self, name):
                if modality not in FEATURE_DIMS or not is_int(value) or value < least:
                    raise ValueError(f"TrainConfig.{name} has ({modality!r}, {value!r}); expected "
                                     f"(one of {tuple(FEATURE_DIMS)}, an integer >= {least}).")
        # Replay needs every delta the rows read on the layers; stage 3 of a decoupled expert
        # holds only its text delta, so only shared experts can replay.
        for name, allowed in (("row_weighted", TRAINING_KINDS), ("stage3_replay", ("shared",))):
            if not set(getattr(self, name)) <= set(allowed):
                raise ValueError(f"TrainConfig.{name} is {getattr(self, name)!r}; expected trainings from {allowed}.")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"TrainConfig.kinds has unknown question kinds {sorted(unknown)}; expected from {tuple(KINDS)}.")


def add_stage0_1_arguments(parser) -> None:
    """``--stage0-steps`` and ``--stage1-steps`` of the CLIs that run stages 0-1 (build_experts, curves)."""
    factors = dict(TrainConfig.stage0_scale_by_modality)
    parser.add_argument("--stage0-steps", type=int, default=TrainConfig.stage0_steps,
                        help=f"slot-reader steps (default %(default)s; times {factors} for those modalities)")
    parser.add_argument("--stage1-steps", type=int, default=TrainConfig.stage1_steps)


@dataclass
class Replay:
    """What stage 3 replays stage-2 rows from: the modality's training scenes and the expert's
    (frozen) stage-2 parts."""

    data: ModalityData
    parts: ModalityParts
    colours_known: bool = True


@dataclass
class ModalityParts:
    """What stage 1 produces and stage 2 starts from."""

    projector: nn.Module
    prefix: nn.Parameter
    suffix: nn.Parameter
    point_encoder: nn.Module | None = None  # frozen after pre-training; saved with the expert
    features: list[torch.Tensor] | None = None  # the training clouds through point_encoder, once
    log: list[dict] = field(default_factory=list)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _constant(step: int, total: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


# The learning-rate factor of each schedule, as a function of (step, total steps, warm-up steps).
_SCHEDULE_FNS = {"cosine": _cosine, "constant": _constant}


class Trainer:
    """Trains experts of every modality on one frozen base, reusing its routed layers.

    ``targets`` (the linear layers that get LoRA deltas) and ``schedule`` (the learning-rate
    shape after the warm-up) are the recipe's unless a measurement (``training.curves``)
    compares others.
    """

    def __init__(self, base, config: TrainConfig, log=print, targets: tuple[str, ...] = TARGETS,
                 schedule: str = "cosine") -> None:
        from composition.composer import ComposedModel

        self.base = base
        self.log = log
        # The composed model owns the routed layers; training adds live slots to them and
        # evaluation loads the saved experts into the same model.
        self.cm = ComposedModel(base)
        self.router = self.cm.router
        self.reconfigure(config, targets, schedule)
        self.embed = base.model.get_input_embeddings()
        self.hidden = self.embed.weight.shape[1]
        self.eos = base.eos_token_ids[0]
        self.routes = {r: i for i, r in enumerate(route_names())}
        self.state: BuildState | None = None  # a build's progress folder: loops resume from it (training.checkpoint)
        base.model.requires_grad_(False)

    def reconfigure(self, config: TrainConfig, targets: tuple[str, ...] = TARGETS, schedule: str = "cosine") -> None:
        """Train the next stages with other settings on the same base (a measurement compares
        several from one stage-1 result; a second Trainer cannot wrap the same base)."""
        unknown = [t for t in targets if t not in MLP_TARGETS]
        if not targets or unknown:
            raise ValueError(f"Trainer targets {tuple(targets)!r}: expected a non-empty subset of {MLP_TARGETS}.")
        if schedule not in _SCHEDULE_FNS:
            raise ValueError(f"Trainer schedule {schedule!r}: expected one of {SCHEDULES}.")
        self.config = config
        self.targets = tuple(targets)
        self.schedule = _SCHEDULE_FNS[schedule]
        self.layers = {n: layer for n, layer in self.cm.layers.items() if n.rsplit(".", 1)[-1] in self.targets}

    # --- batches ------------------------------------------------------------
    def _features(self, data: ModalityData, idx: list[int], parts: ModalityParts) -> list[torch.Tensor]:
        inputs = parts.features if parts.features is not None else data.inputs
        return [inputs[i] for i in idx]

    def _common_inputs(self, data: ModalityData, first: int, rng: np.random.Generator) -> list[int] | None:
        """2..MAX_INPUTS scenes, ``first`` among them, whose only shared category is one of
        ``first``'s (a few draws; None when none is found)."""
        n = int(rng.integers(2, MAX_INPUTS + 1))
        for _ in range(8):
            category = data.scenes[first].categories[int(rng.integers(len(data.scenes[first].objects)))]
            pool = [i for i in data.scenes_with[category] if i != first]
            if len(pool) < n - 1:
                continue
            picked = [first] + [pool[int(j)] for j in rng.choice(len(pool), size=n - 1, replace=False)]
            if len(set.intersection(*(set(data.scenes[i].categories) for i in picked))) == 1:
                return picked
        return None

    def _batch(self, data: ModalityData, parts: ModalityParts, rng: np.random.Generator, kinds: tuple[str, ...],
               colours_known: bool, n_rows: int | None = None):
        idx = [int(i) for i in rng.integers(0, len(data), size=n_rows or self.config.batch_size)]
        weights = np.array([KINDS[k] for k in kinds])
        rows, routes, targets = [], [], []
        for i in idx:
            kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            if kind == "colour" and not colours_known:
                kind = "describe"
            inputs = [i]
            if kind == "common" and rng.random() < MULTI_INPUT_SHARE:
                inputs = self._common_inputs(data, i, rng) or [i]
            if len(inputs) > 1:
                question, answer = common_question([data.scenes[j] for j in inputs], rng)
            else:
                question, answer = question_for(kind, data.scenes[i], data.modality, rng, colours_known)
            blocks = [torch.cat([parts.prefix, parts.projector(f), parts.suffix], dim=0)
                      for f in self._features(data, inputs, parts)]
            prompt = self.base.template.format_prompt(user_message(question, [data.modality] * len(inputs)))
            row = build_prompt_row(prompt, {data.modality: blocks}, self.base.tokenizer, self.embed)
            answer_ids = self.base.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.eos]
            answer_embeds = self.embed(torch.tensor(answer_ids))
            rows.append(torch.cat([row.embeds, answer_embeds]))
            routes.append(torch.tensor([self.routes[r] for r in row.routes] + [self.routes[TEXT_ROUTE]] * len(answer_ids)))
            targets.append(answer_ids)
        batch = pad_rows(rows, routes, torch.zeros(len(rows), dtype=torch.long))
        return batch, targets

    def _loss(self, data, parts, rng, kinds, colours_known, coef_table, per_row: bool = False, n_rows: int | None = None):
        """Cross-entropy of a stage-2 batch (``n_rows`` rows, default the batch size): averaged over
        the answer tokens, or with ``per_row`` over the rows (each row's mean over its tokens)."""
        batch, targets = self._batch(data, parts, rng, kinds, colours_known, n_rows)
        self.router.set(coef_table[batch.route_ids] if coef_table is not None else None)
        # Rows are left-padded, so every answer lies in the last positions: only those get
        # logits (the 49k-word head over every prompt position was a quarter of a step: 1.34×).
        keep = max(len(ids) for ids in targets) + 1
        try:
            logits = self.base.model(inputs_embeds=batch.embeds, attention_mask=batch.attention_mask,
                                     position_ids=batch.position_ids, use_cache=False, logits_to_keep=keep).logits
        finally:
            self.router.set(None)
        t = logits.shape[1]
        losses = []
        for b, ids in enumerate(targets):
            n = len(ids)
            # The answer is the last n positions; position p predicts p+1.
            pred = logits[b, t - n - 1: t - 1]
            losses.append(F.cross_entropy(pred.float(), torch.tensor(ids, device=pred.device), reduction="sum"))
        if per_row:
            return torch.stack([loss / len(ids) for loss, ids in zip(losses, targets)]).mean()
        return torch.stack(losses).sum() / sum(len(ids) for ids in targets)

    def _run(self, name: str, steps: int, params: list[tuple[list[nn.Parameter], float]], loss_fn, seed: int,
             on_step=None) -> list[dict]:
        """AdamW with warm-up and cosine decay; ``loss_fn(rng)`` draws a batch and returns its loss.
        ``on_step(n)`` (optional) is called after the n-th optimizer step.

        With a build state (``self.state``), the loop resumes from its checkpoint when there
        is one, saves one every ``state.every`` steps, and on a pause request saves and raises
        ``BuildPaused``: resumed, it draws the same batches at the same rates as an
        uninterrupted run."""
        groups = [list(p) for p, _ in params]
        optimizer = torch.optim.AdamW([{"params": g, "lr": lr} for g, (_, lr) in zip(groups, params)], weight_decay=0.0)
        base_lrs = [lr for _, lr in params]
        rng = np.random.default_rng([self.config.seed, seed])
        log, start, running, first, before = [], time.perf_counter(), None, 0, 0.0
        resumed = self.state.restore_loop(name, groups, optimizer, rng) if self.state is not None else None
        if resumed is not None:
            first, running, log, before = resumed.step, resumed.running, resumed.log, resumed.seconds
            self.log(f"  {name}: resumed at step {first}/{steps}")
        for step in range(first, steps):
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * self.schedule(step, steps, self.config.warmup_steps)
            loss = loss_fn(rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for group in groups for p in group], 1.0)
            optimizer.step()
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            elapsed = before + time.perf_counter() - start
            if (step + 1) % 10 == 0 or step == steps - 1:
                log.append({"step": step + 1, "loss": round(running, 4), "seconds": round(elapsed, 1)})
                self.log(f"  {name} step {step + 1}/{steps} loss {running:.3f} ({elapsed / (step + 1):.2f} s/step)")
            if on_step is not None:
                on_step(step + 1)
            if self.state is not None and step + 1 < steps:
                pause = self.state.pause_requested()
                if pause or (step + 1) % self.state.every == 0:
                    path = self.state.save_loop(name, groups, optimizer, rng, Resumed(step + 1, running, log, elapsed))
                if pause:
                    raise BuildPaused(f"{name} paused at step {step + 1}/{steps} (saved in {path})")
        return log

    # --- stages -------------------------------------------------------------
    def stage1(self, data: ModalityData, colours_known: bool = True, heldout: ModalityData | None = None,
               after_stage0=None) -> ModalityParts:
        """Point encoder pre-training (point clouds), stage 0 and stage 1 of one modality.
        ``heldout`` (optional) scores the point encoder's pre-training classifier;
        ``after_stage0(parts)`` (optional) sees the parts between stage 0 and stage 1 (a
        measurement's hook: it must not change them)."""
        parts = self.stage0_parts(data, colours_known, heldout)
        if after_stage0 is not None:
            after_stage0(parts)
        parts.log += self.align(data, parts, colours_known)
        return parts

    def new_parts(self, modality: str) -> ModalityParts:
        """A fresh seeded projector and prefix/suffix tokens (what stage 0 starts from)."""
        g = torch.Generator().manual_seed(self.config.seed)
        # The projector's layers draw their initial weights from torch's global generator: seed
        # it here, per modality, so the start does not depend on what ran before (a resumed
        # build skips finished modalities) and the caller's generator is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 1009 + list(FEATURE_DIMS).index(modality))
            projector = projector_spec(modality, self.hidden).build()
        scale = self.embed.weight.std().item()
        prefix = nn.Parameter(torch.randn(self.config.prefix_tokens, self.hidden, generator=g) * scale)
        suffix = nn.Parameter(torch.randn(self.config.suffix_tokens, self.hidden, generator=g) * scale)
        return ModalityParts(projector, prefix, suffix)

    def stage0_parts(self, data: ModalityData, colours_known: bool = True, heldout: ModalityData | None = None) -> ModalityParts:
        """The parts after point encoder pre-training (point clouds) and stage 0."""
        parts = self.new_parts(data.modality)
        if data.modality == "point":
            from .point_pretrain import pretrain_point_encoder

            # frozen from here on: both kinds share the encoder and its cached features
            parts.point_encoder, parts.features, parts.log = pretrain_point_encoder(
                data, self.config.point_pretrain_steps, self.config.seed, self.config.point_pretrain_batch_size,
                self.config.lr_point_pretrain, heldout=heldout, log=self.log)
        parts.log += self.stage0(data, parts, colours_known, heldout)
        return parts

    # --- parts and deltas as tensors (a build's saved progress, training.checkpoint) ----
    @staticmethod
    def parts_tensors(parts: ModalityParts) -> dict[str, torch.Tensor]:
        encoder = parts.point_encoder.state_dict() if parts.point_encoder is not None else {}
        return _keyed_parts(parts.projector, parts.prefix, parts.suffix, encoder)

    def expert_parts(self, data: ModalityData, expert: Expert) -> ModalityParts:
        """A saved expert's projector, boundary tokens and point encoder as frozen-projector
        parts over ``data`` (its stage 3 replays stage-2 rows through them)."""
        return self.parts_from_tensors(data, _keyed_parts(expert.projector, expert.prefix, expert.suffix,
                                                          expert.encoder_state), [])

    def parts_from_tensors(self, data: ModalityData, tensors: dict[str, torch.Tensor], log: list[dict]) -> ModalityParts:
        """The inverse of ``parts_tensors`` (strict: every key of the modules, and only those);
        a point encoder's training features are computed again (they are not saved)."""
        parts = self.new_parts(data.modality)
        parts.projector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("projector.")}, strict=True)
        parts.projector.requires_grad_(False).eval()  # saved parts are past stage 0, which freezes the projector
        for name in ("prefix", "suffix"):
            if tuple(tensors[name].shape) != tuple(getattr(parts, name).shape):
                raise StateMismatch(f"the saved {name} tokens have shape {tuple(tensors[name].shape)}, the recipe's "
                                    f"{tuple(getattr(parts, name).shape)}; start afresh with --fresh.")
        with torch.no_grad():
            parts.prefix.copy_(tensors["prefix"])
            parts.suffix.copy_(tensors["suffix"])
        encoder = {k[14:]: v for k, v in tensors.items() if k.startswith("point_encoder.")}
        if encoder:
            from modalities.encoders import build_point_encoder

            from .point_pretrain import encode_clouds

            parts.point_encoder = build_point_encoder(seed=self.config.seed)
            parts.point_encoder.load_state_dict(encoder, strict=True)
            parts.point_encoder.requires_grad_(False).eval()
            parts.features = encode_clouds(parts.point_encoder, data) if len(data) else []
        parts.log = list(log)
        return parts

    @staticmethod
    def deltas_tensors(deltas: dict[str, LoraDelta]) -> dict[str, torch.Tensor]:
        return {f"delta.{d}.{f}.{m}": t for d, delta in deltas.items() for f, side in (("A", delta.A), ("B", delta.B))
                for m, t in side.items()}

    def deltas_from_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, LoraDelta]:
        factors: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for key, t in tensors.items():
            if key.startswith("delta."):
                _, d, f, m = key.split(".", 3)
                factors.setdefault(d, {"A": {}, "B": {}})[f][m] = t
        # In the layers' order, as training makes them (a file gives sorted keys), so a delta read
        # back is saved exactly like the one trained (adapter_config's target_modules included).
        order = {name: i for i, name in enumerate(self.layers)}

        def ordered(side: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return dict(sorted(side.items(), key=lambda kv: order.get(kv[0], len(order))))

        return {d: LoraDelta(self.config.rank, self.config.alpha, ordered(f["A"]), ordered(f["B"])) for d, f in factors.items()}

    def align(self, data: ModalityData, parts: ModalityParts, colours_known: bool = True) -> list[dict]:
        """Stage 1 proper: the prefix/suffix tokens on "describe"/"objects" answers, the LLM and the
        (frozen) projector untouched."""
        trainable = [parts.prefix, parts.suffix]
        return self._run(f"{data.modality} stage 1", self.config.stage1_steps, [(trainable, self.config.lr_tokens)],
                         lambda rng: self._loss(data, parts, rng, ("describe", "objects"), colours_known, None), seed=1)

    def word_embeddings(self, words: tuple[str, ...]) -> torch.Tensor:
        """The LLM's input embedding of each word as it appears mid-sentence (" ball"), tokens averaged."""
        rows = []
        with torch.no_grad():
            for word in words:
                ids = self.base.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                rows.append(self.embed(torch.tensor(ids)).mean(0))
        return torch.stack(rows).float()

    def stage0(self, data: ModalityData, parts: ModalityParts, colours_known: bool = True,
               heldout: ModalityData | None = None) -> list[dict]:
        """The slot reader (``training.slots``): the projector learns to emit the scene's words in
        answer order, then is frozen. ``heldout`` (optional) scores it."""
        emb = self.word_embeddings(SLOT_WORDS)
        features = torch.stack(self._features(data, list(range(len(data))), parts)).float()
        with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seeded per modality
            torch.manual_seed(self.config.seed * 1013 + list(FEATURE_DIMS).index(data.modality))
            log = train_slot_reader(parts.projector, features, slot_targets(data, colours_known), emb,
                                    self.config.stage0_steps_for(data.modality), self.config.stage0_batch_size,
                                    self.config.lr_stage0, seed=self.config.seed + 7, log=self.log)
        parts.projector.requires_grad_(False).eval()
        if heldout is not None and len(heldout):
            held = heldout.inputs if parts.point_encoder is None else self._encode_clouds(parts, heldout)
            accuracy = slot_accuracy(read_slots(parts.projector, torch.stack(held).float(), emb),
                                     slot_targets(heldout, colours_known))
            log.append({"stage0_heldout": accuracy})
            self.log(f"  {data.modality} stage 0: held-out slots {accuracy}")
        return log

    @staticmethod
    def _encode_clouds(parts: ModalityParts, data: ModalityData) -> list[torch.Tensor]:
        from .point_pretrain import encode_clouds

        return encode_clouds(parts.point_encoder, data)

    def stage2(self, data: ModalityData, parts: ModalityParts, training: str, colours_known: bool = True,
               checkpoints=(), at_checkpoint=None) -> tuple[dict, ModalityParts, list[dict]]:
        """Returns (deltas, the tuned parts, the log). ``parts`` itself is left untouched.

        ``at_checkpoint(step, deltas, tuned)`` (optional) is called after each step listed in
        ``checkpoints`` with detached copies of the deltas so far; the training slots are
        lifted off the layers meanwhile, so it may load and run experts on ``self.cm``. It
        sees the run, it does not change it (the batches and the schedule stay the same)."""
        # the projector is frozen since stage 0: every expert of the modality shares it
        tuned = ModalityParts(parts.projector, nn.Parameter(parts.prefix.detach().clone()),
                              nn.Parameter(parts.suffix.detach().clone()), parts.point_encoder, parts.features)
        delta_names = ("shared",) if training == "shared" else ("text", "modality")
        g = torch.Generator().manual_seed(self.config.seed + (1 if training == "shared" else 2))
        factors: dict[str, dict[str, tuple[nn.Parameter, nn.Parameter]]] = {}
        lora_params = []
        for slot, delta in enumerate(delta_names):
            factors[delta] = {}
            for name, layer in self.layers.items():
                # peft's init: A random (Kaiming-uniform-like), B zero, so training starts at the base.
                bound = 1.0 / math.sqrt(layer.in_features)
                a = nn.Parameter(torch.rand(self.config.rank, layer.in_features, generator=g) * 2 * bound - bound)
                b = nn.Parameter(torch.zeros(layer.out_features, self.config.rank))
                layer.train_slot(slot, a, b, self.config.alpha / self.config.rank)
                factors[delta][name] = (a, b)
                lora_params += [a, b]
        table = self._route_table(training)
        def snapshot() -> dict[str, LoraDelta]:
            return {d: LoraDelta(self.config.rank, self.config.alpha, {n: a.detach().clone() for n, (a, _) in f.items()},
                                 {n: b.detach().clone() for n, (_, b) in f.items()}) for d, f in factors.items()}

        def lift_slots() -> None:
            for layer in self.layers.values():
                for slot in range(len(delta_names)):
                    layer.remove_slot(slot)

        def on_step(step: int) -> None:
            if at_checkpoint is None or step not in checkpoints:
                return
            lift_slots()
            try:
                with torch.no_grad():
                    at_checkpoint(step, snapshot(), tuned)
            finally:
                for slot, delta in enumerate(delta_names):
                    for name, (a, b) in factors[delta].items():
                        self.layers[name].train_slot(slot, a, b, self.config.alpha / self.config.rank)

        try:
            if at_checkpoint is not None and 0 in checkpoints:
                on_step(0)
            log = self._run(f"{data.modality} {training} stage 2", self.config.stage2_steps_for(data.modality),
                            [([tuned.prefix, tuned.suffix], self.config.lr_tokens),
                             (lora_params, self.config.lr_lora)],
                            lambda rng: self._loss(data, tuned, rng, self.config.kinds, colours_known, table,
                                                   per_row=training in self.config.row_weighted),
                            seed=2 if training == "shared" else 3, on_step=on_step)
        finally:
            lift_slots()
        return snapshot(), tuned, log

    def _route_table(self, training: str) -> torch.Tensor:
        """Which training slot each route's tokens use: a shared expert's one delta (slot 0) on
        every token; a decoupled expert's text delta (slot 0) on text, its modality delta
        (slot 1) on the modality block."""
        table = torch.zeros(len(self.routes), 1 if training == "shared" else 2)
        for route, r in self.routes.items():
            table[r, 0 if training == "shared" or route == TEXT_ROUTE else 1] = 1.0
        return table

    def _lookup_loss(self, rng: np.random.Generator, modality: str, letters: list[int]) -> torch.Tensor:
        """Cross-entropy on the option letters (token ids ``letters``) of a batch of text-only
        lookup rows (slot 0 on every token)."""
        from .lookup import letter_mask, lookup_example

        tokenizer = self.base.tokenizer
        rows = []
        for _ in range(self.config.stage3_batch_size):
            question, answer = lookup_example(rng, modality)
            prompt_ids = tokenizer(self.base.template.format_prompt(user_message(question, [])), add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.eos]
            rows.append((prompt_ids + answer_ids, answer_ids, letter_mask(answer_ids, letters)))
        length = max(len(ids) for ids, _, _ in rows)
        keep = max(len(answer) for _, answer, _ in rows) + 1  # rows are left-padded: answers end every row
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        attention = torch.zeros(len(rows), length, dtype=torch.long)
        targets = torch.full((len(rows), keep), -100)
        for b, (ids, answer, mask) in enumerate(rows):
            input_ids[b, length - len(ids):] = torch.tensor(ids)
            attention[b, length - len(ids):] = 1
            for j, (token, learn) in enumerate(zip(answer, mask)):
                if learn:  # position p predicts token p + 1; answer token j sits at keep - len(answer) + j
                    targets[b, keep - len(answer) + j - 1] = token
        device = self.embed.weight.device
        self.router.set(torch.ones(len(rows), length, 1, device=device, dtype=self.embed.weight.dtype))
        try:
            logits = self.base.model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     use_cache=False, logits_to_keep=keep).logits
        finally:
            self.router.set(None)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), ignore_index=-100)

    def stage3(self, deltas: dict[str, LoraDelta], training: str, modality: str,
               replay: Replay | None = None) -> tuple[dict[str, LoraDelta], list[dict]]:
        """Train the text-side delta (``text``, or ``shared``) on the option-letter lookup; the
        other deltas and ``deltas`` itself are left untouched. Returns (new deltas, log).

        For the trainings in ``config.stage3_replay`` each step also takes half a stage-2 batch
        of ``replay`` (the modality's training scenes and the expert's frozen parts), so the
        delta keeps what stage 2 taught it about the modality tokens."""
        name = "shared" if training == "shared" else "text"
        if name not in deltas:
            raise ValueError(f"stage 3 needs the {name!r} delta of a {training} expert; got deltas {sorted(deltas)}.")
        replaying = training in self.config.stage3_replay and self.config.stage3_steps > 0
        if replaying and replay is None:
            raise ValueError(f"stage 3 of a {training} expert replays stage-2 rows (TrainConfig.stage3_replay="
                             f"{self.config.stage3_replay}); pass replay=Replay(data, parts, colours_known).")
        from .lookup import letter_token_ids

        delta = deltas[name]
        letters = letter_token_ids(self.base.tokenizer)
        params = []
        device = self.embed.weight.device
        # the modules this expert has a delta for, in the layers' order (a delta read back from
        # disk comes in key order; the optimizer's parameter order must not depend on that)
        trained = {m: layer for m, layer in self.layers.items() if m in delta.A}
        for module, layer in trained.items():
            a = nn.Parameter(delta.A[module].detach().to(device, torch.float32).clone())
            b = nn.Parameter(delta.B[module].detach().to(device, torch.float32).clone())
            layer.train_slot(0, a, b, delta.alpha / delta.r)
            params += [a, b]
        try:
            loss = lambda rng: self._lookup_loss(rng, modality, letters)  # noqa: E731
            if replaying:
                loss = self._with_replay(loss, replay, training)
            log = self._run(f"{modality} {training} stage 3", self.config.stage3_steps, [(params, self.config.lr_stage3)],
                            loss, seed=4 if training == "shared" else 5)
            tuned = LoraDelta(delta.r, delta.alpha, {m: layer.trainable[0][0].detach().cpu().clone() for m, layer in trained.items()},
                              {m: layer.trainable[0][1].detach().cpu().clone() for m, layer in trained.items()})
        finally:
            for layer in trained.values():
                layer.remove_slot(0)
        return {**deltas, name: tuned}, log

    def _with_replay(self, lookup_loss, replay: Replay, training: str):
        """``lookup_loss`` plus the loss of half a stage-2 batch of ``replay`` on the shared delta
        (in slot 0, on every token), weighted as stage 2 weighs it."""
        frozen = ModalityParts(replay.parts.projector, replay.parts.prefix.detach(), replay.parts.suffix.detach(),
                               replay.parts.point_encoder, replay.parts.features)
        table = self._route_table(training)  # only shared experts replay: one slot, every token
        half = max(1, self.config.batch_size // 2)

        def loss(rng: np.random.Generator) -> torch.Tensor:
            seen = self._loss(replay.data, frozen, rng, self.config.kinds, replay.colours_known, table,
                              per_row=training in self.config.row_weighted, n_rows=half)
            return lookup_loss(rng) + seen

        return loss

    def make_expert(self, modality: str, training: str, deltas: dict, parts: ModalityParts) -> Expert:
        name = expert_name(modality, training)
        config = ExpertConfig(
            name=name, modality=modality, training=training, base_model_name=self.base.name,
            base_model_sha256=self.base.sha256, encoder=EncoderRef(ENCODERS[modality], None, FEATURE_DIMS[modality]),
            projector=projector_spec(modality, self.hidden),
            prefix_tokens=self.config.prefix_tokens, suffix_tokens=self.config.suffix_tokens,
            description=f"{modality} expert trained {'with one shared delta (NaiveMC-style)' if training == 'shared' else 'with decoupled text and modality deltas (DAMC-style)'} on the synthetic world",
            trained_on=TRAINED_ON,
        )
        encoder_state = {k: v.detach().clone() for k, v in parts.point_encoder.state_dict().items()} if parts.point_encoder else {}
        return Expert(config, deltas, parts.projector, parts.prefix.detach().clone(), parts.suffix.detach().clone(), encoder_state)
