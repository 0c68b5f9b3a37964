"""MCUB evaluation: score compositions and single experts on MCUB (or MCUB-synth) items.

MCUB (the paper's Multimodal Commonality Understanding Benchmark) gives 3 or 4 inputs of
different modalities and asks which option (A-D) they have in common; an answer is right
when its first option letter is the gold one. The runner batches items *and* variants
together: one `generate_batch` call answers every (item, variant) pair of a chunk of items,
so evaluating six variants costs little more than one (DESIGN.md §1, "side by side means
batched").

    from composition.mcub import load_mcub, evaluate
    items = load_mcub("mcub-synth4.json")
    result = evaluate(cm, items, batch_items=8)
    result.accuracy()          # {"DAMC": 0.93, "expert:image": 0.51, ...}

The JSON layout is the original MCUB one (also what `training.mcub_synth` writes): a list
of items ``{"id", "conversations": [{"from": "human", "value": question}, {"from": "gpt",
"value": "B"}], "modal_inputs": {"image": "files/1.png", ...}}`` with paths relative to
the JSON file. Files are read only from within the JSON file's folder.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import CompositionError
from .generate import GenerationConfig, generate_batch, length_buckets  # noqa: F401 (length_buckets: public here too)

LETTERS = ("A", "B", "C", "D")

# `modal_inputs` keys -> our modality names. The original MCUB release and LLaVA-style
# data use the first of each group; the others are common spellings in multimodal data sets.
MODALITY_ALIASES: dict[str, str] = {
    "image": "image", "images": "image", "img": "image", "picture": "image", "photo": "image",
    "audio": "audio", "sound": "audio", "speech": "audio", "wav": "audio",
    "video": "video", "videos": "video", "clip": "video",
    "point": "point", "points": "point", "pc": "point", "point_cloud": "point", "pointcloud": "point",
    "point-cloud": "point", "3d": "point", "pcd": "point",
}

# Conversation roles: LLaVA-style "human"/"gpt", chat-style "user"/"assistant".
ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}

# How long generated answers are: only the first letter is scored, so a few tokens suffice.
DEFAULT_CONFIG = GenerationConfig(max_new_tokens=4, temperature=0.0)


class McubFormatError(CompositionError):
    """An MCUB JSON file does not have the expected layout, or names a file it may not read."""


# --- scoring ------------------------------------------------------------------------
_UPPER_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")
_LEADING_LOWER = re.compile(r"^[\s(\[{\"'*]*([a-d])(?:[\s.):\]}\"'*,;!]*)$|^[\s(\[{\"'*]*([a-d])[.):\]]")


def score_answer(text: str) -> str | None:
    """The option letter an answer chose, or None; the MCUB rule "compare the first letter".

    Exactly:
    1. A lowercase ``a``-``d`` counts only when it opens the answer and stands alone or is
       followed by ``.``, ``)``, ``:`` or ``]`` ("b", "b.", "(b)", "c) drum") -- a lowercase
       letter elsewhere is the article "a" or part of a word, never an option.
    2. Otherwise the first uppercase ``A``-``D`` that is a word of its own (no letter or
       digit touching it): "B", "B.", "(B)", "Answer: B", "The answer is C" all work, while
       the "A" of "Answer" or of "ABC" does not count.
    Whitespace around the answer is ignored; an answer with no such letter scores None
    (always wrong).
    """
    if not isinstance(text, str):
        raise CompositionError(f"an answer to score must be a string, got {type(text).__name__}.")
    text = text.strip()
    lower = _LEADING_LOWER.match(text)
    if lower:
        return (lower.group(1) or lower.group(2)).upper()
    upper = _UPPER_LETTER.search(text)
    return upper.group(1) if upper else None


# --- items --------------------------------------------------------------------------
@dataclass(frozen=True)
class McubItem:
    """One MCUB question: its inputs (in prompt order), the question text and the gold letter."""

    id: str
    question: str
    answer: str
    inputs: tuple[tuple[str, Path], ...]  # (modality, file), modality order of the prompt

    def __post_init__(self) -> None:
        from modalities import MODALITY_NAMES

        if not isinstance(self.id, str) or not self.id:
            raise McubFormatError(f"an MCUB item id must be a non-empty string, got {self.id!r}.")
        if not isinstance(self.question, str) or not self.question.strip():
            raise McubFormatError(f"item {self.id!r}: the question is empty.")
        if self.answer not in LETTERS:
            raise McubFormatError(f"item {self.id!r}: gold answer {self.answer!r}; expected one of {LETTERS}.")
        if not self.inputs:
            raise McubFormatError(f"item {self.id!r} has no inputs; an MCUB item has 3 or 4 modalities.")
        for modality, path in self.inputs:
            if modality not in MODALITY_NAMES:
                raise McubFormatError(f"item {self.id!r}: unknown modality {modality!r}; expected one of {MODALITY_NAMES}.")
            if not isinstance(path, Path):
                raise McubFormatError(f"item {self.id!r}: the {modality} input must be a Path, got {type(path).__name__}.")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for m, _ in self.inputs))

    @property
    def subset(self) -> str:
        """The modality set, e.g. "image+audio+video" (MCUB-3 is reported per subset)."""
        return "+".join(self.modalities)


def load_mcub(path: str | Path) -> list[McubItem]:
    """Read an MCUB JSON file (original or MCUB-synth) and check its layout and files.

    Refused, each with a message naming the item: a top level that is not a non-empty list,
    an item without ``conversations`` (a human and a gpt turn) or ``modal_inputs``, a gold
    answer with no letter A-D, an unknown modality key (see MODALITY_ALIASES), a path that
    is absolute or leaves the JSON's folder (``..``, or a link pointing outside), a missing
    file, and duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise McubFormatError(f"MCUB file {path.name!r} was not found; pass an MCUB JSON file, synth-3 or synth-4.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, numbers too long, nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:160]
        raise McubFormatError(f"MCUB file {path.name!r} is not valid JSON ({reason}).") from None
    if not isinstance(data, list) or not data:
        raise McubFormatError(f"MCUB file {path.name!r} must hold a non-empty JSON list of items, "
                              f"got {type(data).__name__}{'' if data else ' (empty)'}.")
    root = path.resolve().parent
    items = [_parse_item(raw, i, root) for i, raw in enumerate(data)]
    duplicated = [k for k, n in Counter(item.id for item in items).items() if n > 1]
    if duplicated:
        raise McubFormatError(f"MCUB file {path.name!r}: item id {duplicated[0]!r} appears more than once; ids must be unique.")
    return items


def _parse_item(raw, index: int, root: Path) -> McubItem:
    where = f"item {index + 1}"
    if not isinstance(raw, dict):
        raise McubFormatError(f"{where} must be a JSON object, got {type(raw).__name__}.")
    item_id = raw.get("id", f"item-{index + 1}")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or item_id == "":
        raise McubFormatError(f"{where}: id {item_id!r} must be a non-empty string or an integer.")
    item_id = str(item_id)
    where = f"item {item_id!r}"
    question, gold_text = _turns(raw.get("conversations"), where)
    gold = score_answer(gold_text)
    if gold is None:
        raise McubFormatError(f"{where}: the gpt turn {gold_text[:40]!r} has no option letter A-D.")
    return McubItem(item_id, _strip_placeholders(question), gold, _inputs(raw.get("modal_inputs"), where, root))


def _turns(conversations, where: str) -> tuple[str, str]:
    """The first human turn (question) and the first gpt turn (gold answer)."""
    if not isinstance(conversations, list) or not conversations:
        raise McubFormatError(f"{where}: 'conversations' must be a non-empty list of turns, got {conversations!r:.60}.")
    found: dict[str, str] = {}
    for turn in conversations:
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise McubFormatError(f"{where}: every turn must be {{\"from\": str, \"value\": str}}, got {turn!r:.60}.")
        found.setdefault(ROLE_ALIASES.get(turn["from"].strip().lower(), turn["from"]), turn["value"])
    for role in ("human", "gpt"):
        if role not in found:
            raise McubFormatError(f"{where}: 'conversations' has no {role!r} turn; expected a human question and a gpt answer.")
    return found["human"], found["gpt"]


def _inputs(modal_inputs, where: str, root: Path) -> tuple[tuple[str, Path], ...]:
    from modalities import MODALITY_NAMES

    if not isinstance(modal_inputs, dict) or not modal_inputs:
        raise McubFormatError(f"{where}: 'modal_inputs' must be a non-empty object {{modality: path}}, got {modal_inputs!r:.60}.")
    per_modality: dict[str, list[Path]] = {}
    for key, value in modal_inputs.items():
        modality = MODALITY_ALIASES.get(str(key).strip().lower())
        if modality is None:
            raise McubFormatError(f"{where}: unknown modal_inputs key {key!r}; expected one of {sorted(MODALITY_ALIASES)}.")
        paths = value if isinstance(value, list) else [value]
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise McubFormatError(f"{where}: the {key!r} input must be a relative path (or a list of them), got {value!r:.60}.")
        per_modality.setdefault(modality, []).extend(_safe_path(p, root, where) for p in paths)
    return tuple((m, p) for m in MODALITY_NAMES for p in per_modality.get(m, ()))


def _safe_path(relative: str, root: Path, where: str) -> Path:
    """``root / relative``, refusing anything outside ``root``: a data file must not read the disk at large."""
    raw = Path(relative)
    if raw.is_absolute() or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise McubFormatError(f"{where}: path {relative!r} is absolute; MCUB paths must be relative to the JSON file's folder.")
    if ".." in raw.parts or ".." in Path(relative.replace("\\", "/")).parts:
        raise McubFormatError(f"{where}: path {relative!r} leaves the JSON file's folder ('..'); files are read only from within it.")
    try:
        full = (root / raw).resolve()
    except (OSError, RuntimeError):  # a link loop (Python < 3.13 raises RuntimeError with the full path)
        raise McubFormatError(f"{where}: path {relative!r} is a link that loops back on itself; link the file itself.") from None
    if not full.is_relative_to(root):
        raise McubFormatError(f"{where}: path {relative!r} points outside the JSON file's folder; files are read only from within it.")
    if not full.is_file():
        raise McubFormatError(f"{where}: input file {relative!r} was not found next to the JSON file.")
    return full


def _strip_placeholders(question: str) -> str:
    """Drop modality placeholders like ``<image>`` from a question: our prompt adds its own lines."""
    from modalities import MODALITY_NAMES, get_modality

    for name in MODALITY_NAMES:
        question = question.replace(get_modality(name).placeholder, "")
    return "\n".join(line for line in question.splitlines() if line.strip()).strip()


# --- results ------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One (item, variant) answer and its score."""

    item_id: str
    variant: str
    answer: str
    predicted: str | None
    gold: str
    subset: str = ""

    @property
    def correct(self) -> bool:
        return self.predicted == self.gold

    def to_json(self) -> dict:
        return {"id": self.item_id, "variant": self.variant, "answer": self.answer, "predicted": self.predicted,
                "gold": self.gold, "correct": self.correct, "subset": self.subset}


def accuracy(predictions: Iterable[Prediction], variants: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction correct per variant (in ``variants`` order, else first-seen order).

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

    def to_json(self) -> dict:
        """``{"items", "accuracy", "seconds", "items_per_second"}`` plus ``"subsets"`` when items mix modality sets."""
        out = {"items": self.n_items, "accuracy": _rounded(self.accuracy()), "seconds": round(self.seconds, 3),
               "items_per_second": round(self.items_per_second, 4)}
        if len(self.subsets) > 1:
            out["subsets"] = {s: {"items": self.subset_items(s), "accuracy": _rounded(self.accuracy(s))} for s in self.subsets}
        return out

    def write_predictions(self, path: str | Path) -> Path:
        """One JSON line per (item, variant)."""
        path = Path(path)
        with path.open("w", encoding="utf-8") as f:
            for p in self.predictions:
                f.write(json.dumps(p.to_json()) + "\n")
        return path


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


# --- evaluation ---------------------------------------------------------------------
Progress = Callable[[int, int], None]  # (items done, items in all)


def evaluate(cm, items: Sequence[McubItem], variants: Sequence | None = None, coefficients=None,
             config: GenerationConfig | None = None, *, batch_items: int = 8, progress: Progress | None = None) -> McubResult:
    """Answer every item with every variant and score the answers.

    Args:
        cm: a ``ComposedModel`` with the experts loaded.
        items: MCUB items (``load_mcub``); they may mix modality sets (MCUB-3 subsets).
        variants: names or ``VariantSpec``s; default: ``cm.default_variants`` over all the
            items' modalities (NaiveMC, DAMC, each expert). An expert sees only its own
            modality's input; one whose modality an item lacks answers from the text alone.
        coefficients: λ / μ (``Coefficients``); default: the paper's.
        config: decoding; default greedy with 4 new tokens (only the first letter counts).
        batch_items: items per generate call; each call has ``batch_items x len(variants)`` rows.
        progress: called with (items done, total) after each chunk.
    Returns:
        a McubResult; predictions in the items' order, then the variants' order.
    """
    from .variants import Coefficients

    items = list(items)
    if not items or not all(isinstance(item, McubItem) for item in items):
        raise CompositionError("evaluate needs a non-empty list of McubItem (see load_mcub).")
    if not isinstance(batch_items, int) or isinstance(batch_items, bool) or batch_items < 1:
        raise CompositionError(f"batch_items={batch_items!r}; expected a positive integer.")
    coefficients = coefficients or Coefficients()
    config = config or DEFAULT_CONFIG
    names = list(variants) if variants else cm.default_variants({m for item in items for m in item.modalities})
    if not names:
        raise CompositionError("no variant can answer these items: load experts for their modalities (or name variants).")
    start = time.perf_counter()
    variant_names: tuple[str, ...] | None = None
    by_index: dict[int, list[Prediction]] = {}
    done = 0
    for chunk in _chunks(items, batch_items):
        answers = _run_chunk(cm, [items[i] for i in chunk], names, coefficients, config)
        chunk_names = tuple(name for name, _ in answers[0])
        variant_names = variant_names or chunk_names
        for i, item_answers in zip(chunk, answers):
            by_index[i] = [Prediction(items[i].id, name, text, score_answer(text), items[i].answer, items[i].subset)
                           for name, text in item_answers]
        done += len(chunk)
        if progress is not None:
            progress(done, len(items))
    predictions = [p for i in range(len(items)) for p in by_index[i]]
    subsets = tuple(dict.fromkeys(item.subset for item in items))
    return McubResult(variant_names, predictions, len(items), time.perf_counter() - start, subsets)


def _chunks(items: Sequence[McubItem], size: int) -> list[list[int]]:
    """Item indices in chunks of one modality set each.

    One set per chunk means one ``resolve`` per chunk, and merge methods with a dense result
    (TIES, DARE) keep theirs for the whole chunk (the engine caches only a few of them).
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.modalities, []).append(i)
    return [group[s:s + size] for group in groups.values() for s in range(0, len(group), size)]


def _load_item_inputs(item: McubItem) -> list:
    """The item's files as ModalInputs; a bad file is reported with the item id."""
    from modalities import get_modality

    from .composer import ModalInput

    inputs = []
    for modality, path in item.inputs:
        try:
            inputs.append(ModalInput.from_loaded(get_modality(modality).load(path)))
        except ValueError as exc:
            raise CompositionError(f"item {item.id!r}: {exc}") from None
    return inputs


def _run_chunk(cm, chunk: list[McubItem], names: Sequence, coefficients, config: GenerationConfig) -> list[list[tuple[str, str]]]:
    """Every (item, variant) of a chunk in one generate call.

    Row ``k * V + v`` is item k with variant v. Prompt lengths differ (a single expert sees
    one input, a composition all of them); ``generate_batch`` prefills them in length
    buckets, so short rows are not padded to the longest (on a CPU, prefill cost is the
    padded token count), and decodes every row together.
    """
    inputs = [_load_item_inputs(item) for item in chunk]  # file decoding outside the lock
    present = set(chunk[0].modalities)
    with cm.lock:
        resolved = cm.resolve(names, coefficients, present)
        rows = [row for item, item_inputs in zip(chunk, inputs) for row in cm.prompt_rows(item.question, item_inputs, resolved)]
        table = cm.coef_table(resolved * len(chunk))
        tokens = generate_batch(cm.model, cm.router, cm.routed_batch(rows), table, config, cm.base.eos_token_ids)
    v = len(resolved)
    return [[(resolved[j].name, cm.decode(tokens[k * v + j])) for j in range(v)] for k in range(len(chunk))]


# --- MCUB-synth sets ----------------------------------------------------------------
SYNTH_KINDS = ("synth-4", "synth-3")


def synth_cache_dir() -> Path:
    """Where built MCUB-synth sets are kept: ``<repo>/.cache/mcub-synth`` (git-ignored)."""
    return Path(__file__).resolve().parent.parent / ".cache" / "mcub-synth"


def synth_sets(kind: str, seed: int = 0, n_items: int = 200, cache_dir: str | Path | None = None,
               workers: int | None = None, on_build: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The MCUB-synth JSON files of ``kind``, built once and reused (keyed by seed and size).

    Returns ``{"image+audio+video+point": path}`` for synth-4, and one entry per 3-modality
    subset for synth-3 (the paper reports MCUB-3 per subset). A cached set is reused when
    its JSON loads (every file present); rendering is the cost, spread over ``workers``.
    """
    import os

    from training.mcub_synth import SYNTH3_SUBSETS, build_mcub_synth, set_name

    if kind not in SYNTH_KINDS:
        raise CompositionError(f"unknown MCUB-synth set {kind!r}; expected one of {SYNTH_KINDS}.")
    if not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 1:
        raise CompositionError(f"n_items={n_items!r}; expected a positive integer.")
    folder = Path(cache_dir or synth_cache_dir()) / f"seed{seed}-n{n_items}"
    subsets = [None] if kind == "synth-4" else list(SYNTH3_SUBSETS)
    paths = {}
    for subset in subsets:
        name = "+".join(subset) if subset else "image+audio+video+point"
        path = folder / f"mcub-{set_name(kind, subset)}.json"
        if not _loads(path, n_items):
            if on_build is not None:
                on_build(f"building MCUB-{kind} {name} ({n_items} items, seed {seed}) in {folder}")
            path = build_mcub_synth(kind, seed, n_items, folder, subset, workers=workers or os.cpu_count() or 1)
        paths[name] = path
    return paths


def _loads(path: Path, n_items: int) -> bool:
    if not path.is_file():
        return False
    try:
        return len(load_mcub(path)) == n_items
    except McubFormatError:
        return False
