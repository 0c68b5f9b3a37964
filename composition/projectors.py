"""Projectors that are more than a Linear or an MLP: the paper's audio Q-Former.

The ModelCompose audio expert (THUNLP-MT/ModelCompose
``modelcompose/model/multimodal_projector/builder.py``, ``VideoLlamaAudioQformer``, projector
type ``qformer_32N_2L``) turns BEATs' 512 × 768 features into 32 LLM tokens:

    x + position_embedding(0..T-1)          (nn.Embedding(1024, width_in))
    Q-Former(query_tokens, cross-attend x)  (BERT-base layers: self-attention over the queries,
                                             cross-attention every layer, the query feed-forward;
                                             word/position embeddings and the text FFN removed)
    audio_llama_proj                        (Linear(768, LLM hidden))

The Q-Former itself is transformers' ``Blip2QFormerModel`` (the same BERT layer with
``intermediate_query`` / ``output_query``, cross-attention every ``cross_attention_frequency``
layers); the original's keys are mapped onto it (``modelcompose_keys``), not re-implemented.
"""
from __future__ import annotations

import re

import torch
from torch import nn

BERT_HEADS = 12  # the original builds BertConfig() with its defaults: 12 heads, eps 1e-12 (bert-base-uncased)
BERT_EPS = 1e-12


class AudioQFormer(nn.Module):
    """(T, width_in) encoder features -> (queries, out_dim) LLM embeddings."""

    def __init__(self, in_dim: int, out_dim: int, *, queries: int, layers: int, width: int, intermediate: int,
                 positions: int) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        config = Blip2QFormerConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=BERT_HEADS,
                                    intermediate_size=intermediate, cross_attention_frequency=1, encoder_hidden_size=in_dim,
                                    layer_norm_eps=BERT_EPS, use_qformer_text_input=False)
        config._attn_implementation = "eager"  # fp32 and exact on every device; the Q-Former is small
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, queries, width))
        self.position_embedding = nn.Embedding(positions, in_dim)
        self.llama_proj = nn.Linear(width, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batched = features.ndim == 3
        x = features if batched else features.unsqueeze(0)
        if x.shape[1] > self.position_embedding.num_embeddings:
            raise ValueError(f"the audio Q-Former takes at most {self.position_embedding.num_embeddings} feature tokens, "
                             f"got {x.shape[1]}")
        x = x + self.position_embedding(torch.arange(x.shape[1], device=x.device)).unsqueeze(0)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        hidden = self.qformer(query_embeds=queries, encoder_hidden_states=x, encoder_attention_mask=mask).last_hidden_state
        out = self.llama_proj(hidden)
        return out if batched else out[0]


# --- the original's key layout -> ours ------------------------------------------------------------
_RENAMES = (
    (re.compile(r"^audio_Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$"), r"qformer.layernorm.\1"),
    (re.compile(r"^audio_Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)$"),
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (re.compile(r"^audio_Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)$"),
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (re.compile(r"^audio_Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)$"),
     r"qformer.encoder.layer.\1.\2.\3.\4"),
    (re.compile(r"^audio_query_tokens$"), "query_tokens"),
    (re.compile(r"^audio_position_embedding\.weight$"), "position_embedding.weight"),
    (re.compile(r"^audio_llama_proj\.(weight|bias)$"), r"llama_proj.\1"),
)
# Buffers the original's BertEmbeddings keeps although its position embeddings are gone: not weights.
_IGNORED = re.compile(r"^audio_Qformer\.bert\.embeddings\.position_ids$")


def modelcompose_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(mapped state, unrecognised keys)`` for the keys under ``model.modal_projectors.audio.``."""
    mapped, unknown = {}, []
    for key, value in state.items():
        if _IGNORED.match(key):
            continue
        for pattern, target in _RENAMES:
            if pattern.match(key):
                mapped[pattern.sub(target, key)] = value
                break
        else:
            unknown.append(key)
    return mapped, unknown


def qformer_dims(mapped: dict[str, torch.Tensor]) -> dict[str, int]:
    """Queries, layers, width, intermediate and positions, read off the mapped weights' shapes."""
    tokens = mapped.get("query_tokens")
    positions = mapped.get("position_embedding.weight")
    inter = mapped.get("qformer.encoder.layer.0.intermediate_query.dense.weight")
    norm = mapped.get("qformer.layernorm.weight")
    if tokens is None or positions is None or inter is None or norm is None or tokens.ndim != 3 or positions.ndim != 2:
        raise KeyError("query_tokens, position_embedding.weight, the embeddings' LayerNorm and layer 0's intermediate_query")
    layers = 1 + max(int(k.split(".")[3]) for k in mapped if k.startswith("qformer.encoder.layer."))
    # The width comes from the LayerNorm: every other tensor (the query tokens too) is checked against it.
    return {"queries": int(tokens.shape[1]), "layers": layers, "width": int(norm.shape[0]),
            "intermediate": int(inter.shape[0]), "positions": int(positions.shape[0])}
