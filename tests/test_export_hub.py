"""Export as the Hub expects: a peft adapter form that loads with peft, a model card huggingface_hub reads, a push."""
from __future__ import annotations

import json

import pytest
import torch

from composition.card import check_card, hub_ids
from composition.composer import ComposedModel
from composition.config import CompositionConfig
from composition.errors import CompositionError
from composition.export import export_composition, load_exported
from composition.random_models import features_as_data, random_expert, tiny_base
from composition.variants import Coefficients, VariantSpec

QUESTION = "What do they share?"


@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = [random_expert(base, m, m, "decoupled", seed=80 + i) for i, m in enumerate(("image", "audio", "point"))]
    return ComposedModel(base, experts, feature_fn=features_as_data)


COEF = Coefficients(lambdas={"image": 0.5, "audio": 0.3, "point": 0.2})


def text_ids(cm) -> list[int]:
    """The text-only prompt's token ids, as the engine builds it."""
    rv = cm.plan(set(), ["DAMC"], COEF).variants[0]
    (row,) = cm.prompt_rows(QUESTION, [], [rv])
    return list(row.keys)


def peft_logits(folder, ids) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_base().model, str(folder)).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def export(cm, folder, **kwargs):
    config = CompositionConfig(lambdas=dict(COEF.lambdas))
    return export_composition(cm, VariantSpec.parse("DAMC"), folder, coefficients=COEF, form="adapter",
                              recipe_yaml=config.to_yaml(cm.experts, base_name=cm.base.name), **kwargs)


def test_the_adapter_form_loads_with_peft_and_answers_as_the_studio(cm, tmp_path):
    folder = export(cm, tmp_path / "adapter")
    manifest = json.loads((folder / "composition.json").read_text())
    assert manifest["form"] == "adapter" and manifest["adapter_rank"] == 12 and manifest["kept_energy"] == {}  # 3 × r=4
    expected = cm.logits(QUESTION, [], ["DAMC"], COEF)[0]
    got = peft_logits(folder, text_ids(cm))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # exact: every text-token logit


def test_a_smaller_rank_is_truncated_per_layer_and_the_card_reports_the_energy_kept(cm, tmp_path):
    folder = export(cm, tmp_path / "small", rank=4)
    manifest = json.loads((folder / "composition.json").read_text())
    kept = manifest["kept_energy"]
    assert manifest["adapter_rank"] == 4 and set(kept) == set(cm.layers) and all(0 < k < 1 for k in kept.values())
    from composition.lora import load_lora

    delta = load_lora(folder, what="adapter")
    rv = cm.plan(set(), ["DAMC"], COEF).variants[0]
    for module, share in kept.items():  # the truncation's error is exactly the energy not kept
        layer = cm.layers[module]
        full = sum(c * layer.slot_delta(s) for s, c in rv.routes["text"].items())
        error = float(((full - delta.dense(module)) ** 2).sum() / (full ** 2).sum())
        assert error == pytest.approx(1 - share, rel=1e-3, abs=1e-6)
    card = (folder / "README.md").read_text()
    assert "truncated there by SVD" in card and f"{100 * min(kept.values()):.2f} %" in card
    exact = peft_logits(export(cm, tmp_path / "exact"), text_ids(cm))
    assert (peft_logits(folder, text_ids(cm)) - exact).abs().max() > 0  # truncation changed something


def test_the_card_passes_huggingface_hubs_reading_and_holds_the_recipe(cm, tmp_path):
    folder = export(cm, tmp_path / "card", mcub={"data": "mcub-synth", "items": 20, "accuracy": 0.85})
    data = check_card(folder / "README.md")
    assert data["base_model_relation"] == "adapter" and data["library_name"] == "peft"
    assert {"merge", "model-composition", "damc"} <= set(data["tags"])
    card = (folder / "README.md").read_text()
    assert "λ image 0.50, audio 0.30, point 0.20" in card and "**85.0 %**" in card
    recipe = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    again, _ = CompositionConfig.from_yaml(recipe, cm.experts)
    assert again.lambdas == dict(COEF.lambdas)
    full = export_composition(cm, VariantSpec.parse("DAMC"), tmp_path / "full", coefficients=COEF)
    assert check_card(full / "README.md")["base_model_relation"] == "merge"
    assert hub_ids(["HuggingFaceTB/SmolLM2-135M-Instruct", "Adu2021/ModelCompose:vision-damc", "", "local-folder",
                    "Adu2021/ModelCompose/sub"]) == ["HuggingFaceTB/SmolLM2-135M-Instruct", "Adu2021/ModelCompose"]
    with pytest.raises(CompositionError, match="export form 'zip'"):
        export_composition(cm, VariantSpec.parse("DAMC"), tmp_path / "bad", form="zip")


