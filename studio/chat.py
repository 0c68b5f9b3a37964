"""The Chat tab: a conversation with every composition and expert, one column per variant.

A session holds the user's turns (text and files, any modality, any turn) and each variant's
own replies; the engine answers the last turn for every variant after its own earlier answers
(``ComposedModel.chat``), continuing each variant's KV cache from the turn before. Settings
(experts, λ, μ, methods) are read at every turn: a change applies from the next turn, and
that turn's footer shows it. The session is plain data (kept in the page's state); files are
decoded once per process (``studio.inputs``).
"""
from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from composition.composer import Turn
from composition.config import CompositionConfig
from composition.errors import CompositionError
from composition.plan import describe_coefficients
from modalities import MODALITY_NAMES, modality_for_file
from modalities.base import ModalityError

from .errors import StudioError
from .inputs import file_path, load_user_inputs, point_views
from .session import Studio

MAX_COLUMNS = 10  # pre-built answer columns: NaiveMC, DAMC and one per expert of four modalities, both kinds
# The Stop button's flag per conversation: it ends the generation at its next token, and the turn keeps what was said.
_STOPS: dict[str, threading.Event] = {}
_STOPS_LOCK = threading.Lock()


def stop_flag(session: ChatSession) -> threading.Event:
    """The conversation's Stop flag, cleared for a new answer."""
    with _STOPS_LOCK:
        flag = _STOPS.setdefault(session.id, threading.Event())
        if len(_STOPS) > 10_000:  # flags of long-gone pages: keep the newest
            for key in list(_STOPS)[:5_000]:
                _STOPS.pop(key, None)
    flag.clear()
    return flag


def request_stop(session: ChatSession | None) -> None:
    """What the Stop button does: the running answer ends at its next token and is kept, marked as cut short."""
    if session is not None:
        with _STOPS_LOCK:
            flag = _STOPS.get(session.id)
        if flag is not None:
            flag.set()


@dataclass
class Reply:
    """One variant's answer to one turn, and what made it."""

    text: str
    token_ids: list[int]
    seconds: float = 0.0
    coefficients: dict = field(default_factory=dict)
    kind: str = "expert"
    notes: list[str] = field(default_factory=list)

    def footer(self) -> str:
        parts = [describe_coefficients(self.coefficients) if self.kind not in ("expert", "base") else ""]
        parts.append(f"{self.seconds:.2f} s" if self.seconds else "answered when it joined")
        return " · ".join(p for p in parts if p)


@dataclass
class ChatTurn:
    """One user turn as the user gave it: the text and the files, ``(modality, path)``."""

    text: str
    files: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ChatSession:
    """A conversation: its turns, each variant's replies (one per turn), and the columns' order."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    turns: list[ChatTurn] = field(default_factory=list)
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # variant -> the name its column shows (blind mode: "A", "B")

    def answers(self) -> dict[str, list[list[int]]]:
        """Each variant's token ids per earlier turn (what the engine continues from)."""
        return {name: [r.token_ids for r in replies] for name, replies in self.replies.items()}


@dataclass
class Column:
    """What one pre-built chat column shows: its title and its messages (role, content) in order.

    A content is text (markdown) or a file ``{"path", "modality"}`` the UI renders as a preview.
    """

    visible: bool
    label: str
    messages: list[dict] = field(default_factory=list)


# --- the user's message ----------------------------------------------------------------------
def parse_message(message) -> tuple[str, list[tuple[str, str]]]:
    """``(text, [(modality, path)])`` from a multimodal box's value ``{"text", "files"}`` (or plain text)."""
    if message is None:
        return "", []
    if isinstance(message, str):
        return message.strip(), []
    text = str(message.get("text") or "").strip()
    files = []
    for value in message.get("files") or []:
        path = file_path(value)
        if path:
            files.append((modality_for_file(path), path))
    return text, files


