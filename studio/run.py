"""Running a comparison: blocking (the /compare API), streamed (the UI), and compose timing.

Faults are handled here, so every caller (UI, API, tests) behaves the same:

- out of GPU memory: the cache is freed and the request runs again one variant at a time
  (peak memory of one row instead of the whole batch); a second failure is an
  ``OutOfMemory`` user error. Either way the router is reset and the model lock released
  by the engine, so the next request runs normally. (Moving the shared model to the CPU
  is not attempted: it would change every other user's device in the middle of their
  requests; the encoders already run on the CPU.)
- a cancelled stream (the UI's Stop button closes the generator): a stop flag that the
  engine checks after every decoding step ends the generation thread at its next token.
- coefficients moved during a generation: the request owns its settings, so the running
  generation keeps the coefficients it started with; the cards name them.
"""
from __future__ import annotations

import gc
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from composition.composer import VariantAnswer
from composition.config import CompositionConfig
from composition.inputs import ModalInput
from composition.errors import CompositionError
from composition.plan import Plan, describe_coefficients

from .cards import Card, cards_html
from .inputs import load_user_inputs, outside_world_notes
from .session import Studio

OOM_RETRY_NOTE = ("the GPU ran out of memory running all {n} variants in one batch; they ran one at a time instead "
                  "(same answers, slower)")


class OutOfMemory(CompositionError):
    """The accelerator ran out of memory even one variant at a time."""


@dataclass
class Request:
    """A validated request: the shared studio, loaded inputs and the engine's plan for them.

    ``warnings`` collects what the user should know about this request (a removed expert
    folder, an out-of-memory retry); ``used`` names the coefficients it runs with (from the
    plan: the values applied); ``world_notes`` is what each bundled expert does not know.
    """

    studio: Studio
    question: str
    inputs: list[ModalInput]
    plan: Plan
    settings: CompositionConfig
    warnings: list[str] = field(default_factory=list)
    used: str = ""
    world_notes: dict[str, str] = field(default_factory=dict)


def prepare(studio: Studio, settings: CompositionConfig, question: str, files: Mapping[str, list[str]]) -> Request:
    """Every cheap check before generation: question, files (decoded), selection, variants."""
    if not isinstance(question, str) or not question.strip():
        raise CompositionError("the question is empty; type a question for the models to answer.")
    if not studio.cm.experts:
        raise CompositionError("no experts are loaded; add an expert folder in the Experts tab "
                               "(or start the app with --experts DIR).")
    if not settings.experts:
        raise CompositionError("no expert is selected; tick at least one expert in the Experts tab.")
    experts = studio.cm.experts
    inputs = load_user_inputs(files, settings.selection(experts))
    plan = settings.plan(studio.cm, {i.modality for i in inputs})
    return Request(studio, question, inputs, plan, settings, studio.folder_warnings(settings.experts), plan_line(plan),
                   outside_world_notes(experts, plan, inputs))


def plan_line(plan: Plan) -> str:
    """What the compositions of a plan apply, in words: ``DAMC: λ image 0.50, audio 0.50 · μ … | ties: …``."""
    parts = [f"{v.name}: {describe_coefficients(v.coefficients_json())}" for v in plan.variants if v.kind.composes]
    return " | ".join(parts) or "single experts only (no composition coefficients)"


