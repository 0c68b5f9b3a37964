"""The engine's plan decides who takes part and with which coefficients; every layer shows what it applied."""
from __future__ import annotations

import logging

import pytest
import torch

from modalities.checks import UserError, check_choice, check_float, check_int
from composition.discovery import BUNDLED_EXPERTS, expert_folders
from composition.world_notes import EXAMPLES, world_notes
from composition.composer import ComposedModel
from composition.inputs import ModalInput
from composition.errors import CompositionError
from composition.expert import load_expert
from composition.random_models import features_as_data, random_expert, random_features, tiny_base
from composition.generate import GenerationConfig
from composition.variants import TEXT_ROUTE, Coefficients, VariantKind, VariantSpec
from studio import handlers
from studio.cards import Card, card_html
from pathlib import Path

from studio.controls import lambda_auto_name, lambda_name, lambda_views, mu_views
from tests.test_studio_handlers import CHEETAH, MEDIA, ask, controls, make_studio

AUDIO = str(MEDIA / "audio" / "cantina.wav")


@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = [random_expert(base, m if kind == "decoupled" else f"{m}-shared", m, kind, 10 * i + j)
               for j, kind in enumerate(("decoupled", "shared")) for i, m in enumerate(("image", "audio", "point"))]
    return ComposedModel(base, experts, feature_fn=features_as_data)


def inputs(*modalities: str) -> list[ModalInput]:
    return [ModalInput(m, random_features(3, i)) for i, m in enumerate(modalities)]


def test_damc_merges_only_the_experts_with_an_input_at_1_over_k(cm):
    plan = cm.plan({"image", "audio"})
    damc = plan.variant("DAMC")
    assert damc.kind is VariantKind.DAMC
    assert damc.experts == ["image", "audio"]
    assert damc.lambdas == {"image": 0.5, "audio": 0.5} and damc.mus == {"image": 1.0, "audio": 1.0}
    # The coefficients shown are the ones routed: the text route holds exactly those λ on the text deltas.
    text = damc.routes[TEXT_ROUTE]
    assert sorted(text.values()) == [0.5, 0.5]
    assert {slot for slot in text} == {cm.slots.index[("image", "text")], cm.slots.index[("audio", "text")]}
    naive = plan.variant("NaiveMC")
    assert naive.kind is VariantKind.NAIVE and naive.lambdas == {"image-shared": 0.5, "audio-shared": 0.5} and naive.mus == {}
    assert [v.kind for v in plan.variants] == [VariantKind.NAIVE, VariantKind.DAMC] + [VariantKind.EXPERT] * 4
    assert plan.variant("expert:image").coefficients_json() == {"lambdas": {"image": 1.0}, "mus": {"image": 1.0}}


def test_without_inputs_every_selected_expert_takes_part_and_user_values_apply(cm):
    plan = cm.plan(set(), coefficients=Coefficients({"image": 0.7}, {"audio": 0.4}), selection=["image", "audio", "point"])
    damc = plan.variant("DAMC")
    assert damc.lambdas == {"image": 0.7, "audio": pytest.approx(1 / 3), "point": pytest.approx(1 / 3)}
    assert damc.mus == {"image": 1.0, "audio": 0.4, "point": 1.0}
    assert "NaiveMC" not in plan.names  # no shared expert selected: no card, not an error
    with pytest.raises(CompositionError, match="'video' is not loaded"):
        cm.plan(set(), selection=["video"])


def test_a_method_reports_its_hyper_parameters_and_an_impossible_default_is_skipped(cm):
    plan = cm.plan({"image"}, methods=["ties"], hyper={"ties": {"density": 0.3}}, selection=["image", "audio-shared"])
    assert plan.variant("ties").coefficients_json()["hyper"]["density"] == 0.3
    assert plan.skipped_kinds["NaiveMC"] is VariantKind.NAIVE and "none is selected for the given inputs" in plan.skipped["NaiveMC"]
    with pytest.raises(CompositionError, match="none is selected for the given inputs"):
        cm.plan({"image"}, ["NaiveMC"], selection=["image", "audio-shared"])  # asked for by name: an error


