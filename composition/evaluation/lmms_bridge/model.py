"""``mcstudio``: a composition (or a single expert) as an lmms-eval 0.7 model.

    python -m composition lmms-eval --model_args experts=assets/experts,variant=DAMC --tasks mcub_synth
    python -m lmms_eval --model mcstudio --include_path <the task folder> ...   # the lmms_eval.models entry point

``generate_until`` groups the requests by the modalities of their inputs and their decoding settings,
sorts each group by prompt length and answers ``batch_size`` of them per call of the engine's batch
entry (``ComposedModel.generate_rows``), stopping a batch once every answer holds one of the task's
``until`` strings (the batch entry's streaming stop). ``loglikelihood`` scores a continuation token by
token through the same batch entry: each step asks for the next token's logits after the continuation
so far (``RowRequest.answer_prefix``), all requests of the step in one batch.

Inputs (``doc_to_visual``): the MCUB tasks give ``{"modality", "path"}`` records; a plain path takes
its modality from the file's extension; a PIL image, or an audio record (``{"array", "sampling_rate"}``,
as Hugging Face data sets hold audio), is written to a temporary file first.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Sequence

from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from ...errors import CompositionError
from .args import BridgeArgs

DEFAULT_MAX_NEW_TOKENS = 64


def load_composition(args: BridgeArgs):
    """(ComposedModel view composing the config's experts, CompositionConfig) for ``args``: the shipped
    ``composition.json`` of the expert folders, then the model args, as ``python -m composition mcub``."""
    import torch

    from ...base_llm import load_base_llm
    from ...composer import ComposedModel
    from ...config import shipped_config
    from ...discovery import scan_experts

    paths = [str(p) for p in args.experts] or None
    entries = scan_experts(paths)
    config = composition_for(shipped_config(paths), args, {e.config.name: e for e in entries})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CompositionError("device=cuda was asked for but no CUDA GPU is available; use device=cpu.")
    cm = ComposedModel(load_base_llm(args.base, device=device))
    for entry in entries:
        cm.load_expert(entry.folder)
    return (cm if config.experts is None else cm.subset(config.experts)), config


def composition_for(shipped, args: BridgeArgs, loaded):
    """The composition config of ``args`` over the experts' shipped one (checked against the loaded experts)."""
    config = shipped.replace(lambdas={**shipped.lambdas, **args.lambdas}, mus={**shipped.mus, **args.mus},
                             variants=[args.variant], lambda_scale=args.lambda_scale,
                             merge_all_experts=shipped.merge_all_experts or args.merge_all_experts)
    config.check_against(loaded)
    return config


@register_model("mcstudio")
class McStudio(lmms):
    """One variant of a composition, answering lmms-eval's requests through the engine's batch entry.

    Args (``--model_args``, see ``args.py``): experts, variant, lambdas, lambda_scale, mus,
    merge_all_experts, base, device, batch_size, prompt. ``composed_model`` (Python only): a loaded
    ``ComposedModel`` to use instead of loading one (tests, notebooks).
    """

    is_simple = True

    def __init__(self, composed_model=None, **model_args) -> None:
        super().__init__()
        self.args = BridgeArgs.from_model_args(**model_args)
        if composed_model is None:
            self.cm, self.composition = load_composition(self.args)
        else:
            from ...config import CompositionConfig

            self.composition = composition_for(CompositionConfig(), self.args, composed_model.experts)
            self.cm = composed_model
        self.merge_all = self.composition.merge_all_experts or self.args.prompt == "paper"
        self._tmp = tempfile.TemporaryDirectory(prefix="mcstudio-")
        self._written = 0
        self.batch_size_per_gpu = self.args.batch_size

    # --- inputs -------------------------------------------------------------
    def _visual_file(self, visual) -> tuple[str, Path]:
        """(modality, file) of one ``doc_to_visual`` element."""
        from modalities import modality_for_file

        if isinstance(visual, dict) and "modality" in visual and "path" in visual:
            return str(visual["modality"]), Path(visual["path"])
        if isinstance(visual, (str, Path)):
            try:
                return modality_for_file(visual), Path(visual)
            except ValueError as exc:
                raise CompositionError(f"mcstudio cannot tell the modality of {Path(visual).name}: {exc}") from None
        if isinstance(visual, dict) and "array" in visual and "sampling_rate" in visual:
            import numpy as np
            import soundfile

            path = self._temporary(".wav")
            soundfile.write(path, np.asarray(visual["array"], dtype=np.float32), int(visual["sampling_rate"]))
            return "audio", path
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a dependency
            Image = None
        if Image is not None and isinstance(visual, Image.Image):
            path = self._temporary(".png")
            visual.convert("RGB").save(path)
            return "image", path
        raise CompositionError(f"mcstudio got a visual of type {type(visual).__name__}; expected a file path, a "
                               "{'modality', 'path'} record, a PIL image or an audio record.")

    def _temporary(self, suffix: str) -> Path:
        self._written += 1
        return Path(self._tmp.name) / f"input-{self._written:06d}{suffix}"

    def _inputs(self, request, cache: dict) -> tuple:
        """The request's inputs, each file decoded once per call (several requests may share a file)."""
        from ...inputs import ModalInput, decoder_needs

        doc_to_visual, doc_id, task, split = request.args[2], request.args[-3], request.args[-2], request.args[-1]
        if doc_to_visual is None:
            return ()
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [] if visuals is None else visuals if isinstance(visuals, (list, tuple)) else [visuals]
        needs = decoder_needs(self.cm.experts.values())
        out = []
        for visual in visuals:
            modality, path = self._visual_file(visual)
            key = (modality, str(path))
            if key not in cache:
                try:
                    cache[key] = ModalInput.open(modality, path, needs.get(modality) or [{}])
                except ValueError as exc:
                    raise CompositionError(f"{task} doc {doc_id}: {exc}") from None
            out.append(cache[key])
        return tuple(out)

    def _request(self, context: str, inputs: tuple, answer_prefix: str = ""):
        from ...composer import RowRequest
        from ..prompt import paper_message, placeholder_counts

        if self.args.prompt == "paper" or (self.args.prompt == "auto" and placeholder_counts(context)):
            return RowRequest(context, inputs, message_fn=paper_message, answer_prefix=answer_prefix)
        return RowRequest(context, inputs, answer_prefix=answer_prefix)

    def _plan(self, present: set[str]):
        return self.cm.plan(present, self.composition.variant_specs(), self.composition.coefficients(),
                            merge_all_experts=self.merge_all)

    # --- generation -----------------------------------------------------------
    @staticmethod
    def _generation(gen_kwargs: dict):
        from ...generate import GenerationConfig

        gen_kwargs = dict(gen_kwargs or {})
        sample = bool(gen_kwargs.get("do_sample", False))
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0) if sample else 0.0
        top_p = gen_kwargs.get("top_p")
        return GenerationConfig(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                                temperature=temperature, top_p=1.0 if top_p in (None, 0) else float(top_p))

    @staticmethod
    def _until(gen_kwargs: dict) -> tuple[str, ...]:
        until = (gen_kwargs or {}).get("until")
        if until is None:
            return ()
        return (until,) if isinstance(until, str) else tuple(u for u in until if u)

    @staticmethod
    def cut(text: str, until: Sequence[str]) -> str:
        """``text`` up to the first of the ``until`` strings (lmms-eval's stop sequences)."""
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        out: list[str | None] = [None] * len(requests)
        cache: dict = {}
        groups: dict[tuple, list[tuple[int, str, tuple]]] = {}
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args[0], request.args[1]
            inputs = self._inputs(request, cache)
            key = (tuple(sorted({x.modality for x in inputs})), self._generation(gen_kwargs), self._until(gen_kwargs))
            groups.setdefault(key, []).append((i, context, inputs))
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="mcstudio")
        for (modalities, generation, until), members in groups.items():
            plan = self._plan(set(modalities))
            members.sort(key=lambda m: (len(m[1]), m[0]))  # length-sorted: the rows of a batch pad little
            for s in range(0, len(members), self.args.batch_size):
                chunk = members[s:s + self.args.batch_size]
                texts: list[list[str]] = []

                def on_step(step, texts=texts):
                    texts[:] = step

                def should_stop(texts=texts, until=until) -> bool:
                    return bool(until) and bool(texts) and all(any(u in t for u in until) for row in texts for t in row)

                answers = self.cm.generate_rows([self._request(context, inputs) for _, context, inputs in chunk], plan,
                                                generation, on_step=on_step, should_stop=should_stop)
                for (i, context, _), row in zip(chunk, answers):
                    out[i] = self.cut(row[0].text, until)
                    self.cache_hook.add_partial("generate_until", (context, requests[i].args[1]), out[i])
                bar.update(len(chunk))
        bar.close()
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise CompositionError("mcstudio answers single-turn tasks (generate_until, loglikelihood, multiple_choice); "
                               "multi-round tasks are not supported: use the studio's chat (python -m composition chat).")

    # --- scoring ----------------------------------------------------------------
    def loglikelihood(self, requests) -> list:
        """log P(continuation | context, inputs) and whether greedy decoding would produce it, per request.

        Each pair comes wrapped as ``GenerationResult(text=(logprob, is_greedy))``: lmms-eval 0.7.x's evaluator
        passes every model output through ``unwrap_generation_output``, which turns anything but a string or a
        ``GenerationResult`` into its string (``"(-1.2, False)"``) and so breaks multiple-choice scoring; from a
        ``GenerationResult`` it takes ``text`` as it is, the pair its scorer expects.
        """
        import torch

        from ...generate import GenerationConfig

        tokenizer = self.cm.base.tokenizer
        cache: dict = {}
        prepared = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            inputs = self._inputs(request, cache)
            ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            prepared.append((context, inputs, list(ids)))
        logprob = [0.0] * len(requests)
        greedy = [True] * len(requests)
        one = GenerationConfig(max_new_tokens=1)
        groups: dict[tuple, list[int]] = {}
        for i, (_, inputs, _) in enumerate(prepared):
            groups.setdefault(tuple(sorted({x.modality for x in inputs})), []).append(i)
        for modalities, members in groups.items():
            plan = self._plan(set(modalities))
            longest = max(len(prepared[i][2]) for i in members)
            for k in range(longest):
                step = [i for i in members if len(prepared[i][2]) > k]
                for s in range(0, len(step), self.args.batch_size):
                    chunk = step[s:s + self.args.batch_size]
                    batch = [self._request(prepared[i][0], prepared[i][1], tokenizer.decode(prepared[i][2][:k]))
                             for i in chunk]
                    rows = self.cm.generate_rows(batch, plan, one, keep_logits=True)
                    for i, row in zip(chunk, rows):
                        logits = row[0].first_logits
                        target = prepared[i][2][k]
                        logprob[i] += float(torch.log_softmax(logits, dim=-1)[target])
                        greedy[i] = greedy[i] and int(logits.argmax()) == target
        from lmms_eval.api.instance import GenerationResult

        results = []
        for i, request in enumerate(requests):
            value = logprob[i] if prepared[i][2] else 0.0
            pair = (value if math.isfinite(value) else -math.inf, greedy[i])
            self.cache_hook.add_partial("loglikelihood", request.args[:2], pair)
            results.append(GenerationResult(text=pair))
        return results
