"""The composition config: one class for the app's settings, the CLI's options and the YAML file."""
from __future__ import annotations

import argparse
import json

import pytest
import yaml

from composition.composer import ComposedModel
from composition.config import AUTO, CONFIG_FORMAT, CompositionConfig, shipped_config
from composition.errors import CompositionError
from composition.random_models import features_as_data, random_expert, tiny_base


@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = [random_expert(base, m, m, "decoupled", seed=40 + i) for i, m in enumerate(("image", "audio", "video"))]
    experts += [random_expert(base, f"{m}-shared", m, "shared", seed=50 + i) for i, m in enumerate(("image", "audio"))]
    return ComposedModel(base, experts, feature_fn=features_as_data)


def test_a_number_is_the_users_and_auto_follows_the_inputs(cm):
    config = CompositionConfig(lambdas={"image": 0.5, "audio": 0.5})
    for present, video in (({"image", "audio"}, None), ({"image", "audio", "video"}, 1 / 3)):
        damc = config.plan(cm, present).variant("DAMC")
        expected = {"image": 0.5, "audio": 0.5, **({"video": video} if video else {})}
        assert damc.lambdas == pytest.approx(expected)
    auto = CompositionConfig(lambdas={"image": AUTO, "audio": None})
    assert auto.lambdas == {} and auto.plan(cm, {"image", "audio", "video"}).variant("DAMC").lambdas == pytest.approx(
        {"image": 1 / 3, "audio": 1 / 3, "video": 1 / 3})


def test_the_selection_and_the_merge_rule_are_the_configs(cm):
    config = CompositionConfig(experts=["image", "audio", "video"], merge_all_experts=True)
    plan = config.plan(cm, {"image"})
    assert plan.names == ["DAMC", "expert:image"]  # the shared experts are not selected: no NaiveMC
    assert plan.variant("DAMC").lambdas == pytest.approx({"image": 1 / 3, "audio": 1 / 3, "video": 1 / 3})
    assert CompositionConfig(experts=["image", "audio"]).plan(cm, {"image"}).variant("DAMC").lambdas == {"image": 1.0}


def test_explicit_variants_carry_their_method_parameters(cm):
    config = CompositionConfig(variants=["ties@core", "DAMC"], method_params={"ties": {"density": 0.3}})
    plan = config.plan(cm, set())
    assert plan.names == ["ties@core", "DAMC"] and dict(plan.variants[0].spec.hyper)["density"] == 0.3


def test_yaml_round_trip_keeps_auto_and_the_users_values(cm):
    config = CompositionConfig(experts=["image", "audio"], lambdas={"image": 0.7}, mus={"audio": 0.6}, methods=["ties"],
                               method_params={"ties": {"density": 0.3}}, merge_all_experts=True, max_new_tokens=20)
    text = config.to_yaml(cm.experts, base_name=cm.base.name)
    data = yaml.safe_load(text)
    assert data["format"] == CONFIG_FORMAT and data["coefficients"]["lambdas"] == {"image": 0.7, "audio": AUTO}
    assert [e["folder"] for e in data["experts"]] == [None, None] and data["experts"][0]["modality"] == "image"
    again, notes = CompositionConfig.from_yaml(text, cm.experts, base_name=cm.base.name)
    assert again == config and notes == []
    _, notes = CompositionConfig.from_yaml(text, cm.experts, base_name="another-base")
    assert notes == [f"the config was saved with base {cm.base.name!r}; this app runs 'another-base'."]


def test_a_file_written_before_auto_existed_still_loads(cm):
    """Older files wrote every λ as a number and the default variant list: the numbers are taken as written."""
    old = (f"format: {CONFIG_FORMAT}\nbase: tiny-llama\nexperts:\n- {{name: image, folder: image}}\n- {{name: audio, folder: audio}}\n"
           "variants: [NaiveMC, DAMC, 'expert:*', ties]\ncoefficients:\n  lambdas: {image: 0.5, audio: 0.5}\n  mus: {}\n"
           "methods: {ties: {density: 0.5}}\ngeneration: {max_new_tokens: 48, temperature: 0.0, top_p: 1.0, seed: 0}\n")
    config, _ = CompositionConfig.from_yaml(old, cm.experts)
    assert config.variants is None and config.methods == ["ties"] and config.lambdas == {"image": 0.5, "audio": 0.5}


@pytest.mark.parametrize("changes, message", [
    ({"lambdas": {"image": "half"}}, "λ for 'image' is 'half'; expected a number, a list of anchors"),
    ({"lambdas": {"image": True}}, "λ for 'image' is True"),
    ({"variants": ["DAMC", "nonsense"]}, "unknown variant 'nonsense'"),
    ({"experts": "image"}, "experts must be a list"),
    ({"merge_all_experts": "yes"}, "merge_all_experts is 'yes'; expected true or false"),
    ({"temperature": -1}, "temperature"),
])
def test_bad_values_are_refused_by_name(changes, message):
    with pytest.raises(CompositionError, match=message):
        CompositionConfig(**changes)