def test_answers_carry_what_ran(cm):
    answers = cm.compare("hi", inputs("image", "audio"), config=GenerationConfig(max_new_tokens=2))
    damc = next(a for a in answers if a.name == "DAMC")
    assert damc.kind is VariantKind.DAMC and damc.experts == ["image", "audio"]
    assert damc.coefficients == {"lambdas": {"image": 0.5, "audio": 0.5}, "mus": {"image": 1.0, "audio": 1.0}}
    assert damc.to_json()["coefficients"] == damc.coefficients and damc.to_json()["kind"] == "damc"


def test_a_plan_runs_as_planned_and_refuses_other_inputs(cm):
    plan = cm.plan({"image"}, ["DAMC", "expert:image"])
    by_plan = cm.compare("hi", inputs("image"), plan, config=GenerationConfig(max_new_tokens=3))
    by_name = cm.compare("hi", inputs("image"), ["DAMC", "expert:image"], config=GenerationConfig(max_new_tokens=3))
    assert [a.token_ids for a in by_plan] == [a.token_ids for a in by_name]
    with pytest.raises(CompositionError, match="plan again with these inputs"):
        cm.compare("hi", inputs("image", "audio"), plan)


# --- the app shows the applied values ----------------------------------------------------------
def test_api_cards_and_sliders_show_the_coefficients_the_engine_applied():
    studio = make_studio(kinds=("decoupled", "shared"))
    audio = str(MEDIA / "audio" / "cantina.wav")
    payload = handlers.compare_api(studio, "hi", image=CHEETAH, audio=audio)
    damc = next(v for v in payload["variants"] if v["name"] == "DAMC")
    assert damc["coefficients"] == {"lambdas": {"image": 0.5, "audio": 0.5}, "mus": {"image": 1.0, "audio": 1.0}}
    assert damc["kind"] == "damc" and damc["experts"] == ["image", "audio"]
    experts = studio.cm.experts
    lams = [v for v in lambda_views(experts, studio.expert_names, present={"image", "audio"}) if v.visible]
    assert [(v.value, v.interactive) for v in lams] == [(0.5, True), (0.5, True), (0.5, False)]
    assert "no point input, not merged" in lams[2].label
    assert [v.value for v in lambda_views(experts, studio.expert_names) if v.visible] == [pytest.approx(1 / 3)] * 3
    mus = mu_views(experts, studio.expert_names, present={"image"})
    assert [v.interactive for v in mus if v.visible] == [True, False, False]
    timing, formulas = handlers.recompose(studio, ask("", [CHEETAH, audio, None, None], False, controls(studio)))
    assert "0.5\\,T_{\\text{image}}" in formulas and "0.5\\,T_{\\text{audio}}" in formulas and "K = 2" in formulas
    html = card_html(Card("DAMC", "x", 1.0, 2, status="done", kind="damc", coefficients=damc["coefficients"]))
    assert "λ image 0.50, audio 0.50 · μ image 1.00, audio 1.00" in html


def test_sliders_follow_the_inputs_until_the_user_moves_one():
    studio = make_studio()
    names = studio.expert_names
    stale = {"image": None, "audio": None, "point": None}  # never moved: auto (they showed 1/3 with no inputs)
    assert [v.value for v in lambda_views(studio.cm.experts, names, stale, {"image", "audio"})][:2] == [0.5, 0.5]
    # Adding an input again and again: untouched sliders keep following the default 1/K.
    shown = {}
    for present in ({"image"}, {"image", "audio"}, {"audio"}):
        views = lambda_views(studio.cm.experts, names, shown, present)
        shown = dict(zip(names, (v.value for v in views)))
        assert [shown[n] for n in names if n in present] == [1 / len(present)] * len(present)
        shown = {n: None if v.auto else v.value for n, v in zip(names, views)}  # what the page sends back: still auto
    moved = {"image": 0.8, "audio": 1 / 3, "point": 1 / 3}
    assert [v.value for v in lambda_views(studio.cm.experts, names, moved, {"image", "audio"})][:2] == [0.8, pytest.approx(1 / 3)]


