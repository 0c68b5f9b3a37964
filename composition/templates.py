"""Chat templates: turn one user message into the prompt text a base LLM expects.

A template is chosen by name from a small registry (``list_templates()``):

- ``vicuna_v1``: FastChat's / LLaVA's ``vicuna_v1`` conversation (separators ``" "`` and
  ``"</s>"``), used by Vicuna-based experts such as the paper's release
  (DESIGN.md §3). The prompt is ``SYSTEM + " USER: " + message + " ASSISTANT:"``.
- ``tokenizer``: the tokenizer's own Jinja ``chat_template`` (for SmolLM2 this is ChatML,
  read from the GGUF). Needs the tokenizer: ``get_template("tokenizer", tokenizer=tok)``
  or ``ChatTemplate.from_tokenizer(tok)``.

Every template produces the full prompt up to and including the opening of the assistant
turn, so generation continues with the answer; ``stop_strings`` end that answer.

A conversation is rendered in pieces around the assistant's earlier answers
(``conversation_pieces``): the engine puts each answer's own generated token ids between the
pieces, so a later turn's prompt starts with exactly the tokens of the earlier ones (what
lets a turn reuse the previous turn's KV cache), never with a re-tokenised answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import CompositionError


class TemplateError(CompositionError):
    """A chat template is unknown or cannot be built for this tokenizer."""


# Formatter signature: (user_message, system or None) -> prompt text.
Formatter = Callable[[str, "str | None"], str]
# Conversation formatter: (user messages, oldest first; system or None) -> pieces (see conversation_pieces).
ConversationFormatter = Callable[[list, "str | None"], list]


@dataclass(frozen=True)
class ChatTemplate:
    """A named way to format a single-turn prompt.

    Attributes:
        name: registry name (``vicuna_v1``, ``tokenizer``).
        formatter: ``(user_message, system) -> prompt``; use ``format_prompt``.
        stop_strings: strings that end the assistant's answer.
        description: one line for the UI.
    """

    name: str
    formatter: Formatter
    stop_strings: tuple[str, ...]
    description: str = ""
    # modality -> the label its placeholder line carries in this template's prompts, where it
    # differs from the modality registry's (the paper's prompt writes "point: <point>").
    modality_labels: tuple[tuple[str, str], ...] = ()
    conversation: ConversationFormatter | None = None

    def conversation_pieces(self, user_messages: list[str], system: str | None = None) -> list[str]:
        """A conversation's prompt, split where the assistant's earlier answers go.

        Args:
            user_messages: the user's turns, oldest first (the last one is being answered).
            system: a system message; None keeps the template's default.
        Returns:
            ``len(user_messages)`` pieces: piece 0 is the prompt up to the first answer; piece k
            is what follows answer k (the end of that answer's turn, the next user turn) up to
            where answer k + 1 begins. One message gives ``[format_prompt(message)]``.
        """
        if not user_messages or not all(isinstance(m, str) for m in user_messages):
            raise TemplateError("a conversation needs at least one user message, each a str; pass the turns' texts.")
        messages = [self._relabel(m) for m in user_messages]
        if self.conversation is None:  # a single-turn template: only one message
            if len(messages) > 1:
                raise TemplateError(f"template {self.name!r} renders single questions only; it has no multi-turn format.")
            return [self.formatter(messages[0], system)]
        return self.conversation(messages, system)

    def format_prompt(self, user_message: str, system: str | None = None) -> str:
        """The prompt text up to and including the start of the assistant turn.

        Args:
            user_message: the user's turn (may hold modality placeholder lines).
            system: a system message; None keeps the template's default.
        Returns:
            The text to tokenize and continue with generation.
        """
        if not isinstance(user_message, str):
            raise TemplateError(
                f"user_message must be a str, got {type(user_message).__name__}; "
                "pass the question text."
            )
        return self.formatter(self._relabel(user_message), system)

    def _relabel(self, message: str) -> str:
        """Rewrite whole ``<registry label>: <placeholder>`` lines with this template's labels."""
        if not self.modality_labels:
            return message
        from modalities import get_modality

        swaps = {}
        for name, label in self.modality_labels:
            mod = get_modality(name)
            swaps[f"{mod.label}: {mod.placeholder}"] = f"{label}: {mod.placeholder}"
        return "\n".join(swaps.get(line, line) for line in message.split("\n"))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "ChatTemplate":
        """The tokenizer's own chat template (``tokenizer.chat_template``).

        Note: some templates inject a default system message when none is given
        (SmolLM2's adds "You are a helpful AI assistant named SmolLM, trained by Hugging
        Face"); we keep whatever the template does, since that is what the model was
        tuned on. Pass ``system=...`` to ``format_prompt`` to replace it.
        """
        jinja = getattr(tokenizer, "chat_template", None)
        if not jinja:
            raise TemplateError(
                f"tokenizer {type(tokenizer).__name__} "
                f"({getattr(tokenizer, 'name_or_path', '?')!r}) has no chat_template; "
                f"pick a named template instead, one of {sorted(_NAMED)}."
            )

        def formatter(user_message: str, system: str | None) -> str:
            messages = []
            if system is not None:
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": user_message})
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )

        def conversation(user_messages: list[str], system: str | None) -> list[str]:
            # Each earlier answer is rendered as a sentinel, then the text is cut there: the template's
            # own markup between turns, whatever it is, lands in the pieces.
            sentinels = [f"\x00answer{k}\x00" for k in range(len(user_messages) - 1)]
            messages = [] if system is None else [{"role": "system", "content": system}]
            for k, message in enumerate(user_messages):
                messages.append({"role": "user", "content": message})
                if k < len(sentinels):
                    messages.append({"role": "assistant", "content": sentinels[k]})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            pieces = []
            for sentinel in sentinels:
                head, found, text = text.partition(sentinel)
                if not found:
                    raise TemplateError(f"the tokenizer's chat template changes the assistant's earlier answers "
                                        f"({getattr(tokenizer, 'name_or_path', '?')!r}); it cannot hold a conversation here.")
                pieces.append(head)
            return pieces + [text]

        return cls(
            name="tokenizer",
            formatter=formatter,
            stop_strings=_tokenizer_stop_strings(tokenizer, jinja),
            description="the tokenizer's own chat template",
            conversation=conversation,
        )


