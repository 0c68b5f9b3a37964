"""The MCUB runner: score compositions and single experts on MCUB, AVQA, MUSIC-AVQA or MCUB-synth items.

MCUB (the paper's Multimodal Commonality Understanding Benchmark) gives 3 or 4 inputs of
different modalities and asks which option (A-D) they have in common. The runner batches
items *and* variants together through the engine's batch entry
(``ComposedModel.generate_rows``): one call answers every (item, variant) pair of a chunk of
items, so evaluating six variants costs little more than one (DESIGN.md §1, "side by side
means batched").

    result = evaluate(cm, items, rule=RULES["first-char"], prompt="paper", config=PAPER_CONFIG)
    result.accuracy()          # {"DAMC": 0.63, "expert:image": 0.41, ...}
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence


from ..errors import CompositionError
from ..generate import GenerationConfig
from .files import (MODALITY_ALIASES, ROLE_ALIASES, McubFormatError, McubItem, QuestionSet,  # noqa: F401 (public here)
                         load_mcub, load_question_set)
from .predictions import variant_slug, write_lines
from .prompt import PAPER_MAX_NEW_TOKENS, PROMPT_MODES, check_paper_turn, paper_message
from .scoring import LETTERS, RULES, ScoringRule, score_answer  # noqa: F401 (public here)

# How long generated answers are: only the first letter is scored, so a few tokens suffice.
DEFAULT_CONFIG = GenerationConfig(max_new_tokens=4, temperature=0.0)
# The paper's decoding: greedy, 128 new tokens at most (model_multimodal_qa_loader.py).
PAPER_CONFIG = GenerationConfig(max_new_tokens=PAPER_MAX_NEW_TOKENS, temperature=0.0)


# --- results ------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One (item, variant) answer and its score: ``predicted`` is what the rule read, ``gold`` what it had to be."""

    item_id: str
    variant: str
    answer: str
    predicted: str | None
    gold: str
    subset: str = ""

    @property
    def correct(self) -> bool:
        return self.predicted is not None and self.predicted == self.gold

    def to_json(self) -> dict:
        return {"id": self.item_id, "variant": self.variant, "answer": self.answer, "predicted": self.predicted,
                "gold": self.gold, "correct": self.correct, "subset": self.subset}


