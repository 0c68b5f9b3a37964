"""The model card of an exported composition: what the Hugging Face Hub reads, and what a person reads.

The front matter follows the Hub's conventions for merges (mergekit's cards and the Hub's
``base_model_relation``): ``base_model`` lists the base and the experts' sources,
``base_model_relation`` is ``merge`` for a full checkpoint and ``adapter`` for the peft
adapter form, ``tags`` name the merge, the studio and the method. The body gives the
coefficients applied, the recipe (the composition config as YAML, which the studio and
``--config`` load), the adapter's kept energy per layer when it was truncated, and the MCUB
accuracy when one was measured for this composition. huggingface_hub's ``ModelCard`` writes
and parses it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import CompositionError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
STUDIO_TAG = "model-composition"


@dataclass
class CardFacts:
    """What the card states about one export."""

    name: str
    variant: str
    kind: str  # the variant's VariantKind value: damc, naive, method, expert
    method: str | None
    form: str  # "full" or "adapter"
    base_name: str
    base_hub_id: str | None
    expert_sources: list[str]
    coefficients: dict
    recipe_yaml: str
    modalities: list[str]
    adapter_rank: int | None = None
    kept_energy: dict[str, float] = field(default_factory=dict)  # module -> share of the merged delta's energy kept
    mcub: dict | None = None  # {"data", "items", "accuracy"} of this variant, when measured


def hub_ids(sources) -> list[str]:
    """The Hub repository ids among ``sources`` (``owner/name``, a ``:subfolder`` or ``/subfolder`` dropped), in order."""
    out = []
    for source in sources:
        if not source:
            continue
        repo = str(source).split(":", 1)[0]
        parts = repo.strip("/").split("/")
        candidate = "/".join(parts[:2]) if len(parts) >= 2 else ""
        if HUB_ID.match(candidate) and candidate not in out:
            out.append(candidate)
    return out


def model_card(facts: CardFacts):
    """A ``huggingface_hub.ModelCard`` for the export (``card.save(folder / "README.md")``)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .plan import describe_coefficients

    if facts.form not in ("full", "adapter"):
        raise CompositionError(f"export form {facts.form!r}; expected 'full' or 'adapter'.")
    bases = hub_ids([facts.base_hub_id, *facts.expert_sources])
    tags = ["merge", STUDIO_TAG, (facts.method or facts.kind).lower().replace("_", "-")]
    if facts.form == "adapter":
        tags.append("lora")
    data = ModelCardData(base_model=bases or None, library_name="peft" if facts.form == "adapter" else "transformers",
                         tags=list(dict.fromkeys(tags)), pipeline_tag="text-generation",
                         base_model_relation="adapter" if facts.form == "adapter" else "merge")
    used = describe_coefficients(facts.coefficients) or "the experts' own deltas"
    lines = [f"# {facts.name}", "",
             f"A composition made with MLLM Composition Studio of the experts for "
             f"{', '.join(facts.modalities)} on **{facts.base_name}**: the **{facts.variant}** variant, exported as "
             + ("a plain transformers checkpoint (its text merge written into the weights)." if facts.form == "full" else
                f"a peft LoRA adapter of rank {facts.adapter_rank} holding its merged text delta."), "",
             "## Coefficients applied", "", f"{used}", "",
             "Text tokens (the question and every generated token) use these weights. A modality's tokens use the "
             "base plus that modality's correction, saved as an expert in `experts/<modality>/` (load the folder "
             "with the studio: `python -m composition compare --experts <folder>/experts --base <folder> ...`).", ""]
    if facts.form == "adapter":
        lines += ["## Use", "", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                  "", f"base = AutoModelForCausalLM.from_pretrained({(facts.base_hub_id or facts.base_name)!r})",
                  "model = PeftModel.from_pretrained(base, '<this repository or folder>')", "```", ""]
        if facts.kept_energy:
            worst = min(facts.kept_energy.values())
            lines += ["## Rank", "", f"The merged delta needs more than rank {facts.adapter_rank} in some layers; it was "
                      f"truncated there by SVD, keeping at least {100 * worst:.2f} % of its energy (sum of squared "
                      "singular values) in every layer:", "", "| layer | energy kept |", "|---|---|"]
            lines += [f"| `{module}` | {100 * kept:.3f} % |" for module, kept in sorted(facts.kept_energy.items())]
            lines.append("")
        else:
            lines += ["## Rank", "", f"Exact: the merged delta's rank is at most {facts.adapter_rank} in every layer.", ""]
    else:
        lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  "model = AutoModelForCausalLM.from_pretrained('<this repository or folder>')", "```", ""]
    if facts.mcub:
        lines += ["## Evaluation", "", f"MCUB accuracy of {facts.variant} on {facts.mcub.get('data', 'MCUB')} "
                  f"({facts.mcub.get('items', '?')} items): **{100 * facts.mcub['accuracy']:.1f} %**.", ""]
    lines += ["## Recipe", "", "The composition config (load it with `python -m composition compare --config FILE` or "
              "the studio's Export tab):", "", "```yaml", facts.recipe_yaml.rstrip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def check_card(path) -> dict:
    """Parse a written card with huggingface_hub and check what the Hub needs; returns its front matter."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    data = card.data.to_dict()
    missing = [k for k in ("library_name", "tags", "base_model_relation") if not data.get(k)]
    if missing:
        raise CompositionError(f"the model card lacks {', '.join(missing)}; export again.")
    for base in data.get("base_model") or []:
        if not HUB_ID.match(base):
            raise CompositionError(f"the model card's base_model {base!r} is not a Hub repository id.")
    return data