def accepted_modalities(studio: Studio, settings: CompositionConfig) -> list[str]:
    """The modalities the selected experts read (the message box offers these, and refuses the others)."""
    have = {e.modality for e in settings.selection(studio.cm.experts)}
    return [m for m in MODALITY_NAMES if m in have]


def check_files(studio: Studio, settings: CompositionConfig, files: list[tuple[str, str]]) -> None:
    accepted = accepted_modalities(studio, settings)
    for modality, path in files:
        if modality not in accepted:
            readable = ", ".join(accepted) or "nothing (no expert is selected)"
            raise StudioError(f"{Path(path).name} is {('an ' if modality[0] in 'aeiou' else 'a ')}{modality} file, and no "
                              f"selected expert reads {modality}; the selected experts read {readable}. Select a "
                              f"{modality} expert in the Experts tab, or attach another file.")


# --- one turn ----------------------------------------------------------------------------------
def turns_of(session: ChatSession, studio: Studio, settings: CompositionConfig) -> list[Turn]:
    """The engine's turns: every file decoded once per process, in the forms the selected experts read."""
    experts = settings.selection(studio.cm.experts)
    turns = []
    for turn in session.turns:
        files: dict[str, list[str]] = {}
        for modality, path in turn.files:
            files.setdefault(modality, []).append(path)
        turns.append(Turn(turn.text, tuple(load_user_inputs(files, experts))))
    return turns