def accuracy(predictions: Iterable[Prediction], variants: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction correct per variant (in ``variants`` order, else first-seen order); the denominator
    is the number of outputs, as in the paper's scorers.

    A variant named in ``variants`` with no prediction is an error, not 0 %: a silent 0 would
    read as a result.
    """
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for p in predictions:
        total[p.variant] = total.get(p.variant, 0) + 1
        right[p.variant] = right.get(p.variant, 0) + int(p.correct)
    order = list(variants) if variants is not None else list(total)
    missing = [v for v in order if v not in total]
    if missing:
        raise CompositionError(f"no predictions for variant {missing[0]!r}; cannot compute its accuracy.")
    return {v: right[v] / total[v] for v in order}


@dataclass
class McubResult:
    """What an evaluation produced: every prediction, in item then variant order, and timing."""

    variants: tuple[str, ...]
    predictions: list[Prediction]
    n_items: int
    seconds: float
    subsets: tuple[str, ...] = field(default=())
    rule: str = "letter"

    def __post_init__(self) -> None:
        if len(self.predictions) != self.n_items * len(self.variants):
            raise CompositionError(f"{len(self.predictions)} predictions for {self.n_items} items x "
                                   f"{len(self.variants)} variants; expected one per pair.")
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise CompositionError(f"seconds={self.seconds!r}; expected a finite non-negative number.")

    @property
    def items_per_second(self) -> float:
        return self.n_items / self.seconds if self.seconds > 0 else float("inf")

    def accuracy(self, subset: str | None = None) -> dict[str, float]:
        """Accuracy per variant, over all items or over one modality subset."""
        chosen = [p for p in self.predictions if subset is None or p.subset == subset]
        return accuracy(chosen, self.variants)

    def subset_items(self, subset: str) -> int:
        return sum(1 for p in self.predictions if p.subset == subset) // max(len(self.variants), 1)

    def statistics(self, subset: str | None = None) -> dict:
        """The paired report (``composition.evaluation.paired``): per variant its 95 % bootstrap interval,
        per pair of variants the right-alone counts and the exact McNemar p-value, on the same items."""
        from .paired import paired_report

        chosen = [p for p in self.predictions if subset is None or p.subset == subset]
        return paired_report(chosen, self.variants)

    def to_json(self) -> dict:
        """``{"items", "accuracy", "statistics", "seconds", "items_per_second"}`` plus ``"subsets"`` when items mix
        modality sets (each with its own statistics)."""
        out = {"items": self.n_items, "accuracy": _rounded(self.accuracy()), "statistics": self.statistics(),
               "seconds": round(self.seconds, 3), "items_per_second": round(self.items_per_second, 4)}
        if len(self.subsets) > 1:
            out["subsets"] = {s: {"items": self.subset_items(s), "accuracy": _rounded(self.accuracy(s)),
                                  "statistics": self.statistics(s)} for s in self.subsets}
        return out

    def write_predictions(self, path: str | Path) -> Path:
        """One JSON line per (item, variant): ``{"id", "variant", "answer", "predicted", "gold", "correct", "subset"}``."""
        return write_lines(path, (p.to_json() for p in self.predictions))

    def paper_lines(self, items: Sequence[McubItem]) -> dict[str, list[dict]]:
        """Per variant, the lines of the paper's predictions file, in item order
        (``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``, as
        ``model_multimodal_qa_loader.py`` writes them, so ``eval_avqa.py`` / ``eval_music_avqa.py``
        score them unchanged). ``answer_id`` is a digest of (variant, id) instead of a random
        uuid, so a rerun, a resumed run and a multi-process run write the same bytes."""
        by_id = {item.id: item for item in items}
        out: dict[str, list[dict]] = {v: [] for v in self.variants}
        for p in self.predictions:
            item = by_id[p.item_id]
            out[p.variant].append({"question_id": item.raw_id, "prompt": item.prompt, "text": p.answer,
                                   "answer_id": hashlib.sha256(f"{p.variant}\0{p.item_id}".encode()).hexdigest()[:22],
                                   "model_id": p.variant, "metadata": {}})
        return out

    def write_paper_predictions(self, folder: str | Path, items: Sequence[McubItem]) -> dict[str, Path]:
        """One paper-format file per variant, ``<folder>/<variant>.jsonl`` (``:`` becomes ``-``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return {v: write_lines(folder / f"{variant_slug(v)}.jsonl", lines) for v, lines in self.paper_lines(items).items()}


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


# --- evaluation ---------------------------------------------------------------------
Progress = Callable[[int, int], None]  # (items done, items in all)
ChunkDone = Callable[[list[Prediction]], None]  # the predictions of one finished chunk


def _variant_name(variant) -> str:
    return variant.name if hasattr(variant, "name") else str(variant).strip()


def evaluate(cm, items: Sequence[McubItem], variants: Sequence | None = None, coefficients=None,
             config: GenerationConfig | None = None, *, batch_items: int = 8, progress: Progress | None = None,
             rule: ScoringRule | None = None, prompt: str = "studio", previous: Mapping[tuple[str, str], str] | None = None,
             on_chunk: ChunkDone | None = None, coefficients_for: Callable[[tuple[str, ...]], object] | None = None,
             merge_all_experts: bool = False, stop_when_scored: bool = True) -> McubResult:
    """Answer every item with every variant and score the answers.

    Args:
        cm: a ``ComposedModel`` with the experts loaded.
        items: MCUB items (``load_mcub``); they may mix modality sets (MCUB-3 subsets).
        variants: names or ``VariantSpec``s; default: ``cm.default_variants`` over all the
            items' modalities (NaiveMC, DAMC, each expert). An expert sees only its own
            modality's input; one whose modality an item lacks answers from the text alone.
        coefficients: λ / μ (``Coefficients``); default: the paper's.
        config: decoding; default greedy with 4 new tokens (``PAPER_CONFIG``: 128, the paper's).
        batch_items: items per generate call; each call has ``batch_items x len(variants)`` rows.
        progress: called with (items done, total) after each chunk.
        rule: the scoring rule (``composition.scoring.RULES``); default the letter rule.
        prompt: "studio" (our prompt lines) or "paper" (the human turn verbatim, ``mcub_prompt``).
        previous: answers already given, ``{(item id, variant name): text}`` (a resumed run):
            items with an answer for every variant are scored from them, not generated again.
        on_chunk: called with the new predictions of each generated chunk (to save progress).
        coefficients_for: per modality set, the coefficients to use (overrides ``coefficients``;
            the λ search gives each set its own ``1/K`` scale).
        merge_all_experts: compositions merge every loaded expert, whatever inputs an item has
            (the original's merged model; ``--prompt paper`` runs use it).
        stop_when_scored: end a chunk's generation once every row's answer is settled under ``rule``
            (``ScoringRule.settled``: no more text could change its score), the batch entry's streaming
            stop; the scores are those of the whole answers. False: every answer runs to its end.
    Returns:
        a McubResult; predictions in the items' order, then the variants' order.
    """
    from ..variants import Coefficients

    items = list(items)
    if not items or not all(isinstance(item, McubItem) for item in items):
        raise CompositionError("evaluate needs a non-empty list of McubItem (see load_mcub).")
    if not isinstance(batch_items, int) or isinstance(batch_items, bool) or batch_items < 1:
        raise CompositionError(f"batch_items={batch_items!r}; expected a positive integer.")
    if prompt not in PROMPT_MODES:
        raise CompositionError(f"prompt={prompt!r}; expected one of {PROMPT_MODES}.")
    rule = rule or RULES["letter"]
    for item in items:  # every check before the first generation
        rule.check_gold(item.answer, f"item {item.id!r}")
        if prompt == "paper":
            check_paper_turn(item.id, item.prompt, [m for m, _ in item.inputs])
    coefficients = coefficients or Coefficients()
    config = config or DEFAULT_CONFIG
    names = list(variants) if variants else cm.default_variants({m for item in items for m in item.modalities})
    if not names:
        raise CompositionError("no variant can answer these items: load experts for their modalities (or name variants).")
    expected = [_variant_name(n) for n in names]
    previous = previous or {}
    stops = tuple(getattr(cm.base.template, "stop_strings", ()) or ())

    def scored(item: McubItem, name: str, text: str) -> Prediction:
        return Prediction(item.id, name, text, rule.predicted(text, stops), rule.target(item.answer), item.subset)

    start = time.perf_counter()
    variant_names: tuple[str, ...] | None = None
    by_index: dict[int, list[Prediction]] = {}
    todo = []
    for i, item in enumerate(items):
        if all((item.id, v) in previous for v in expected):
            by_index[i] = [scored(item, v, previous[(item.id, v)]) for v in expected]
        else:
            todo.append(i)
    done = len(items) - len(todo)
    for chunk in _chunks([items[i] for i in todo], batch_items):
        chunk = [todo[k] for k in chunk]
        modalities = items[chunk[0]].modalities
        coef = coefficients_for(modalities) if coefficients_for is not None else coefficients
        settled = (lambda text: rule.settled(text, stops)) if stop_when_scored else None
        answers = _run_chunk(cm, [items[i] for i in chunk], names, coef, config, prompt, merge_all_experts, settled)
        chunk_names = tuple(name for name, _ in answers[0])
        variant_names = variant_names or chunk_names
        new = []
        for i, item_answers in zip(chunk, answers):
            by_index[i] = [scored(items[i], name, text) for name, text in item_answers]
            new += by_index[i]
        if on_chunk is not None:
            on_chunk(new)
        done += len(chunk)
        if progress is not None:
            progress(done, len(items))
    predictions = [p for i in range(len(items)) for p in by_index[i]]
    subsets = tuple(dict.fromkeys(item.subset for item in items))
    return McubResult(variant_names or tuple(expected), predictions, len(items), time.perf_counter() - start, subsets,
                      rule.name)


def _chunks(items: Sequence[McubItem], size: int) -> list[list[int]]:
    """Item indices in chunks of one modality set each, items of similar length together.

    One set per chunk means one ``resolve`` per chunk, and merge methods with a dense result
    (TIES, DARE) keep theirs for the whole chunk (the engine caches only a few of them). Within a
    set, items are taken in order of their question's length (then file order), so the rows of a
    chunk pad little in the engine's length buckets; results keep the items' order.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.modalities, []).append(i)
    ordered = [sorted(group, key=lambda i: (len(items[i].prompt), i)) for group in groups.values()]
    return [group[s:s + size] for group in ordered for s in range(0, len(group), size)]


def _open_input(item: McubItem, modality: str, path, needs: Mapping[str, list] | None):
    """One file of an item as an input, decoded in the forms the experts read; a bad file is reported with the item id."""
    from ..inputs import ModalInput

    try:
        return ModalInput.open(modality, path, (needs or {}).get(modality) or [{}])
    except ValueError as exc:
        raise CompositionError(f"item {item.id!r}: {exc}") from None


def _load_item_inputs(item: McubItem, needs: Mapping[str, list] | None = None) -> tuple:
    """The item's files as inputs, decoded in the forms the experts read; a bad file is reported with the item id."""
    return tuple(_open_input(item, modality, path, needs) for modality, path in item.inputs)


# Files of a chunk decoded at once. Video decoding (decord, one thread per reader) is C++ that
# leaves Python's lock free, so threads overlap even on 2 cores: 16 MCUB-synth-4 items' 64 files
# took 2.1 s on one thread and 1.1 s on four (2-core CPU).
FILE_THREADS = 4


def _load_chunk_inputs(chunk: Sequence[McubItem], needs: Mapping[str, list] | None = None) -> list[tuple]:
    """Every item's inputs (as ``_load_item_inputs``), the chunk's files decoded on ``FILE_THREADS`` threads.
    A bad file raises for the first such item in the chunk's order, as one thread would."""
    from concurrent.futures import ThreadPoolExecutor

    files = [(item, modality, path) for item in chunk for modality, path in item.inputs]
    if len(files) <= 1:
        return [_load_item_inputs(item, needs) for item in chunk]
    with ThreadPoolExecutor(min(FILE_THREADS, len(files)), thread_name_prefix="mcub-files") as pool:
        futures = [pool.submit(_open_input, item, modality, path, needs) for item, modality, path in files]
        opened = iter([future.result() for future in futures])
    return [tuple(next(opened) for _ in item.inputs) for item in chunk]


def _run_chunk(cm, chunk: list[McubItem], names: Sequence, coefficients, config: GenerationConfig,
               prompt: str = "studio", merge_all_experts: bool = False,
               settled: Callable[[str], bool] | None = None) -> list[list[tuple[str, str]]]:
    """Every (item, variant) of a chunk in one batch of the engine's batch entry.

    Prompt lengths differ (a single expert sees one input, a composition all of them); the
    engine prefills them in length buckets, so short rows are not padded to the longest (on a
    CPU, prefill cost is the padded token count), prefills once what one variant's rows share
    (the template's system prompt), and decodes every row together. ``settled(text)``: the
    generation stops once it holds for every row's text so far (the streaming stop).
    """
    from ..composer import RowRequest
    from ..inputs import decoder_needs

    needs = decoder_needs(cm.experts.values())
    inputs = _load_chunk_inputs(chunk, needs)  # file decoding outside the model's lock
    plan = cm.plan(set(chunk[0].modalities), names, coefficients, merge_all_experts=merge_all_experts)
    requests = [RowRequest(item.prompt, item_inputs, message_fn=paper_message) if prompt == "paper"
                else RowRequest(item.question, item_inputs) for item, item_inputs in zip(chunk, inputs)]
    texts: list[list[str]] = []
    on_step = should_stop = None
    if settled is not None:
        def on_step(step: list[list[str]]) -> None:
            texts[:] = step

        def should_stop() -> bool:
            return bool(texts) and all(settled(text) for row in texts for text in row)
    answers = cm.generate_rows(requests, plan, config, on_step=on_step, should_stop=should_stop)
    return [[(a.variant.name, a.text) for a in row] for row in answers]


def evaluate_to_file(cm, items: Sequence[McubItem], variants: Sequence, coefficients, path: str | Path | None,
                     settings: dict, *, resume: bool = False, progress: Callable[[int, int], None] | None = None,
                     **options) -> tuple["McubResult", int]:
    """``evaluate`` with its answers kept in a predictions file: (result, answers reused).

    With ``resume``, answers already in ``path`` under the same ``settings`` are reused; every chunk
    is appended as it is answered (a stopped run loses at most one chunk), and the whole file is
    rewritten in item order at the end. ``path`` None: no file. ``options`` go to ``evaluate``.
    """
    from . import predictions as pred_files

    previous, log = {}, None
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            previous = pred_files.read_previous(path, settings, {item.id for item in items})
        pred_files.write_settings(path, settings)
        log = pred_files.ProgressLog(path, fresh=not resume)
    try:
        result = evaluate(cm, items, variants, coefficients, previous=previous, on_chunk=log, progress=progress, **options)
    finally:
        if log is not None:
            log.close()
    if path is not None:
        pred_files.write_lines(path, (p.to_json() for p in result.predictions))
    return result, len(previous)
