"""The MCUB answer breakdown (letter vs named option) and the letter-lookup probe."""
from __future__ import annotations

import json

import pytest
import torch

from composition.composer import ComposedModel
from composition.evaluation.scoring import named_option
from training.diagnose import answer_breakdown, main
from training.lookup import letter_lookup_accuracy
from composition.random_models import random_expert, tiny_base

ITEMS = [
    {"id": "q1", "meta": {"options": ["star", "cone", "cross", "ring"], "answer_category": "cone"}},
    {"id": "q2", "meta": {"options": ["ball", "cup", "drum", "key"], "answer_category": "drum"}},
]


def pred(item, variant, answer, predicted, gold):
    return {"id": item, "variant": variant, "answer": answer, "predicted": predicted, "gold": gold, "correct": predicted == gold}


def test_named_option_is_the_first_whole_word_option():
    options = ["star", "cone", "cross", "ring"]
    assert named_option("cone (C)", options) == "cone"
    assert named_option("ring (D) and star (A)", options) == "ring"
    assert named_option("Starfish (A)", options) is None  # "star" inside another word is not a name
    assert named_option("B", options) is None


def test_breakdown_separates_recognition_from_the_letter():
    predictions = [
        pred("q1", "DAMC", "cone (C)", "C", "B"),   # right name, wrong letter
        pred("q2", "DAMC", "drum (C)", "C", "C"),   # right name, right letter
        pred("q1", "expert:image", "ring (D)", "D", "B"),  # wrong name, its own letter
        pred("q2", "expert:image", "C", "C", "C"),         # a bare letter names nothing
    ]
    result = answer_breakdown(ITEMS, predictions)
    assert result["DAMC"] == {"items": 2, "letter": 0.5, "named": 1.0, "agree": 0.5}
    assert result["expert:image"] == {"items": 2, "letter": 0.5, "named": 0.0, "agree": 0.5}


def test_breakdown_refuses_items_without_meta_and_unknown_ids():
    with pytest.raises(ValueError, match="meta.options"):
        answer_breakdown([{"id": "x", "conversations": []}], [])
    with pytest.raises(ValueError, match="not in the items file"):
        answer_breakdown(ITEMS, [pred("q9", "DAMC", "cone (B)", "B", "B")])


def test_cli_answers_prints_the_table_and_reports_bad_files(tmp_path, capsys):
    data, predictions = tmp_path / "items.json", tmp_path / "p.jsonl"
    data.write_text(json.dumps(ITEMS))
    predictions.write_text("\n".join(json.dumps(pred(i["id"], "NaiveMC", "cone (B)", "B", "B")) for i in ITEMS) + "\n")
    assert main(["answers", "--data", str(data), "--predictions", str(predictions), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["NaiveMC"] == {"items": 2, "letter": 1.0, "named": 0.5, "agree": 0.5}
    assert main(["answers", "--data", str(tmp_path / "missing.json"), "--predictions", str(predictions)]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_lookup_probe_routes_variants_like_the_engine():
    base = tiny_base()
    cm = ComposedModel(base)
    zero = random_expert(base, "image", "image", "decoupled", seed=1)
    for delta in zero.deltas.values():
        for m in delta.B:
            delta.B[m] = torch.zeros_like(delta.B[m])  # a delta of zero: the expert answers text like the base
    cm.add_expert(zero)
    cm.add_expert(random_expert(base, "audio", "audio", "decoupled", seed=2))
    result = letter_lookup_accuracy(cm, ["expert:image", "expert:audio", "DAMC"], n=24, seed=3)
    assert list(result) == ["base", "expert:image", "expert:audio", "DAMC"]
    assert all(0.0 <= v <= 1.0 for v in result.values())
    assert result["expert:image"] == result["base"]
    assert letter_lookup_accuracy(cm, ["DAMC"], n=24, seed=3)["DAMC"] == result["DAMC"]  # seeded: repeatable
    with pytest.raises(ValueError, match="n=0"):
        letter_lookup_accuracy(cm, ["DAMC"], n=0)


def _low_rank(k=3, out=20, inp=16, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    factors = [(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g), 0.5) for _ in range(k)]
    return [s * (b @ a) for a, b, s in factors], factors


def test_merge_displacement_of_task_arithmetic_is_none():
    from training.diagnose import merge_displacement

    deltas, factors = _low_rank()
    for space in ("dense", "core"):
        r = merge_displacement(deltas, "task_arithmetic", space, factors)
        assert r["relative_change"] < 1e-5 and r["cosine"] > 0.99999 and r["rank"] == 6  # K·r directions, nothing new


def test_merge_displacement_sees_moves_off_the_experts_subspaces():
    from training.diagnose import merge_displacement

    deltas, factors = _low_rank()
    # Element masks (TIES) make a low-rank delta full-rank: part of the move leaves the experts' spans.
    dense = merge_displacement(deltas, "ties", "dense", factors, {"density": 0.3})
    assert dense["outside"] > 0.2 and dense["rank"] > 6
    # In the core space the same method only re-weights what the experts span.
    core = merge_displacement(deltas, "ties", "core", factors, {"density": 0.3})
    assert core["outside"] < 1e-4 and core["rank"] <= 6
    # Iso-C flattens the spectrum: in the core space the same span, another direction; dense, it
    # also gives the mean singular value to directions no expert uses.
    iso = merge_displacement(deltas, "iso_c", "core", factors)
    assert iso["outside"] < 1e-4 and iso["cosine"] < 0.9
    assert merge_displacement(deltas, "iso_c", "dense", factors)["outside"] > 0.2


def test_the_merge_command_reads_the_bundled_experts(capsys):
    assert main(["merge", "--method", "wudi", "--space", "core", "--modules", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["experts"]) == ["audio", "image", "point", "video"]  # the bundled decoupled experts
    (module, figures), = result["modules"].items()
    assert module.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")
    assert figures["outside"] < 1e-3 and figures["cosine"] > 0.9 and result["mean"] == figures
    assert main(["merge", "--method", "no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err


def test_the_slots_command_trains_a_fresh_reader_and_scores_held_out_scenes(tmp_path, capsys, monkeypatch):
    import composition.base_llm as base_llm

    monkeypatch.setattr(base_llm, "load_base_llm", lambda device="cpu": tiny_base())
    args = ["slots", "--modality", "image", "--scenes", "6", "--steps", "4", "--heldout-items", "3", "--heldout-seed", "11",
            "--cache", str(tmp_path)]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["train_scenes"], result["heldout_scenes"], result["steps"]) == (6, 3, 4)
    assert set(result["heldout"]) == {"token", "scene", "categories"}
    assert all(0.0 <= v <= 1.0 for v in result["heldout"].values())
    assert main(args) == 0
    assert "on 3 held-out scenes: tokens" in capsys.readouterr().out
    assert main(["slots", "--modality", "image", "--scenes", "0", "--cache", str(tmp_path)]) == 2
    assert "--scenes" in capsys.readouterr().err