def test_names_of_experts_not_loaded_are_refused(cm):
    with pytest.raises(CompositionError, match="the config's λ name expert 'smell', which is not loaded"):
        CompositionConfig(lambdas={"smell": 0.5}).check_against(cm.experts)


def test_a_merged_checkpoint_ships_its_rule(tmp_path):
    (tmp_path / "composition.json").write_text(json.dumps({"lambdas": {"image": 0.6}, "mus": {}, "merge_all_experts": True}))
    shipped = shipped_config([tmp_path])
    assert shipped.lambdas == {"image": 0.6} and shipped.merge_all_experts
    assert not shipped_config([tmp_path / "elsewhere"]).merge_all_experts


def test_cli_flags_override_the_config_file(tmp_path, cm):
    """``--config FILE`` first, then the flags: a flag λ replaces the file's, the file's other values stay."""
    from composition.cli.common import composition_config
    from composition.discovery import ExpertEntry

    path = tmp_path / "composition.yaml"
    path.write_text(CompositionConfig(experts=["image", "audio"], lambdas={"image": 0.7, "audio": 0.2}, mus={"audio": 0.6},
                                      max_new_tokens=20).to_yaml(cm.experts))
    entries = [ExpertEntry(tmp_path / n, e.config) for n, e in cm.experts.items()]
    args = argparse.Namespace(experts=None, config=str(path), lambdas=["audio=0.4", "image=auto"], mus=[], method_params=[],
                              variants=None, merge_all_experts=None, max_new_tokens=None, temperature=0.5, top_p=None,
                              seed=None)
    config = composition_config(args, entries)
    assert config.experts == ["image", "audio"] and config.lambdas == {"audio": 0.4} and config.mus == {"audio": 0.6}
    assert (config.max_new_tokens, config.temperature) == (20, 0.5)
    args.lambdas = ["smell=0.3"]
    with pytest.raises(CompositionError, match="--lambda names expert 'smell', which is not loaded"):
        composition_config(args, entries)
    args.lambdas, args.method_params = [], ["ties.density=0.3"]
    with pytest.raises(CompositionError, match="--method-param given for 'ties', which is not among the variants"):
        composition_config(args, entries)


# --- λ = s·(1/K) (issue 36) -------------------------------------------------------------------------
def test_a_lambda_scale_scales_every_auto_lambda_and_no_number(cm):
    config = CompositionConfig(lambdas={"image": 0.5}, lambda_scale=2)
    assert config.lambda_scale == 2.0
    plan = config.plan(cm, {"image", "audio"})
    assert plan.variant("DAMC").lambdas == {"image": 0.5, "audio": 1.0}
    assert plan.variant("NaiveMC").lambdas == {"image-shared": 1.0, "audio-shared": 1.0}
    assert config.coefficients(cm.experts, {"image", "audio"}).lambda_scale == 2.0
    assert CompositionConfig().plan(cm, {"image", "audio"}).variant("NaiveMC").lambdas == {"image-shared": 0.5,
                                                                                            "audio-shared": 0.5}


def test_lambda_scale_round_trips_through_yaml_and_older_files_read_as_1(cm):
    config = CompositionConfig(experts=["image", "audio"], lambda_scale=1.5)
    text = config.to_yaml(cm.experts)
    assert yaml.safe_load(text)["coefficients"]["lambda_scale"] == 1.5
    again, _ = CompositionConfig.from_yaml(text, cm.experts)
    assert again == config
    plain = CompositionConfig(experts=["image"]).to_yaml(cm.experts)
    assert "lambda_scale" not in plain and CompositionConfig.from_yaml(plain, cm.experts)[0].lambda_scale == 1.0
    typo = text.replace("lambda_scale", "lambda_scael")
    with pytest.raises(CompositionError, match="coefficients key 'lambda_scael' is unknown; expected lambdas, mus, lambda_scale"):
        CompositionConfig.from_yaml(typo, cm.experts)


@pytest.mark.parametrize("value", [-1, 9, "auto", True, float("inf")])
def test_a_bad_lambda_scale_is_refused_by_name(value):
    with pytest.raises(CompositionError, match=r"lambda_scale is .*; expected a finite number in \[0, 4\]"):
        CompositionConfig(lambda_scale=value)


def test_cli_lambda_scale_flag(cm, tmp_path):
    from composition.cli.common import add_composition_args, composition_config
    from composition.discovery import ExpertEntry

    parser = argparse.ArgumentParser()
    add_composition_args(parser)
    entries = [ExpertEntry(tmp_path / n, e.config) for n, e in cm.experts.items()]
    args = parser.parse_args(["--lambda-scale", "2", "--lambda", "image=0.3"])
    config = composition_config(args, entries)
    assert config.lambda_scale == 2.0 and config.lambdas == {"image": 0.3}
    assert composition_config(parser.parse_args([]), entries).lambda_scale == 1.0
