"""Running a comparison: blocking (the /compare API), streamed (the UI), and compose timing."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Mapping

from composition.composer import ComposedModel, ModalInput
from composition.errors import CompositionError

from .cards import Card, cards_html
from .inputs import load_user_inputs
from .session import Studio
from .settings import StudioSettings
from .variants import VariantPlan, model_view, plan_variants


@dataclass
class Request:
    """A validated request: the per-request model view, loaded inputs and the variant plan."""

    view: ComposedModel
    question: str
    inputs: list[ModalInput]
    plan: VariantPlan
    settings: StudioSettings


def prepare(studio: Studio, settings: StudioSettings, question: str, files: Mapping[str, list[str]], *,
            experts_without_input: bool = False) -> Request:
    """Every cheap check before generation: question, files (decoded), selection, variants."""
    if not isinstance(question, str) or not question.strip():
        raise CompositionError("the question is empty; type a question for the models to answer.")
    if not studio.cm.experts:
        raise CompositionError("no experts are loaded; add an expert folder in the Experts tab "
                               "(or start the app with --experts DIR).")
    if not settings.selected:
        raise CompositionError("no expert is selected; tick at least one expert in the Experts tab.")
    inputs = load_user_inputs(files)
    view = model_view(studio.cm, settings.selected)
    plan = plan_variants(view, settings, {i.modality for i in inputs}, experts_without_input=experts_without_input)
    return Request(view, question, inputs, plan, settings)


def run_blocking(req: Request) -> list[Card]:
    answers = req.view.compare(req.question, req.inputs, req.plan.specs, req.settings.coefficients(req.view.experts),
                               req.settings.generation())
    return [Card.from_answer(a) for a in answers] + skipped_cards(req.plan)


def skipped_cards(plan: VariantPlan) -> list[Card]:
    return [Card(name, why, status="skipped") for name, why in plan.skipped.items()]


def api_payload(cards: list[Card]) -> dict:
    """``{"variants": [{name, answer, seconds, new_tokens, notes}], "skipped": [{name, reason}]}``."""
    done = [c for c in cards if c.status == "done"]
    return {"variants": [{"name": c.name, "answer": c.answer, "seconds": round(c.seconds or 0.0, 4),
                          "new_tokens": c.new_tokens or 0, "notes": c.notes} for c in done],
            "skipped": [{"name": c.name, "reason": c.answer} for c in cards if c.status == "skipped"]}


def stream(req: Request, min_interval: float = 0.15) -> Iterator[str]:
    """Yield the cards' HTML as tokens arrive (generation runs in a thread; partial texts come through a queue)."""
    names = req.plan.names
    cards = [Card(n, status="running") for n in names] + skipped_cards(req.plan)
    updates: queue.Queue = queue.Queue()
    result: dict = {}

    def work() -> None:
        try:
            result["answers"] = req.view.compare(req.question, req.inputs, req.plan.specs,
                                                 req.settings.coefficients(req.view.experts), req.settings.generation(),
                                                 on_step=updates.put)
        except BaseException as exc:  # handed to the generator, which re-raises it in the request
            result["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=work, name="studio-compare", daemon=True)
    thread.start()
    yield cards_html(cards)
    last = 0.0
    while True:
        item = updates.get()
        if item is None:
            break
        while not updates.empty():  # skip to the newest partial texts
            nxt = updates.get_nowait()
            if nxt is None:
                item = None
                break
            item = nxt
        if item is None:
            break
        if time.perf_counter() - last >= min_interval:
            for card, text in zip(cards, item):
                card.answer = text
            last = time.perf_counter()
            yield cards_html(cards)
    thread.join()
    if "error" in result:
        raise result["error"]
    yield cards_html([Card.from_answer(a) for a in result["answers"]] + skipped_cards(req.plan))


def compose_timing(studio: Studio, settings: StudioSettings, present: set[str]) -> str:
    """Online composition = resolving the variants and building the coefficient table; time it."""
    view = model_view(studio.cm, settings.selected)
    plan = plan_variants(view, settings, present)
    start = time.perf_counter()
    resolved = view.resolve(plan.specs, settings.coefficients(view.experts), present)
    table = view.coef_table(resolved)
    ms = (time.perf_counter() - start) * 1000
    return (f"composed {len(resolved)} variant(s) in **{ms:.1f} ms** on **{table.device.type}** "
            f"({table.shape[0]} routes × {table.shape[1]} delta slots)")
