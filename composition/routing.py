"""Routed low-rank linear layers: one forward pass serves many variants and token routes.

Every delta of every expert (and every dense delta a non-linear merge method produced) is
a *slot* with a global index. A forward pass carries a coefficient per (batch row, token,
slot): ``y = x W^T + Σ_slot c[b, t, slot] · ΔW_slot x``. The coefficients come from a
small table (one row per route: a variant's text tokens, or its tokens of one modality)
gathered by per-token route ids, so changing a λ or μ changes one table entry and costs
nothing, and the rows of one batch can be different compositions.

Low-rank slots stay factored: ``h = x A_cat^T`` over all slots at once, scale ``h`` per
(token, rank column) by the slot's coefficient, then ``h B_cat^T``. This computes
``Σ c·s·B·A x`` exactly (the mean of the *deltas*, not of the factors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# Elements of the per-module rank coefficients a pass gathers at once (64 MiB in fp32); beyond it each
# layer gathers its own columns. Decode steps and short prompts stay below it, where one gather per
# pass is what keeps a schedule as fast as a number (a gather per layer decoded 1.44x slower on a CPU).
PER_MODULE_GATHER = 16 << 20


class Router:
    """Per-forward routing state shared by every RoutedLinear of one model.

    ``token_coef`` is ``(batch, tokens, slots)``, or ``(batch, tokens, modules, slots)`` when some
    coefficient varies by module; None means "base model only". Expanded views per rank
    layout (and module, with a module axis) are cached for the duration of one forward pass.
    ``idle`` is True when every coefficient of the pass is zero (e.g. the text route of the
    materialized variant): the layers then skip their low-rank matmuls altogether.
    """

    def __init__(self) -> None:
        self.token_coef: torch.Tensor | None = None
        self.idle = False
        self._expanded: dict[tuple, torch.Tensor] = {}

    def set(self, token_coef: torch.Tensor | None) -> None:
        self.token_coef = token_coef
        self.idle = token_coef is not None and not token_coef.requires_grad and not bool(token_coef.any())
        self._expanded = {}

    @property
    def per_module(self) -> bool:
        return self.token_coef is not None and self.token_coef.dim() == 4

    def slot_coef(self, position: int) -> torch.Tensor:
        """The ``(batch, tokens, slots)`` coefficients the layer at ``position`` applies."""
        return self.token_coef[..., position, :] if self.per_module else self.token_coef

    def rank_coef(self, layout_key: tuple, rank_slot: torch.Tensor, position: int) -> torch.Tensor:
        """Coefficients per rank column, ``(batch, tokens, R)``; shared by layers with one layout
        (and one module position, when the coefficients vary by module)."""
        if self.per_module and self.token_coef[..., 0, 0].numel() * self.token_coef.shape[-2] * rank_slot.numel() > PER_MODULE_GATHER:
            # A long pass under a schedule: every module's columns at once would be (batch, tokens, modules, R),
            # gigabytes for a 7B prefill; each layer gathers its own instead.
            return self.token_coef[..., position, :].index_select(-1, rank_slot.to(self.token_coef.device))
        cached = self._expanded.get(layout_key)
        if cached is None:  # one gather for every module of this layout; each layer then takes a view
            cached = self.token_coef.index_select(-1, rank_slot.to(self.token_coef.device))
            self._expanded[layout_key] = cached
        return cached[..., position, :] if self.per_module else cached


@dataclass
class SlotFactors:
    """One low-rank slot of one layer: ``ΔW = B_scaled @ A``."""

    A: torch.Tensor  # (r, in)
    B_scaled: torch.Tensor  # (out, r), the LoRA scale folded in


class RoutedLinear(nn.Module):
    """A frozen ``nn.Linear`` plus routed deltas (see the module docstring)."""

    def __init__(self, base: nn.Linear, router: Router) -> None:
        super().__init__()
        self.base = base
        self.router = router
        self.position = 0  # this layer's index on the coefficient table's module axis (ModuleLayout order)
        self.lowrank: dict[int, SlotFactors] = {}
        self.dense: dict[int, torch.Tensor] = {}
        self._A_cat: torch.Tensor | None = None
        self._B_cat: torch.Tensor | None = None
        self._rank_slot: torch.Tensor | None = None
        self._rank_slot_cpu: torch.Tensor | None = None
        self._layout_key: tuple = ()
        self._original_weight: torch.Tensor | None = None
        # Training: slots whose factors are live Parameters (gradients flow), see train_slot.
        self.trainable: dict[int, tuple[nn.Parameter, nn.Parameter, float]] = {}

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    # --- slot management -------------------------------------------------
    def set_lowrank(self, slot: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        w = self.base.weight
        self.lowrank[slot] = SlotFactors(A.to(w.device, w.dtype), (B.to(torch.float32) * scale).to(w.device, w.dtype))
        self._rebuild()

    def set_dense(self, slot: int, delta: torch.Tensor) -> None:
        w = self.base.weight
        if tuple(delta.shape) != tuple(w.shape):
            raise ValueError(f"dense delta of shape {tuple(delta.shape)} does not fit layer weight {tuple(w.shape)}")
        self.dense[slot] = delta.to(w.device, w.dtype)

    def train_slot(self, slot: int, A: nn.Parameter, B: nn.Parameter, scale: float) -> None:
        """Route a slot through live LoRA factors so training and inference share one code path."""
        self.trainable[slot] = (A, B, scale)

    def remove_slot(self, slot: int) -> None:
        self.trainable.pop(slot, None)
        self.dense.pop(slot, None)
        if self.lowrank.pop(slot, None) is not None:
            self._rebuild()

    def slot_delta(self, slot: int) -> torch.Tensor | None:
        """The full ``(out, in)`` delta of a slot in fp32, or None when this layer has none."""
        if slot in self.dense:
            return self.dense[slot].float()
        if slot in self.lowrank:
            f = self.lowrank[slot]
            return f.B_scaled.float() @ f.A.float()
        return None

    def _rebuild(self) -> None:
        """Concatenate all low-rank slots so one matmul pair serves them all."""
        slots = sorted(self.lowrank)
        if not slots:
            self._A_cat = self._B_cat = self._rank_slot = self._rank_slot_cpu = None
            self._layout_key = ()
            return
        self._A_cat = torch.cat([self.lowrank[s].A for s in slots], dim=0)
        self._B_cat = torch.cat([self.lowrank[s].B_scaled for s in slots], dim=1)
        ranks = [self.lowrank[s].A.shape[0] for s in slots]
        self._rank_slot_cpu = torch.repeat_interleave(torch.tensor(slots), torch.tensor(ranks))
        self._rank_slot = self._rank_slot_cpu.to(self._A_cat.device)
        self._layout_key = tuple(zip(slots, ranks))

    # --- materialization --------------------------------------------------
    def materialize(self, coef: torch.Tensor, shared: dict | None = None) -> None:
        """Write ``W + Σ coef[slot]·ΔW_slot`` into the weight, keeping the original to restore.

        The low-rank slots with a non-zero coefficient are one matmul: ``W + (B_cat·c) @ A_cat``
        over their rank columns, written straight into the weight (``addmm``, one rounding
        to the weight's dtype). ``coef`` is a CPU tensor over global slots, or ``(modules, slots)``
        when the coefficients vary by module (this layer takes row ``position``); ``shared`` is a
        dict the caller passes to every layer of one materialization, so layers with the same
        slot layout reuse one device copy of the column indices and coefficients.
        """
        if coef.dim() == 2:
            coef, shared = coef[self.position], None  # a row of its own: nothing to share with other layers
        plan = self._lowrank_plan(coef, shared)
        dense = [(delta, float(coef[slot])) for slot, delta in self.dense.items() if slot < coef.numel() and float(coef[slot]) != 0.0]
        if plan is None and not dense:
            self.dematerialize()  # nothing to merge here: the original weight (restored if a merge was written)
            return
        if self._original_weight is None:
            self._original_weight = self.base.weight.detach().clone()
        weight, original = self.base.weight, self._original_weight
        with torch.no_grad():
            if plan is None:
                weight.copy_(original)
            else:
                cols, scale = plan
                a = self._A_cat if cols is None else self._A_cat.index_select(0, cols)
                b = (self._B_cat if cols is None else self._B_cat.index_select(1, cols)) * scale
                if weight.device.type == "cpu" and weight.dtype != torch.float32:
                    weight.copy_(torch.addmm(original.float(), b.float(), a.float()))  # CPU half types: merge in fp32
                else:
                    torch.addmm(original, b, a, out=weight)
            for delta, c in dense:
                weight.add_(delta, alpha=c)

    def _lowrank_plan(self, coef: torch.Tensor, shared: dict | None) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """``(rank columns to use or None for all, coefficient per used column)`` on the weight's device; None: no slot used."""
        if self._A_cat is None:
            return None
        w = self.base.weight
        key = (self._layout_key, w.device, w.dtype)
        if shared is not None and key in shared:
            return shared[key]
        coef = coef.detach().to("cpu", torch.float32)
        padded = torch.zeros(max(int(self._rank_slot_cpu.max()) + 1, coef.numel()))
        padded[: coef.numel()] = coef
        per_column = padded[self._rank_slot_cpu]
        used = per_column != 0
        if not bool(used.any()):
            plan = None
        elif bool(used.all()):
            plan = (None, per_column.to(w.device, w.dtype))
        else:
            cols = used.nonzero().flatten()
            plan = (cols.to(w.device), per_column[cols].to(w.device, w.dtype))
        if shared is not None:
            shared[key] = plan
        return plan

    def dematerialize(self) -> None:
        if self._original_weight is not None:
            with torch.no_grad():
                self.base.weight.copy_(self._original_weight)
            self._original_weight = None

    # --- forward ----------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        coef = self.router.token_coef
        if coef is None:
            return y
        if self._A_cat is not None and not self.router.idle:
            c = self.router.rank_coef(self._layout_key, self._rank_slot, self.position).to(x.dtype)
            h = F.linear(x, self._A_cat) * c
            y = y + F.linear(h, self._B_cat)
        coef = self.router.slot_coef(self.position)
        for slot, delta in ({} if self.router.idle else self.dense).items():
            c = coef[..., slot]
            rows = torch.nonzero(c.abs().sum(-1)).flatten()
            if rows.numel():
                # Dense deltas are a full matmul: only the rows that use the slot pay for it.
                y = y.index_add(0, rows, c[rows].unsqueeze(-1).to(x.dtype) * F.linear(x[rows], delta))
        for slot, (A, B, scale) in self.trainable.items():
            y = y + scale * F.linear(F.linear(x, A) * coef[..., slot:slot + 1].to(x.dtype), B)
        return y


def attach_routed_linears(model: nn.Module, module_names: list[str], router: Router) -> dict[str, RoutedLinear]:
    """Replace the named ``nn.Linear`` modules of ``model`` by RoutedLinear wrappers (idempotent)."""
    routed = {}
    for name in module_names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        if isinstance(module, RoutedLinear):
            routed[name] = module
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear")
        wrapper = RoutedLinear(module, router)
        setattr(parent, child, wrapper)
        routed[name] = wrapper
    return routed


def linear_shapes(model: nn.Module, module_names: list[str]) -> dict[str, tuple[int, int]]:
    """``{module: (out_features, in_features)}`` for the named linear layers."""
    shapes = {}
    for name in module_names:
        module = model.get_submodule(name)
        shapes[name] = (module.out_features, module.in_features)
    return shapes


def plain_state_dict(model: nn.Module, *, original: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict as a plain checkpoint has it (``x.base.weight`` -> ``x.weight``).

    With ``original=True`` a materialized layer contributes its un-merged weight.
    """
    state = {}
    routed = {name: m for name, m in model.named_modules() if isinstance(m, RoutedLinear)}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".base.")
        if leaf and owner in routed:
            if original and leaf == "weight" and routed[owner]._original_weight is not None:
                value = routed[owner]._original_weight
            key = f"{owner}.{leaf}"
        state[key] = value
    return state