def test_lambdas_set_by_hand_survive_a_new_input_and_the_card_reports_them():
    """λ image = audio = 0.5 on purpose is not "the default for two inputs": a third input leaves both at 0.5
    (the third gets its own auto 1/3), and the card and the plan say so."""
    studio = make_studio()
    values = controls(studio)
    for i, name in enumerate(["image", "audio"]):  # the first two sliders, moved by the user to 0.5
        values[lambda_name(i)], values[lambda_auto_name(i)] = 0.5, False
    two = {"image": 0.5, "audio": 0.5}
    point = str(Path(__file__).resolve().parent.parent / "examples" / "point-example.npy")
    views = handlers.slider_views(studio, ask("", [CHEETAH, AUDIO, None, point], False, values))[0]
    assert [(v.value, v.auto) for v in views if v.visible] == [(0.5, False), (0.5, False), (pytest.approx(1 / 3), True)]
    cards = list(handlers.compare_stream(studio, ask("hi", [CHEETAH, AUDIO, None, point], False, values)))[-1]
    assert "λ image 0.50, audio 0.50, point 0.33" in cards
    settings = handlers.settings_of(studio, values)
    assert settings.lambdas == two
    damc = settings.plan(studio.cm, {"image", "audio", "point"}).variant("DAMC")
    assert {k: round(v, 4) for k, v in damc.lambdas.items()} == {**two, "point": 0.3333}
    again, _ = type(settings).from_yaml(settings.to_yaml(studio.cm.experts), studio.cm.experts)
    assert again.lambdas == two  # a saved config keeps them too (the point λ is saved as auto)


# --- user errors and internal errors --------------------------------------------------------------
def test_only_the_projects_own_errors_are_shown_as_the_users(caplog):
    import gradio as gr

    import app

    def user_mistake():
        raise CompositionError("the question is empty; type a question.")

    def torch_bug():
        torch.zeros(2) @ torch.zeros(3)  # a RuntimeError from inside torch

    def library_value_error():
        raise ValueError("math domain error")  # a plain ValueError is not the user's fault either

    with pytest.raises(gr.Error, match="the question is empty"):
        app.user_errors(user_mistake)()
    for bug in (torch_bug, library_value_error):
        with caplog.at_level(logging.ERROR, logger="studio"), pytest.raises(gr.Error) as info:
            app.user_errors(bug)()
        message = info.value.message
        assert message.startswith("internal error (id ") and "not something you did" in message
        incident = message.split("id ")[1].split(")")[0]
        assert any(incident in r.getMessage() and r.exc_info for r in caplog.records), "the bug was not logged with its traceback"


def test_every_user_error_type_is_a_user_error():
    from modalities.base import ModalityError
    from modalities.encoders import EncoderError
    from studio.errors import StudioError

    for kind in (CompositionError, ModalityError, EncoderError, StudioError):
        assert issubclass(kind, UserError)


# --- what the bundled experts know -----------------------------------------------------------------
def test_bundled_experts_say_what_they_know_and_note_files_from_outside_it():
    folders = {f.name: f for f in expert_folders([BUNDLED_EXPERTS])}
    image = load_expert(folders["image"])
    assert "synthetic world" in image.config.trained_on and "ball" in image.config.trained_on
    assert world_notes([image], [ModalInput("image", path=EXAMPLES / "image-example.png")]) == {}
    notes = world_notes([image], [ModalInput("image", path=CHEETAH, source_name="cheetah.jpg")])
    assert "knows only the synthetic world" in notes["image"] and "cheetah.jpg is not one of its examples" in notes["image"]
    assert world_notes([image], [ModalInput("audio", path=CHEETAH)]) == {}  # it does not read that input


# --- validation helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, False, 1.5, "3", None, float("nan")])
def test_counts_refuse_bools_fractions_and_strings(value):
    with pytest.raises(CompositionError, match="max_new_tokens="):
        check_int(value, "max_new_tokens", 1, 1024, error=CompositionError)


def test_helpers_normalise_and_name_the_bound():
    assert check_int(8.0, "n", 1) == 8 and isinstance(check_int(8.0, "n", 1), int)
    assert check_float(1, "top_p", 0, 1, open_min=True) == 1.0
    with pytest.raises(ValueError, match=r"top_p=0; expected a finite number in \(0, 1\]"):
        check_float(0, "top_p", 0, 1, open_min=True)
    with pytest.raises(ValueError, match="expected one of a, b"):
        check_choice("c", "kind", ("a", "b"))


