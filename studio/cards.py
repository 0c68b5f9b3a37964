"""Side-by-side answer cards as HTML: one card per variant, readable, never raw tracebacks."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

from composition.plan import describe_coefficients

KIND_COLOURS = {"naive": "#d97706", "damc": "#4f46e5", "expert": "#0f766e", "method": "#be185d", "base": "#64748b"}


@dataclass
class Card:
    """What one card shows; ``status`` is 'waiting', 'running', 'done' or 'skipped'."""

    name: str
    answer: str = ""
    seconds: float | None = None
    new_tokens: int | None = None
    notes: list[str] = field(default_factory=list)
    status: str = "waiting"
    kind: str = "method"  # composition.variants.VariantKind value: the engine's, never parsed from the name
    experts: list[str] = field(default_factory=list)
    coefficients: dict = field(default_factory=dict)  # the values applied: {"lambdas", "mus"[, "hyper"]}

    @classmethod
    def from_answer(cls, answer) -> "Card":
        return cls(answer.name, answer.answer, answer.seconds, answer.new_tokens, list(answer.notes), "done",
                   answer.kind.value, list(answer.experts), dict(answer.coefficients))


def coefficients_line(card: Card) -> str:
    """What the card's variant applied, in words (compositions only; a single expert applies its own deltas)."""
    return "" if card.kind == "expert" or not card.coefficients else describe_coefficients(card.coefficients)


def card_html(card: Card) -> str:
    colour = KIND_COLOURS.get(card.kind, KIND_COLOURS["method"])
    if card.status == "skipped":
        body = f'<div class="mc-skip">not run: {html.escape(card.answer)}</div>'
    elif card.answer:
        body = f'<div class="mc-answer">{html.escape(card.answer)}</div>'
    else:
        body = f'<div class="mc-wait">{"generating…" if card.status == "running" else "(empty answer)" if card.status == "done" else "waiting…"}</div>'
    meta = []
    if card.seconds is not None:
        meta.append(f"{card.seconds:.2f} s (batch)")
    if card.new_tokens is not None:
        meta.append(f"{card.new_tokens} tokens")
    if card.status == "running":
        meta.append("streaming")
    notes = "".join(f'<li>{html.escape(n)}</li>' for n in card.notes)
    coefficients = coefficients_line(card)
    used = f'<div class="mc-coef">{html.escape(coefficients)}</div>' if coefficients else ""
    return (f'<div class="mc-card" style="border-top: 4px solid {colour}">'
            f'<div class="mc-head"><span class="mc-name" style="color:{colour}">{html.escape(card.name)}</span>'
            f'<span class="mc-meta">{" · ".join(meta)}</span></div>{used}{body}'
            f'{f"<ul class=mc-notes>{notes}</ul>" if notes else ""}</div>')


def notice_html(text: str, stopped: bool = False) -> str:
    """A banner above the cards: a warning, or (stopped) that the user cancelled the generation."""
    if stopped:
        return f'<div class="mc-notice mc-stopped">⏹ {html.escape(text)}</div>'
    return f'<div class="mc-notice">⚠️ {html.escape(text)}</div>'


def cards_html(cards: list[Card], notices: list[str] | tuple = (), caption: str = "") -> str:
    """The answer grid, with what the user should know about the request above it (notices) and
    the coefficients it ran with (caption)."""
    if not cards:
        return '<div class="mc-empty">Ask a question (and add inputs) to see every variant\'s answer here, side by side.</div>'
    top = "".join(notice_html(n) for n in notices)
    if caption:
        top += f'<div class="mc-caption">{html.escape(caption)}</div>'
    return top + '<div class="mc-grid">' + "".join(card_html(c) for c in cards) + "</div>"


STOPPED = "Stopped: you cancelled this generation; the answers below are cut where it stopped. Compare again to restart."


def stopped_html(page: str | None) -> str:
    """The cards a cancelled stream left on screen, marked as stopped (running cards say so, a banner says why)."""
    page = page or ""
    if "mc-card" not in page:
        return cards_html([])
    if "mc-stopped" in page or ("streaming</span>" not in page and ">generating…<" not in page):
        return page  # already marked, or nothing was running: finished answers stay as they are
    page = page.replace("streaming</span>", "stopped</span>").replace(">generating…<", ">stopped before its first token<")
    return notice_html(STOPPED, stopped=True) + page


CARD_CSS = """
.mc-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px; }
.mc-card { background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
           border-radius: 10px; padding: 12px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.05); }
.mc-head { display: flex; justify-content: space-between; align-items: baseline; gap: 8px; margin-bottom: 8px; }
.mc-name { font-weight: 700; font-size: 1.05em; }
.mc-meta { color: var(--body-text-color-subdued); font-size: .85em; white-space: nowrap; }
.mc-coef { color: var(--body-text-color-subdued); font-size: .82em; margin: -4px 0 6px 0; }
.mc-answer { white-space: pre-wrap; line-height: 1.5; }
.mc-wait, .mc-empty { color: var(--body-text-color-subdued); font-style: italic; }
.mc-skip { color: #b45309; }
.mc-notice { margin: 0 0 8px 0; padding: 6px 10px; border-radius: 6px; background: #fef3c7; color: #92400e; }
.mc-stopped { background: #e5e7eb; color: #374151; }
.mc-caption { margin: 0 0 8px 0; color: var(--body-text-color-subdued); font-size: .88em; }
.mc-notes { margin: 8px 0 0 0; padding-left: 18px; color: var(--body-text-color-subdued); font-size: .88em; }
.mc-tok { border-radius: 3px; padding: 1px 1px; margin: 0 1px; line-height: 2; }
.mc-legend span { display: inline-block; margin-right: 12px; padding: 2px 8px; border-radius: 4px; }
"""