def reply_stream(studio: Studio, session: ChatSession, settings: CompositionConfig, *, variants: list[str] | None = None,
                 stop: threading.Event | None = None) -> Iterator[list[Column]]:
    """Answer the session's last turn with every variant; yields the columns as tokens arrive.

    The session gets the replies when the answer is complete (a stopped one keeps what was
    said so far). Runs the engine in a thread, like Compare, so Stop ends it at its next token.
    """
    stop = stop if stop is not None else threading.Event()
    turns = turns_of(session, studio, settings)
    present = {item.modality for turn in turns for item in turn.inputs}
    config = settings if variants is None else settings.replace(variants=variants)
    plan = config.plan(studio.cm, present)
    session.order = plan.names
    live: dict[str, str] = {}
    updates: queue.Queue = queue.Queue()
    result: dict = {}

    def work() -> None:
        try:
            result["answers"] = studio.cm.chat(turns, plan, settings.generation(), session.answers(), session=session.id,
                                               on_step=updates.put, should_stop=stop.is_set)
        except BaseException as exc:  # handed to the generator, which re-raises it in the request
            result["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=work, name="studio-chat", daemon=True)
    try:
        thread.start()
        yield columns(session, live)
        while True:
            item = updates.get()
            while item is not None and not updates.empty():
                item = updates.get_nowait()  # only the newest texts matter
            if item is None:
                break
            live = dict(zip(plan.names, item))
            yield columns(session, live)
        thread.join()
        if "error" in result:
            raise result["error"]
        for answer in result["answers"]:
            rv = answer.variant
            replies = session.replies.setdefault(rv.name, [])
            replies += [Reply(studio.cm.decode(ids), list(ids), kind=rv.kind.value, coefficients=rv.coefficients_json())
                        for ids in answer.earlier]
            notes = list(answer.notes) + (["stopped before the end: the answer is cut short."] if stop.is_set() else [])
            replies.append(Reply(answer.text, list(answer.token_ids), answer.seconds, rv.coefficients_json(), rv.kind.value,
                                 notes))
        yield columns(session)
    finally:
        if thread.is_alive():
            stop.set()  # the page went away mid-answer: end the thread at its next token


def send(studio: Studio, session: ChatSession, message, settings: CompositionConfig,
         stop: threading.Event | None = None) -> Iterator[list[Column]]:
    """A new user turn: checked (text, files the selection reads), then answered by every variant."""
    text, files = parse_message(message)
    if not text:
        raise StudioError("the message is empty; type a question (files alone need a question about them).")
    if not settings.experts:
        raise CompositionError("no expert is selected; tick at least one expert in the Experts tab.")
    check_files(studio, settings, files)
    order = list(session.order)
    session.turns.append(ChatTurn(text, files))
    try:
        yield from reply_stream(studio, session, settings, stop=stop if stop is not None else stop_flag(session))
    except BaseException:
        _drop_last_turn(session)  # nothing half-done stays: the message is still in the box
        session.order = order
        raise


def regenerate(studio: Studio, session: ChatSession, settings: CompositionConfig,
               stop: threading.Event | None = None) -> Iterator[list[Column]]:
    """The last turn answered again by every variant (with the settings as they are now)."""
    if not session.turns:
        raise StudioError("there is nothing to regenerate yet; send a message first.")
    for replies in session.replies.values():
        del replies[len(session.turns) - 1:]
    yield from reply_stream(studio, session, settings, stop=stop if stop is not None else stop_flag(session))


def undo(session: ChatSession) -> tuple[list[Column], dict]:
    """Remove the last turn and its replies; returns the columns and that turn's message, back in the box."""
    if not session.turns:
        return columns(session), {"text": "", "files": []}
    last = session.turns[-1]
    _drop_last_turn(session)
    return columns(session), {"text": last.text, "files": [path for _, path in last.files]}


def clear(studio: Studio, session: ChatSession | None) -> ChatSession:
    """A new, empty conversation; the old one's KV caches are freed."""
    if session is not None:
        studio.cm.kv_cache.forget(session.id)
    return ChatSession()


def _drop_last_turn(session: ChatSession) -> None:
    n = len(session.turns) - 1
    session.turns = session.turns[:n]
    for name in list(session.replies):
        del session.replies[name][n:]


# --- what the columns show -----------------------------------------------------------------------
def columns(session: ChatSession, live: Mapping[str, str] | None = None) -> list[Column]:
    """MAX_COLUMNS columns: one per variant of the session (in plan order), the rest hidden.

    ``live``: the answers being generated for the last turn (streaming).
    """
    live = live or {}
    shown = []
    for name in session.order[:MAX_COLUMNS]:
        messages = []
        replies = session.replies.get(name, [])
        for k, turn in enumerate(session.turns):
            messages += user_messages(turn)
            if k < len(replies):
                reply = replies[k]
                footer = reply.footer()
                text = reply.text or "(empty answer)"
                notes = "".join(f"\n\n> {n}" for n in reply.notes)
                messages.append({"role": "assistant", "content": f"{text}{notes}\n\n<sub>{footer}</sub>" if footer else text})
            elif k == len(session.turns) - 1 and name in live:
                messages.append({"role": "assistant", "content": live[name] or "…"})
        shown.append(Column(True, session.labels.get(name, name), messages))
    return shown + [Column(False, "", []) for _ in range(MAX_COLUMNS - len(shown))]


def user_messages(turn: ChatTurn) -> list[dict]:
    """A turn as the user said it: each file as a preview, then the text."""
    out = []
    for modality, path in turn.files:
        shown = path
        if modality == "point":
            try:
                views = point_views(path)
                shown = views.model_path if views else path
            except ModalityError:
                pass
        out.append({"role": "user", "content": {"path": shown, "modality": modality, "name": Path(path).name}})
    out.append({"role": "user", "content": turn.text})
    return out


# --- the stateless API ---------------------------------------------------------------------------
def session_from_messages(studio: Studio, messages: list, allowed: Sequence[Path] | None = None) -> ChatSession:
    """A session from OpenAI-style messages: user turns (text, or parts ``{"type": "text", "text"}`` and
    files ``{"path": ...}``), each followed by the assistant's answer (one text for every variant, or
    ``{variant: text}``) except the last. The session's id follows its first turn, so the calls of one
    conversation continue each other's KV caches. ``allowed``: the folders files may come from (the
    server's uploads); a path elsewhere is refused, never read."""
    import hashlib

    if not isinstance(messages, list) or not messages:
        raise StudioError("messages must be a non-empty list of {role, content}, the last one the user's.")
    session = ChatSession()
    pending: dict | str | None = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role == "user":
            if session.turns and pending is None:
                raise StudioError(f"message {i} is a user turn right after another; put the assistant's answer between them.")
            text, files = _user_content(content, i)
            for _, path in files:
                _check_allowed(path, allowed)
            session.turns.append(ChatTurn(text, files))
            pending = None
        elif role == "assistant":
            if not session.turns or pending is not None:
                raise StudioError(f"message {i} is an assistant answer with no user turn before it.")
            pending = content if isinstance(content, (str, dict)) else ""
            _add_answer(studio, session, pending)
        else:
            raise StudioError(f"message {i} has role {role!r}; expected 'user' or 'assistant'.")
    if pending is not None:
        raise StudioError("the last message must be the user's turn to answer.")
    first = session.turns[0]
    digest = hashlib.sha256(repr((first.text, [Path(p).name for _, p in first.files])).encode()).hexdigest()[:16]
    session.id = f"api-{digest}"
    return session


def _check_allowed(path: str, allowed: Sequence[Path] | None) -> None:
    if allowed is None:
        return
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):
        real = None
    if real is None or not any(real.is_relative_to(Path(root).resolve()) for root in allowed):
        raise StudioError(f"{Path(path).name} is not a file uploaded to this server; send files with "
                          "gradio_client.handle_file(...).")