def test_configs_refuse_true_as_a_count():
    from training.recipe import TrainConfig

    with pytest.raises(CompositionError, match="max_new_tokens=True"):
        GenerationConfig(max_new_tokens=True)
    with pytest.raises(ValueError, match="batch_size=True"):
        TrainConfig(batch_size=True)
    assert GenerationConfig(max_new_tokens=8.0).max_new_tokens == 8


# --- merge methods in the engine: dense and core space side by side --------------------------------
def test_core_space_columns_run_online_beside_the_dense_ones(cm):
    from composition.methods.registry import RenamedParameterWarning

    question, given = "hi", inputs("image", "audio")
    dense, core, ta, ta_core = cm.logits(question, given, ["ties", "ties@core", "task_arithmetic", "task_arithmetic@core"])
    assert torch.allclose(ta, ta_core, atol=1e-5)  # linear: the same delta in either space
    assert not torch.allclose(dense, core, atol=1e-4)  # element masks depend on the basis: a different operation
    plan = cm.plan({"image", "audio"}, ["ties@core"])
    cm.prepare_dense(plan.variants)
    slot = next(iter(plan.variants[0].routes[TEXT_ROUTE]))
    layer = next(iter(cm.layers.values()))
    assert slot in layer.lowrank and slot not in layer.dense  # a low-rank slot, routed like an expert
    assert layer.lowrank[slot].A.shape[0] <= 2 * 4  # rank <= K·r (K = 2 experts with an input, r = 4)
    (factor,) = cm.logits(question, given, ["factor_mean"])
    assert torch.isfinite(factor).all()
    with pytest.warns(RenamedParameterWarning, match="density"):
        spec = VariantSpec.parse("dare_linear", {"drop_rate": 0.2})
    assert dict(spec.hyper)["density"] == pytest.approx(0.8)


def test_an_encoder_gets_the_file_decoded_with_the_limits_it_was_trained_on(monkeypatch):
    """Point-BERT saw 8192 points: the same uploaded cloud reaches it with 8192, the bundled point encoder with its default."""
    import modalities.encoders as encoders
    from composition.inputs import load_inputs
    from composition.composer import encode_with_registry
    from composition.expert import EncoderRef

    seen = []

    class Recorder:
        def encode(self, data):
            seen.append(tuple(data.shape))
            return torch.zeros(1, 4)

    monkeypatch.setattr(encoders, "get_encoder", lambda *args, **kwargs: Recorder())
    (cloud,) = load_inputs({"point": [EXAMPLES / "point-example.npy"]})
    for kind in ("point-bert", "point-fps-knn"):
        expert = random_expert(tiny_base(), "point", "point", "decoupled", 1)
        object.__setattr__(expert.config, "encoder", EncoderRef(kind, None, 4))
        encode_with_registry(expert, cloud)
    assert seen[0][0] == 8192 and seen[1] == tuple(cloud.data.shape) and seen[1][0] != 8192


def test_the_cli_calls_a_library_value_error_internal(capsys, monkeypatch):
    import composition.benchmarks.speed as benchmark
    from composition.cli import main

    def broken(*args, **kwargs):
        raise ValueError("math domain error")  # raised inside a library, not caused by the user

    monkeypatch.setattr(benchmark, "run_benchmark", broken)
    assert main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error (ValueError: math domain error)") and "--debug" in err
    assert main(["bench", "--quick", "--repeats", "0"]) == 2  # a user error stays one line, exit 2


def test_a_folder_of_experts_ships_its_coefficients(tmp_path):
    """A merged ModelCompose checkpoint imports with composition.json; the CLI and the app start from those λ and μ."""
    import json

    from composition.discovery import default_coefficients

    one, two, other = tmp_path / "merged", tmp_path / "again", tmp_path / "export"
    for folder in (one, two, other):
        folder.mkdir()
    (one / "composition.json").write_text(json.dumps({"source": "x", "lambdas": {"image": 0.6, "point": 0.4},
                                                      "mus": {"image": 1.0, "point": 0.8}}))
    (other / "composition.json").write_text(json.dumps({"variant": "DAMC", "modalities": ["image"]}))  # an export manifest
    shipped = default_coefficients([one, other, tmp_path / "nothing-here"])
    assert shipped.lambdas == {"image": 0.6, "point": 0.4} and shipped.mus == {"image": 1.0, "point": 0.8}
    (two / "composition.json").write_text(json.dumps({"lambdas": {"image": 0.5}, "mus": {}}))
    with pytest.raises(CompositionError, match="λ for 'image' is 0.6 in one composition.json and 0.5"):
        default_coefficients([one, two])
    studio = make_studio(modalities=("image", "point"))
    from composition.config import shipped_config

    studio.defaults = shipped_config([one, other, tmp_path / "nothing-here"])
    settings = handlers.default_settings(studio)
    assert settings.lambdas == {"image": 0.6, "point": 0.4} and settings.mus["point"] == 0.8
    damc = next(v for v in handlers.compare_api(studio, "hi")["variants"] if v["name"] == "DAMC")
    assert damc["coefficients"]["lambdas"] == {"image": 0.6, "point": 0.4} and damc["coefficients"]["mus"]["point"] == 0.8


