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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import CompositionError


class TemplateError(CompositionError):
    """A chat template is unknown or cannot be built for this tokenizer."""


# Formatter signature: (user_message, system or None) -> prompt text.
Formatter = Callable[[str, "str | None"], str]


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

        return cls(
            name="tokenizer",
            formatter=formatter,
            stop_strings=_tokenizer_stop_strings(tokenizer, jinja),
            description="the tokenizer's own chat template",
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
    system = VICUNA_V1_SYSTEM if system is None else system
    # FastChat would start an empty system with a stray space; we drop the separator.
    head = system + VICUNA_V1_SEP if system else ""
    return f"{head}USER: {user_message}{VICUNA_V1_SEP}ASSISTANT:"


VICUNA_V1 = ChatTemplate(
    name="vicuna_v1",
    formatter=_format_vicuna_v1,
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
