"""``python -m composition methods [--json]``: the merge-method registry, as the UI sees it."""
from __future__ import annotations

import argparse
import json

from .registry import command


@command("methods", "list the merge methods: formula, hyper-parameters with ranges, spaces (dense/core), group")
def build_methods(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"groups": {key: heading}, "methods": [{name, label, group, formula, spaces, params, ...}]}')
    return run_methods


def method_listing() -> dict:
    """The registry as plain data (what ``--json`` prints)."""
    from ..methods import GROUPS, list_methods

    methods = []
    for m in list_methods():
        methods.append({
            "name": m.name, "label": m.label, "group": m.group, "formula": m.formula, "help": m.help,
            "spaces": list(m.spaces), "linear": m.linear, "exact": m.exact, "inputs": m.inputs,
            "params": [{"name": p.name, "default": p.default, "minimum": p.minimum, "maximum": p.maximum,
                        "step": p.step, "kind": p.kind, "help": p.help} for p in m.params],
            "renamed": [{"old": r.old, "new": r.new, "rule": f"{r.new} = 1 − {r.old}" if r.complement else f"{r.new} = {r.old}"}
                        for r in m.renamed],
            "per_layer_weights": m.per_layer_weights()[0], "per_layer_note": m.per_layer_weights()[1],
        })
    return {"groups": dict(GROUPS), "methods": methods,
            "paper": {"NaiveMC": {"per_layer_weights": True, "per_layer_note": "per layer and per module, routed online"},
                      "DAMC": {"per_layer_weights": True, "per_layer_note": "λ and μ per layer and per module, routed online"}}}


def _number(value: float, kind: str) -> str:
    return str(int(value)) if kind == "int" else f"{value:g}"


def format_listing(listing: dict) -> list[str]:
    """Human-readable lines, one block per group in the picker's order."""
    lines = []
    for key, heading in listing["groups"].items():
        members = [m for m in listing["methods"] if m["group"] == key]
        if not members:
            continue
        lines.append(f"{heading}:")
        for m in members:
            tags = [", ".join(m["spaces"])] + (["linear"] if m["linear"] else []) + ([] if m["exact"] else ["inexact"])
            lines.append(f"  {m['name']:<16} {m['label']}  [{'; '.join(tags)}]")
            lines.append(f"  {'':<16} {m['formula']}")
            for p in m["params"]:
                rng = f"[{_number(p['minimum'], p['kind'])}, {_number(p['maximum'], p['kind'])}]"
                lines.append(f"  {'':<18}{p['name']} = {_number(p['default'], p['kind'])} in {rng}: {p['help']}")
            for r in m["renamed"]:
                lines.append(f"  {'':<18}(old name {r['old']}: {r['rule']})")
    lines.append("Space: 'ties' runs dense (the reference); 'ties@core' runs in the experts' low-rank core space.")
    lines.append("Every method takes λ schedules over layers and modules (merged layer by layer); weight_average "
                 "normalizes per layer, so a schedule all experts share cancels out there.")
    return lines


def run_methods(args: argparse.Namespace) -> int:
    listing = method_listing()
    if args.json:
        print(json.dumps(listing, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_listing(listing)))
    return 0