def _user_content(content, index: int) -> tuple[str, list[tuple[str, str]]]:
    if isinstance(content, str):
        return content.strip(), []
    if not isinstance(content, list):
        raise StudioError(f"message {index}: content must be text or a list of parts ({{type: text, text}}, {{path}}).")
    texts, files = [], []
    for part in content:
        if isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
            texts.append(str(part["text"]))
            continue
        path = file_path(part.get("file", part) if isinstance(part, dict) else part)
        if not path:
            raise StudioError(f"message {index}: a part is neither text nor a file; give {{type: text, text}} or a file.")
        files.append((modality_for_file(path), path))
    return " ".join(t.strip() for t in texts if t.strip()), files


def _add_answer(studio: Studio, session: ChatSession, content) -> None:
    """Earlier answers given as text: each variant's own (a mapping), or one for all of them."""
    turn = len(session.turns) - 1
    for name, text in (content.items() if isinstance(content, dict) else [(None, content)]):
        ids = studio.cm.base.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        key = name if name is not None else "*"
        replies = session.replies.setdefault(key, [])
        if len(replies) != turn:
            raise StudioError(f"the answers of {name or 'every variant'} start at turn {turn + 1}; give a variant's "
                              "answer to every earlier turn, or none (it then answers them itself).")
        replies.append(Reply(str(text), list(ids)))


def chat_api(studio: Studio, messages: list, settings: CompositionConfig, allowed: Sequence[Path] | None = None) -> dict:
    """The /chat contract: ``{"variants": [{name, kind, answer, seconds, new_tokens, coefficients, notes}], "turns"}``.

    Stateless: the caller sends the whole conversation; an answer given for every variant
    (plain text) is each variant's history.
    """
    session = session_from_messages(studio, messages, allowed)
    check_files(studio, settings, [f for turn in session.turns for f in turn.files])
    shared = session.replies.pop("*", None)
    if shared is not None:  # one answer for every variant of the plan
        turns = turns_of(session, studio, settings)
        names = settings.plan(studio.cm, {i.modality for t in turns for i in t.inputs}).names
        for name in names:
            session.replies.setdefault(name, [Reply(r.text, list(r.token_ids)) for r in shared])
    for _ in reply_stream(studio, session, settings):
        pass
    out = []
    for name in session.order:
        reply = session.replies[name][-1]
        out.append({"name": name, "kind": reply.kind, "answer": reply.text, "seconds": round(reply.seconds, 4),
                    "new_tokens": len(reply.token_ids), "coefficients": reply.coefficients, "notes": reply.notes})
    return {"variants": out, "turns": len(session.turns)}