# --- generation with fault handling ------------------------------------------------------
def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or another backend's "out of memory" RuntimeError (MPS, XPU)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def free_accelerator_memory() -> None:
    """Drop unreachable tensors and hand cached blocks back to the driver."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _oom_detail(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:200]


def generate(req: Request, on_step: Callable[[list[str]], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             on_retry: Callable[[str], None] | None = None) -> list[VariantAnswer]:
    """``req.view.compare`` with the out-of-memory fallback (see the module docstring).

    A retry's note goes to ``req.warnings`` (and to ``on_retry``, so a stream can say it).
    """
    config = req.settings.generation()

    def run(batched: bool) -> list[VariantAnswer]:
        return req.studio.cm.compare(req.question, req.inputs, req.plan, config=config, batched=batched,
                                     on_step=on_step, should_stop=should_stop)

    failure = None
    try:
        return run(batched=True)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
        if not is_out_of_memory(exc):
            raise
        failure = _oom_detail(exc)
    # Outside the except block: its traceback (and the tensors its frames hold) is gone now.
    free_accelerator_memory()
    if len(req.plan.variants) > 1:
        note = OOM_RETRY_NOTE.format(n=len(req.plan.variants))
        if on_retry is not None:
            on_retry(note)
        try:
            answers = run(batched=False)
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc):
                raise
            failure = _oom_detail(exc)
        else:
            req.warnings.append(note)
            return answers
        free_accelerator_memory()
    raise OutOfMemory(f"the GPU ran out of memory ({failure}) even running one variant at a time. Nothing was "
                      "changed and the app is ready for the next request: try fewer variants or merge methods, "
                      "fewer max new tokens, or smaller inputs.")


def run_blocking(req: Request) -> list[Card]:
    return answer_cards(req, generate(req))


def answer_cards(req: Request, answers: list[VariantAnswer]) -> list[Card]:
    """A card per answer, with the world note of every bundled expert taking part, then the skipped ones."""
    cards = []
    for answer in answers:
        card = Card.from_answer(answer)
        card.notes += [req.world_notes[n] for n in answer.experts if n in req.world_notes]
        cards.append(card)
    return cards + skipped_cards(req.plan)


def running_cards(req: Request) -> list[Card]:
    return [Card(v.name, status="running", kind=v.kind.value, experts=v.experts, coefficients=v.coefficients_json())
            for v in req.plan.variants] + skipped_cards(req.plan)


def skipped_cards(plan: Plan) -> list[Card]:
    return [Card(name, why, status="skipped", kind=plan.skipped_kinds[name].value) for name, why in plan.skipped.items()]


def api_payload(cards: list[Card], warnings: list[str] | None = None) -> dict:
    """``{"variants": [{name, kind, answer, seconds, new_tokens, experts, coefficients, notes}],
    "skipped": [{name, reason}], "warnings": [str]}``; coefficients are the values applied."""
    done = [c for c in cards if c.status == "done"]
    return {"variants": [{"name": c.name, "kind": c.kind, "answer": c.answer, "seconds": round(c.seconds or 0.0, 4),
                          "new_tokens": c.new_tokens or 0, "experts": c.experts, "coefficients": c.coefficients,
                          "notes": c.notes} for c in done],
            "skipped": [{"name": c.name, "reason": c.answer} for c in cards if c.status == "skipped"],
            "warnings": list(warnings or [])}


def stream(req: Request, min_interval: float = 0.15, stop: threading.Event | None = None) -> Iterator[str]:
    """Yield the cards' HTML as tokens arrive (generation runs in a thread; partial texts come through a queue).

    Closing the generator (the UI's Stop button, a client that went away) sets ``stop``;
    the engine checks it after every token, so the thread ends at its next step and
    releases the model. Setting ``stop`` from outside ends the generation early too; the
    answers so far are then shown as final, with a note that they were cut short.
    """
    stop = stop if stop is not None else threading.Event()
    cards = running_cards(req)
    updates: queue.Queue = queue.Queue()
    result: dict = {}
    notices = list(req.warnings)

    def work() -> None:
        try:
            result["answers"] = generate(req, on_step=updates.put, should_stop=stop.is_set,
                                         on_retry=lambda note: updates.put(("retry", note)))
        except BaseException as exc:  # handed to the generator, which re-raises it in the request
            result["error"] = exc
        finally:
            updates.put(None)

    def page() -> str:
        return cards_html(cards, notices=notices, caption=f"Coefficients: {req.used}" if req.used else "")

    thread = threading.Thread(target=work, name="studio-compare", daemon=True)
    try:
        thread.start()
        yield page()
        last = 0.0
        while True:
            item = updates.get()
            while item is not None and not updates.empty():  # skip to the newest partial texts
                nxt = updates.get_nowait()
                if isinstance(item, tuple) and not isinstance(nxt, tuple):
                    _apply(cards, notices, item)  # a retry notice is never skipped
                item = nxt
            if item is None:
                break
            _apply(cards, notices, item)
            if isinstance(item, tuple) or time.perf_counter() - last >= min_interval:
                last = time.perf_counter()
                yield page()
        thread.join()
        if "error" in result:
            raise result["error"]
        cards = answer_cards(req, result["answers"])
        notices = list(req.warnings)
        if stop.is_set():
            notices.append("stopped before the end: the answers are cut short.")
        yield page()
    finally:
        if thread.is_alive():
            stop.set()  # the consumer went away mid-generation: end the thread at its next token


def _apply(cards: list[Card], notices: list[str], item) -> None:
    if isinstance(item, tuple):  # ("retry", note): the batch failed; the variants restart one at a time
        notices.append(item[1])
        for card in cards:
            if card.status == "running":
                card.answer = ""
        return
    for card, text in zip(cards, item):
        if text or card.status != "running":
            card.answer = text


def compose_timing(studio: Studio, settings: CompositionConfig, present: set[str]) -> str:
    """Online composition = resolving the variants and building the coefficient table; time it."""
    start = time.perf_counter()
    plan = settings.plan(studio.cm, present)
    try:
        table = studio.cm.compose(plan)  # takes the lock only to compute a missing dense merge
    except Exception as exc:  # noqa: BLE001 - a merge method's dense result may not fit on the GPU
        if not is_out_of_memory(exc):
            raise
        detail = _oom_detail(exc)
    else:
        ms = (time.perf_counter() - start) * 1000
        return (f"composed {len(plan.variants)} variant(s) in **{ms:.1f} ms** on **{table.device.type}** "
                f"({table.shape[0]} routes × {table.shape[1]} delta slots)")
    free_accelerator_memory()
    return (f"⚠️ out of GPU memory while composing ({detail}): a merge method's dense result did not fit. "
            "Nothing was changed; choose fewer merge methods, or compare without them.")