# End-of-turn markers of common chat formats. A tokenizer template stops on the ones
# its Jinja text actually emits (the eos token alone is often not the turn end:
# ChatML ends turns with <|im_end|>, Llama 3 with <|eot_id|>).
_KNOWN_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


def _tokenizer_stop_strings(tokenizer: Any, jinja: str) -> tuple[str, ...]:
    stops: list[str] = []
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str) and eos:
        stops.append(eos)
    stops += [marker for marker in _KNOWN_TURN_ENDS if marker in jinja]
    return tuple(dict.fromkeys(stops))  # de-duplicate, keep order


# --- vicuna_v1 ------------------------------------------------------------------------
# FastChat `vicuna_v1.1` / LLaVA `conv_vicuna_v1`: sep_style TWO (ADD_COLON_TWO),
# roles ("USER", "ASSISTANT"), sep " ", sep2 "</s>". With one user turn and an empty
# assistant turn the conversation renders as
#   system + sep + "USER: " + message + sep + "ASSISTANT:"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_SEP = " "
VICUNA_V1_SEP2 = "</s>"


def _format_vicuna_v1(user_message: str, system: str | None) -> str:
    return _vicuna_v1_conversation([user_message], system)[0]


def _vicuna_v1_conversation(user_messages: list[str], system: str | None) -> list[str]:
    """FastChat's SeparatorStyle.TWO: an answered turn is ``"ASSISTANT: " + answer + "</s>"``, so what
    follows an answer is ``"</s>USER: " + message + " ASSISTANT:"`` (the model writes the space before
    its answer itself; ModelCompose ``modelcompose/conversation.py``, LLaVA ``llava/conversation.py``)."""
    system = VICUNA_V1_SYSTEM if system is None else system
    # FastChat would start an empty system with a stray space; we drop the separator.
    head = system + VICUNA_V1_SEP if system else ""
    first = f"{head}USER: {user_messages[0]}{VICUNA_V1_SEP}ASSISTANT:"
    return [first] + [f"{VICUNA_V1_SEP2}USER: {m}{VICUNA_V1_SEP}ASSISTANT:" for m in user_messages[1:]]


VICUNA_V1 = ChatTemplate(
    name="vicuna_v1",
    formatter=_format_vicuna_v1,
    conversation=_vicuna_v1_conversation,
    stop_strings=(VICUNA_V1_SEP2,),
    description="Vicuna v1.1 (FastChat/LLaVA): 'SYSTEM USER: ... ASSISTANT:'",
    # THUNLP-MT/ModelCompose demo_app.py: "image: <image>\n", "audio: <audio>\n", "video: <video>\n", "point: <point>\n".
    modality_labels=(("image", "image"), ("audio", "audio"), ("video", "video"), ("point", "point")),
)

# --- registry -------------------------------------------------------------------------
# The registry is the only list of templates; the UI reads list_templates().
_NAMED: dict[str, ChatTemplate] = {VICUNA_V1.name: VICUNA_V1}
TOKENIZER_TEMPLATE = "tokenizer"


def list_templates() -> list[str]:
    """Names accepted by ``get_template``."""
    return sorted([*_NAMED, TOKENIZER_TEMPLATE])


def get_template(name: str, tokenizer: Any = None) -> ChatTemplate:
    """The template called ``name``.

    Args:
        name: one of ``list_templates()``.
        tokenizer: needed for ``"tokenizer"`` (its own chat template).
    Raises:
        TemplateError: unknown name, or ``"tokenizer"`` without a usable tokenizer.
    """
    if name == TOKENIZER_TEMPLATE:
        if tokenizer is None:
            raise TemplateError(
                "template 'tokenizer' uses the tokenizer's own chat template; pass "
                "tokenizer=... (or call ChatTemplate.from_tokenizer(tokenizer))."
            )
        return ChatTemplate.from_tokenizer(tokenizer)
    if name not in _NAMED:
        raise TemplateError(
            f"unknown chat template {name!r}; expected one of {list_templates()}."
        )
    return _NAMED[name]
