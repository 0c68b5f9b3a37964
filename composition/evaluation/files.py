"""Reading MCUB-style question files: the paper's released files unchanged, and MCUB-synth.

The released layout (THUNLP-MT/ModelCompose: ``data/test/MCUB-4.json``,
``MCUB-3-{image-audio-video,audio-video-pointcloud,image-audio-pointcloud,image-video-pointcloud}.json``,
``avqa-test_mm_*.json``, ``music-avqa-test_mm_*.json``; read by
``modelcompose/eval/model_multimodal_qa_loader.py`` through ``modelcompose/data/multimodal_dataset.py``)::

    [{"id": ..., "conversations": [{"from": "human", "value": "image: <image>\\n...question"},
                                   {"from": "gpt", "value": null}],
      "modal_inputs": {"vision": ["path.jpg"], "audio": ["path.wav"], "video": [...], "point": [...]}}]

The gold answers are in a separate file (``MCUB-answer.json``, ``avqa-test_mm_answer.json``,
``music-avqa-test_mm_answer.json``), read as ``id -> conversations[-1].value``
(``modelcompose/eval/eval_avqa.py``). MCUB-synth files (``training.mcub_synth``) carry the
gold in the gpt turn and string paths.

Paths: the original opens them as given, so relative paths resolve against the working
directory. Here they resolve against ``data_root`` when one is given, else against the
JSON's folder, then the working directory. Path safety holds either way: a path is read
only when it resolves inside the root it was resolved against (no ``..``, no link pointing
out; an absolute path only when it lies inside a root).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import CompositionError

# Question and answers files are read whole; beyond this they are refused (MUSIC-AVQA's test
# split, the largest, is a few MB).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# `modal_inputs` keys -> our modality names. "vision" is the released files' key (ModelCompose
# constants.MODAL_TOKENS); the others are common spellings in multimodal data sets.
MODALITY_ALIASES: dict[str, str] = {
    "image": "image", "images": "image", "img": "image", "picture": "image", "photo": "image", "vision": "image",
    "audio": "audio", "sound": "audio", "speech": "audio", "wav": "audio",
    "video": "video", "videos": "video", "clip": "video",
    "point": "point", "points": "point", "pc": "point", "point_cloud": "point", "pointcloud": "point",
    "point-cloud": "point", "3d": "point", "pcd": "point",
}

# Conversation roles: LLaVA-style "human"/"gpt", chat-style "user"/"assistant".
ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class McubFormatError(CompositionError):
    """An MCUB JSON file does not have the expected layout, or names a file it may not read."""


@dataclass(frozen=True)
class McubItem:
    """One question: its inputs (in prompt order), the question, the gold answer and the file's own turn.

    ``question`` has the modality placeholders removed (the studio prompt adds its own lines);
    ``prompt`` is the human turn verbatim (the paper-fidelity prompt and the paper's
    predictions file use it); ``raw_id`` is the id as the file has it (int or str).
    """

    id: str
    question: str
    answer: str
    inputs: tuple[tuple[str, Path], ...]  # (modality, file), modality order of the prompt
    prompt: str = ""
    raw_id: Any = None
    synth: bool = False  # an MCUB-synth item (it carries a meta record)

    def __post_init__(self) -> None:
        from modalities import MODALITY_NAMES

        if not isinstance(self.id, str) or not self.id:
            raise McubFormatError(f"an MCUB item id must be a non-empty string, got {self.id!r}.")
        if not isinstance(self.question, str) or not self.question.strip():
            raise McubFormatError(f"item {self.id!r}: the question is empty.")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise McubFormatError(f"item {self.id!r}: the gold answer {self.answer!r} is empty.")
        if not self.inputs:
            raise McubFormatError(f"item {self.id!r} has no inputs; an MCUB item has at least one modality input.")
        for modality, path in self.inputs:
            if modality not in MODALITY_NAMES:
                raise McubFormatError(f"item {self.id!r}: unknown modality {modality!r}; expected one of {MODALITY_NAMES}.")
            if not isinstance(path, Path):
                raise McubFormatError(f"item {self.id!r}: the {modality} input must be a Path, got {type(path).__name__}.")
        if not self.prompt:
            object.__setattr__(self, "prompt", self.question)
        if self.raw_id is None:
            object.__setattr__(self, "raw_id", self.id)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for m, _ in self.inputs))

    @property
    def subset(self) -> str:
        """The modality set, e.g. "image+audio+video" (MCUB-3 is reported per subset)."""
        return "+".join(self.modalities)


@dataclass
class QuestionSet:
    """A loaded question file: its items, the files it came from, and answers nobody asked for."""

    items: list[McubItem]
    path: Path
    answers_path: Path | None = None
    answers_without_question: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.path.name] + ([self.answers_path.name] if self.answers_path else [])


# --- reading -------------------------------------------------------------------------
def read_json_file(path: str | Path, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """A JSON file's content; refused clearly when missing, too large or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise McubFormatError(f"{what} {path.name!r} was not found; check the path.")
    size = path.stat().st_size
    if size > max_bytes:
        raise McubFormatError(f"{what} {path.name!r} is {size / 2**20:.1f} MiB; files over {max_bytes / 2**20:.0f} MiB "
                              "are refused (the released MCUB/AVQA files are a few MB). Split it, or check it is the right file.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, numbers too long, nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:160]
        raise McubFormatError(f"{what} {path.name!r} is not valid JSON ({reason}).") from None


def load_question_set(path: str | Path, *, answers: str | Path | None = None, data_root: str | Path | None = None,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> QuestionSet:
    """Read a question file (released or MCUB-synth), join the answers file, check every input path.

    Args:
        path: the question JSON.
        answers: the answers JSON (``id -> conversations[-1].value``); None = the gpt turns hold the gold.
        data_root: the folder relative input paths resolve against; None = the JSON's folder,
            then the working directory.
        max_bytes: larger question or answers files are refused before reading.
    Raises:
        McubFormatError: naming the item and what is wrong (layout, types, a missing or
        escaping path, ids without an answer, duplicate ids, a file too large).
    """
    path = Path(path)
    data = read_json_file(path, "MCUB file", max_bytes)
    if not isinstance(data, list) or not data:
        raise McubFormatError(f"MCUB file {path.name!r} must hold a non-empty JSON list of items, "
                              f"got {type(data).__name__}{'' if data else ' (empty)'}.")
    roots = _roots(path, data_root)
    explicit = data_root is not None
    gold_by_id = _read_answers(Path(answers), max_bytes) if answers is not None else None
    items = [_parse_item(raw, i, roots, gold_by_id, explicit) for i, raw in enumerate(data)]
    duplicated = [k for k, n in Counter(item.id for item in items).items() if n > 1]
    if duplicated:
        raise McubFormatError(f"MCUB file {path.name!r}: item id {duplicated[0]!r} appears more than once; ids must be unique.")
    extra: list[str] = []
    if gold_by_id is not None:
        missing = [item.id for item in items if item.answer == _NO_ANSWER]
        if missing:
            raise McubFormatError(f"{len(missing)} question(s) of {path.name!r} have no answer in {Path(answers).name!r} "
                                  f"(ids {', '.join(repr(m) for m in missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                                  "pass the answers file that belongs to these questions.")
        asked = {item.id for item in items}
        extra = [k for k in gold_by_id if k not in asked]
    return QuestionSet(items, path, Path(answers) if answers is not None else None, extra)


def load_mcub(path: str | Path, *, answers: str | Path | None = None, data_root: str | Path | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> list[McubItem]:
    """The items of a question file (see ``load_question_set``)."""
    return load_question_set(path, answers=answers, data_root=data_root, max_bytes=max_bytes).items


_NO_ANSWER = "\x00no answer"  # a placeholder gold, replaced by an error naming every such id


def _read_answers(path: Path, max_bytes: int) -> dict[str, str]:
    data = read_json_file(path, "answers file", max_bytes)
    if not isinstance(data, list) or not data:
        raise McubFormatError(f"answers file {path.name!r} must hold a non-empty JSON list of "
                              "{\"id\", \"conversations\"} items, like MCUB-answer.json.")
    gold: dict[str, str] = {}
    for index, raw in enumerate(data):
        where = f"answers file {path.name!r}, entry {index + 1}"
        if not isinstance(raw, dict):
            raise McubFormatError(f"{where} must be a JSON object, got {type(raw).__name__}.")
        item_id = _item_id(raw.get("id"), where, required=True)
        turns = raw.get("conversations")
        if not isinstance(turns, list) or not turns or not isinstance(turns[-1], dict):
            raise McubFormatError(f"{where} (id {item_id!r}): 'conversations' must be a non-empty list of turns; "
                                  "the answer is the last turn's value.")
        value = turns[-1].get("value")
        if not isinstance(value, str) or not value.strip():
            raise McubFormatError(f"{where} (id {item_id!r}): the last turn's value must be the answer text, got {value!r:.40}.")
        if item_id in gold and gold[item_id] != value:
            raise McubFormatError(f"{where}: id {item_id!r} appears twice with different answers; ids must be unique.")
        gold[item_id] = value
    return gold


def _item_id(value, where: str, required: bool = False, default: str = "") -> str:
    if value is None and not required:
        return default
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise McubFormatError(f"{where}: id {value!r} must be a non-empty string or an integer.")
    return str(value)


def _parse_item(raw, index: int, roots: list[Path], gold_by_id: dict[str, str] | None, explicit: bool) -> McubItem:
    where = f"item {index + 1}"
    if not isinstance(raw, dict):
        raise McubFormatError(f"{where} must be a JSON object, got {type(raw).__name__}.")
    raw_id = raw.get("id", f"item-{index + 1}")
    item_id = _item_id(raw.get("id"), where, default=f"item-{index + 1}")
    where = f"item {item_id!r}"
    human, gpt = _turns(raw.get("conversations"), where)
    if gold_by_id is not None:
        gold = gold_by_id.get(item_id, _NO_ANSWER)
    elif gpt is None:
        raise McubFormatError(f"{where}: the gold answer is missing (the gpt turn is null or absent); "
                              "pass the answers file with --answers (e.g. MCUB-answer.json).")
    else:
        gold = gpt
    if not gold.strip():
        raise McubFormatError(f"{where}: the gold answer is empty.")
    question = _strip_placeholders(human)
    if not question:
        raise McubFormatError(f"{where}: the human turn holds only placeholders; it needs the question text.")
    return McubItem(item_id, question, gold, _inputs(raw.get("modal_inputs"), where, roots, explicit), prompt=human,
                    raw_id=raw_id, synth=isinstance(raw.get("meta"), dict))


def _turns(conversations, where: str) -> tuple[str, str | None]:
    """The first human turn (question) and the first gpt turn (gold answer, or None when null/absent)."""
    if not isinstance(conversations, list) or not conversations:
        raise McubFormatError(f"{where}: 'conversations' must be a non-empty list of turns, got {conversations!r:.60}.")
    found: dict[str, str | None] = {}
    for turn in conversations:
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
            raise McubFormatError(f"{where}: every turn must be {{\"from\": str, \"value\": str or null}}, got {turn!r:.60}.")
        role = ROLE_ALIASES.get(turn["from"].strip().lower(), turn["from"])
        value = turn.get("value")
        if value is not None and not isinstance(value, str) or (role == "human" and value is None):
            raise McubFormatError(f"{where}: every turn must be {{\"from\": str, \"value\": str or null}} "
                                  f"(the human turn a string), got {turn!r:.60}.")
        found.setdefault(role, value)
    if "human" not in found:
        raise McubFormatError(f"{where}: 'conversations' has no 'human' turn; expected the question as the human turn.")
    return found["human"], found.get("gpt")


def _inputs(modal_inputs, where: str, roots: list[Path], explicit: bool) -> tuple[tuple[str, Path], ...]:
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
        per_modality.setdefault(modality, []).extend(resolve_input_path(p, where, roots, explicit) for p in paths)
    return tuple((m, p) for m in MODALITY_NAMES for p in per_modality.get(m, []))


def _roots(path: Path, data_root: str | Path | None) -> list[Path]:
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise McubFormatError(f"--data-root {str(data_root)!r} is not a folder; pass the folder the file's paths are relative to.")
        return [root.resolve()]
    return list(dict.fromkeys([path.resolve().parent, Path.cwd().resolve()]))


def resolve_input_path(relative: str, where: str, roots: Sequence[Path], explicit: bool = False) -> Path:
    """The file ``relative`` names, inside the first root that has it; refused when it would leave its root.

    ``explicit``: the roots are the user's ``--data-root`` (messages say "the data root"),
    else the JSON file's folder and the working directory.
    """
    root_name = "the data root" if explicit else "the JSON file's folder"
    searched = "the data root" if explicit else "the JSON file's folder or the working directory"
    if "\x00" in relative:
        raise McubFormatError(f"{where}: path {relative[:60]!r} contains a NUL character.")
    if re.match(r"^[A-Za-z]:", relative) or relative.startswith("\\"):
        raise McubFormatError(f"{where}: path {relative!r} is absolute (a Windows drive or share); paths must be "
                              f"relative to {root_name}.")
    if ".." in Path(relative.replace("\\", "/")).parts:
        raise McubFormatError(f"{where}: path {relative!r} leaves {root_name} ('..'); files are read only from within it.")
    absolute = Path(relative).is_absolute()
    escaped = False
    for root in roots:
        try:
            full = Path(relative).resolve() if absolute else (root / relative).resolve()
        except (OSError, RuntimeError):  # a link loop (Python < 3.13 raises RuntimeError with the full path)
            raise McubFormatError(f"{where}: path {relative!r} is a link that loops back on itself; link the file itself.") from None
        if not full.is_relative_to(root):
            escaped = escaped or absolute or os.path.lexists(root / relative)
            continue
        if full.is_file():
            return full
    if absolute:
        raise McubFormatError(f"{where}: path {relative!r} is absolute and not inside {searched}; "
                              "pass --data-root with the folder that holds the files.")
    if escaped:
        raise McubFormatError(f"{where}: path {relative!r} points outside {root_name}; files are read only from within it.")
    raise McubFormatError(f"{where}: input file {relative!r} was not found under {searched}; pass --data-root with the "
                          "folder the file's paths are relative to.")


def _strip_placeholders(question: str) -> str:
    """Drop modality placeholders and their label lines (``image: <image>``) from a question."""
    from modalities import MODALITY_NAMES, get_modality

    from .prompt import drop_placeholder_lines

    question = drop_placeholder_lines(question, MODALITY_NAMES)
    for name in MODALITY_NAMES:
        question = question.replace(get_modality(name).placeholder, "")
    return "\n".join(line for line in question.splitlines() if line.strip()).strip()