# --- one weight for both kinds: λ = s·(1/K) (issue 36) --------------------------------------------
def test_a_lambda_scale_moves_the_shared_composition_and_damc_together(cm):
    from composition.variants import LambdaRoutes

    plan = cm.plan({"image", "audio"}, ["NaiveMC", "DAMC"], Coefficients(lambda_scale=2.0))
    naive, damc = plan.variant("NaiveMC"), plan.variant("DAMC")
    assert naive.lambdas == {"image-shared": 1.0, "audio-shared": 1.0} and damc.lambdas == {"image": 1.0, "audio": 1.0}
    shared = {cm.slots.index[(n, "shared")] for n in ("image-shared", "audio-shared")}
    for route in (TEXT_ROUTE, "image", "audio"):  # NaiveMC: Σ λ_i D_i on every token
        assert naive.routes[route] == {s: 1.0 for s in shared}
    assert damc.routes["image"] == {cm.slots.index[("image", "modality")]: 1.0}  # μ, not λ, on DAMC's modality tokens
    assert naive.coefficients_json() == {"lambdas": {"image-shared": 1.0, "audio-shared": 1.0}, "mus": {}, "lambda_scale": 2.0}
    assert naive.spec.lambda_routes is LambdaRoutes.EVERY_TOKEN
    # The paper's default stays NaiveMC's exact mean, with nothing new in what the cards show.
    paper = cm.plan({"image", "audio"}, ["NaiveMC"]).variant("NaiveMC")
    assert paper.lambdas == {"image-shared": 0.5, "audio-shared": 0.5} and "lambda_scale" not in paper.coefficients_json()


def test_a_lambda_the_user_set_is_never_scaled_and_naivemc_takes_it(cm):
    coef = Coefficients({"image-shared": 0.3, "image": 0.7}, lambda_scale=3.0)
    plan = cm.plan({"image", "audio"}, ["NaiveMC", "DAMC"], coef)
    assert plan.variant("NaiveMC").lambdas == {"image-shared": 0.3, "audio-shared": 1.5}
    assert plan.variant("DAMC").lambdas == {"image": 0.7, "audio": 1.5}
    explicit = cm.plan({"image"}, ["NaiveMC"], Coefficients({"image-shared": 0.3}, lambda_scale=3.0)).variant("NaiveMC")
    assert explicit.lambdas == {"image-shared": 0.3} and "lambda_scale" not in explicit.coefficients_json()  # nothing auto


def test_naivemc_at_a_scale_is_task_arithmetic_over_the_shared_experts(cm):
    """Σ λ_i·D_i: NaiveMC at s/K equals the task-arithmetic method over the shared experts alone at the same λ."""
    given = inputs("image", "audio")
    naive = cm.logits("hi", given, ["NaiveMC"], Coefficients(lambda_scale=1.5))[0]
    shared_only = cm.subset(["image-shared", "audio-shared"])
    task = shared_only.logits("hi", given, ["task_arithmetic"], Coefficients({"image-shared": 0.75, "audio-shared": 0.75}))[0]
    assert torch.allclose(naive, task, atol=1e-5)
    assert not torch.allclose(naive, cm.logits("hi", given, ["NaiveMC"])[0], atol=1e-3)  # the scale changed something