SCHEDULED = Coefficients(lambdas={"image": [0.0, 1.0], "audio": [{"filter": "mlp", "value": 0.6}, {"value": 0.1}],
                                  "point": 0.2}, mus={"audio": [1.0, 0.5]})


@pytest.mark.parametrize("form", ["adapter", "full"])
def test_both_forms_honour_schedules_over_layers_and_modules(cm, tmp_path, form):
    """A λ over the layers (anchors) and by module (filters) is written into the export as the studio applies
    it online: peft (adapter) and the reloaded checkpoint (full) answer the text tokens as the studio does,
    and the card's coefficients hold the schedules as typed."""
    config = CompositionConfig(lambdas=dict(SCHEDULED.lambdas), mus=dict(SCHEDULED.mus))
    folder = export_composition(cm, VariantSpec.parse("DAMC"), tmp_path / form, coefficients=SCHEDULED, form=form,
                                recipe_yaml=config.to_yaml(cm.experts, base_name=cm.base.name))
    expected = cm.logits(QUESTION, [], ["DAMC"], SCHEDULED)[0]
    assert not torch.allclose(expected, cm.logits(QUESTION, [], ["DAMC"], COEF)[0], atol=1e-4)  # the schedule matters
    if form == "adapter":
        got = peft_logits(folder, text_ids(cm))
    else:  # the folder's own checkpoint: the schedule written into its weights
        reloaded, variant = load_exported(folder, feature_fn=features_as_data)
        got = reloaded.logits(QUESTION, [], [variant])[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    manifest = json.loads((folder / "composition.json").read_text())
    assert manifest["coefficients"]["lambdas"]["image"] == [0.0, 1.0]
    assert manifest["coefficients"]["lambdas"]["audio"] == [{"filter": "mlp", "value": 0.6}, {"value": 0.1}]


def test_the_adapter_export_reloads_in_the_studio(cm, tmp_path):
    folder = export(cm, tmp_path / "reload")
    expected = cm.logits(QUESTION, [], ["DAMC"], COEF)[0]
    import composition.base_llm as base_llm

    original = base_llm.load_base_llm
    base_llm.load_base_llm = lambda *args, **kwargs: tiny_base()  # the base the adapter was made on
    try:
        reloaded, variant = load_exported(folder, feature_fn=features_as_data)
    finally:
        base_llm.load_base_llm = original
    got = reloaded.logits(QUESTION, [], [variant])[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_pushing_goes_through_huggingface_hub_up_to_the_network(cm, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from composition.publish import push_folder

    folder = export(cm, tmp_path / "push")
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or
                        f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert push_folder(folder, "me/my-composition", private=True, token="hf_test") == "https://huggingface.co/me/my-composition"
    assert calls[0] == ("create", "me/my-composition", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][1]["folder_path"] == str(folder) and calls[1][1]["repo_id"] == "me/my-composition"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CompositionError, match="not pushed: the Hub is offline here .* the export stays in push/"):
        push_folder(folder, "me/my-composition", token="hf_test")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("composition.publish.hub_token", lambda: None)
    with pytest.raises(CompositionError, match="not pushed: no Hugging Face token"):
        push_folder(folder, "me/my-composition")
    with pytest.raises(CompositionError, match="is not a Hub repository id"):
        push_folder(folder, "no-slash", token="hf_test")


def test_the_export_tab_zips_the_adapter_with_its_card_and_pushes_that_zip(monkeypatch):
    from huggingface_hub import HfApi

    from studio.exporting import export_zip, push_zip
    from tests.test_studio_handlers import make_studio

    studio = make_studio()
    archive, shown = export_zip(studio, CompositionConfig(experts=["image", "audio"]), "DAMC", "adapter", 4)
    assert "as a peft adapter" in shown and "## Recipe" in shown and "<details>" in shown
    seen = {}

    def upload(self, folder_path, **kw):
        from pathlib import Path

        seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", upload)
    monkeypatch.setattr("composition.publish.hub_token", lambda: "hf_test")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert push_zip(archive, "me/damc") == "pushed to [me/damc](https://huggingface.co/me/damc)."
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "composition.json", "experts"} <= set(seen["files"])
    with pytest.raises(CompositionError, match="export a composition first"):
        push_zip(None, "me/damc")