def test_lambda_on_text_tokens_only_keeps_the_modality_tokens_at_the_mean(cm):
    from composition.variants import NAIVE_TEXT_LAMBDA, LambdaRoutes

    spec = VariantSpec.parse(NAIVE_TEXT_LAMBDA)
    assert spec == VariantSpec.naive(LambdaRoutes.TEXT_ONLY) and spec.kind is VariantKind.NAIVE
    rv = cm.plan({"image", "audio"}, [spec], Coefficients(lambda_scale=2.0)).variants[0]
    shared = {cm.slots.index[(n, "shared")] for n in ("image-shared", "audio-shared")}
    assert rv.routes[TEXT_ROUTE] == {s: 1.0 for s in shared}
    assert rv.routes["image"] == rv.routes["audio"] == {s: 0.5 for s in shared}
    assert rv.coefficients_json()["modality_lambdas"] == {"image-shared": 0.5, "audio-shared": 0.5}
    from composition.plan import describe_coefficients

    assert describe_coefficients(rv.coefficients_json()) == ("λ image-shared 1.00, audio-shared 1.00 · auto λ = 2·(1/K) · "
                                                             "λ on modality tokens image-shared 0.50, audio-shared 0.50")
    given = inputs("image", "audio")
    # At s = 1 both routes hold 1/K: the variant is NaiveMC itself; at s = 2 it differs from both NaiveMC variants.
    one = cm.logits("hi", given, ["NaiveMC", NAIVE_TEXT_LAMBDA])
    assert torch.allclose(one[0], one[1])
    two = cm.logits("hi", given, ["NaiveMC", NAIVE_TEXT_LAMBDA], Coefficients(lambda_scale=2.0))
    assert not torch.allclose(two[0], two[1], atol=1e-3) and not torch.allclose(two[1], one[0], atol=1e-3)
    # Without inputs there are no modality tokens: the two are the same composition.
    text = cm.logits("hi", [], ["NaiveMC", NAIVE_TEXT_LAMBDA], Coefficients(lambda_scale=2.0))
    assert torch.allclose(text[0], text[1])


def test_scale_and_route_options_are_refused_by_name():
    from composition.variants import LambdaRoutes

    for bad in (-0.5, 4.5, float("nan"), True, "2"):
        with pytest.raises(CompositionError, match="lambda_scale is .*expected a finite number in \\[0, 4\\]"):
            Coefficients(lambda_scale=bad)
    with pytest.raises(CompositionError, match="applies to NaiveMC only"):
        VariantSpec("DAMC", VariantKind.DAMC, lambda_routes=LambdaRoutes.TEXT_ONLY)
    with pytest.raises(CompositionError, match="lambda_routes is 'text-only'; expected one of"):
        VariantSpec("NaiveMC", VariantKind.NAIVE, lambda_routes="text-only")


def test_lambda_on_modality_tokens_only_is_the_other_half(cm):
    from composition.variants import NAIVE_MODALITY_LAMBDA, LambdaRoutes

    spec = VariantSpec.parse(NAIVE_MODALITY_LAMBDA)
    assert spec == VariantSpec.naive(LambdaRoutes.MODALITY_ONLY)
    rv = cm.plan({"image", "audio"}, [spec], Coefficients(lambda_scale=2.0)).variants[0]
    shared = {cm.slots.index[(n, "shared")] for n in ("image-shared", "audio-shared")}
    assert rv.routes[TEXT_ROUTE] == {s: 0.5 for s in shared} and rv.routes["image"] == {s: 1.0 for s in shared}
    assert rv.coefficients_json() == {"lambdas": {"image-shared": 0.5, "audio-shared": 0.5}, "mus": {},
                                      "lambda_scale": 2.0, "modality_lambdas": {"image-shared": 1.0, "audio-shared": 1.0}}
    given = inputs("image", "audio")
    both = cm.logits("hi", given, ["NaiveMC", NAIVE_MODALITY_LAMBDA], Coefficients(lambda_scale=2.0))
    paper = cm.logits("hi", given, ["NaiveMC"])[0]
    assert not torch.allclose(both[1], both[0], atol=1e-3) and not torch.allclose(both[1], paper, atol=1e-3)
    # No input, no modality token: λ reaches nothing, so this is the paper's NaiveMC.
    text = cm.logits("hi", [], ["NaiveMC", NAIVE_MODALITY_LAMBDA], Coefficients(lambda_scale=2.0))
    assert torch.allclose(text[1], cm.logits("hi", [], ["NaiveMC"])[0])
