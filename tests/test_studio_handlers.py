"""The app's handlers as plain functions (studio/), on tiny random models: no UI, no server."""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from composition.composer import ComposedModel
from composition.errors import CompositionError
from modalities import MODALITY_NAMES
from studio import handlers
from studio.mcub_tab import load_items, parse_grid, run_mcub, run_sweep
from composition.config import CONFIG_FORMAT, CompositionConfig
from studio.controls import (MAX_LAMBDA_SLOTS, NO_INPUT, QUESTION, SliderView, lambda_auto_name, lambda_name, lambda_names_all,
                             lambda_views, media_name, method_names_all, mu_name, mu_views, param_name, values_from_settings)
from studio.examples import example_rows
from studio.exporting import export_zip
from studio.session import NO_EXPERTS_HELP, Studio
from composition.random_models import FEATURE_DIM, random_expert, tiny_base

MEDIA = Path(importlib.util.find_spec("gradio").submodule_search_locations[0]) / "media_assets"
CHEETAH = str(MEDIA / "images" / "cheetah.jpg")
TOKENS = 4


def file_features(expert, item) -> torch.Tensor:
    """A stand-in encoder for real loaded tensors of any modality: (TOKENS, FEATURE_DIM), deterministic."""
    flat = item.data.float().flatten()
    chunks = torch.tensor_split(flat, TOKENS * FEATURE_DIM)
    return torch.stack([c.mean() if c.numel() else torch.tensor(0.0) for c in chunks]).reshape(TOKENS, FEATURE_DIM)


def make_studio(kinds=("decoupled",), modalities=("image", "audio", "point")) -> Studio:
    base = tiny_base()
    experts = []
    for kind in kinds:
        for i, m in enumerate(modalities):
            suffix = "" if kind == "decoupled" else "-shared"
            experts.append(random_expert(base, f"{m}{suffix}", m, kind, 100 + 10 * i + (kind == "shared")))
    return Studio(ComposedModel(base, experts, feature_fn=file_features))


def controls(studio: Studio, settings: CompositionConfig | None = None) -> dict:
    """The named control values the UI sends, from settings (default: every expert, paper defaults)."""
    settings = settings or handlers.default_settings(studio)
    shown = values_from_settings(studio.cm.experts, settings)
    return {name: v.value if isinstance(v, SliderView) else v for name, v in shown.items()}


def ask(question: str, media, experts_without_input: bool, values: dict) -> dict:
    """What the Compare button sends: the controls, the media (in modality order), the question."""
    sent = dict(values)
    sent.update({media_name(m): v for m, v in zip(MODALITY_NAMES, media)})
    sent.update({QUESTION: question, NO_INPUT: experts_without_input})
    return sent


SHORT = CompositionConfig(max_new_tokens=3)


def short(studio, **changes) -> dict:
    values = dict(experts=list(studio.cm.experts), max_new_tokens=3)
    values.update(changes)
    return controls(studio, CompositionConfig(**values))


# --- sliders and settings ------------------------------------------------------------
def test_slider_defaults_are_the_papers():
    studio = make_studio(kinds=("decoupled", "shared"))
    lams = lambda_views(studio.cm.experts, studio.expert_names)
    assert len(lams) == MAX_LAMBDA_SLOTS
    shown = [v for v in lams if v.visible]
    # λ for the decoupled experts only (DAMC merges those), 1/K each, in prompt order.
    assert [v.label.split()[1] for v in shown] == ["image", "audio", "point"]
    assert all(v.value == pytest.approx(1 / 3) for v in shown)
    mus = mu_views(studio.cm.experts, ["image", "point"])
    assert [v.visible for v in mus] == [m in ("image", "point") for m in MODALITY_NAMES]
    assert all(v.value == 1.0 for v in mus)


def test_default_lambdas_defer_to_the_engine_and_changed_ones_pass_through():
    studio = make_studio()
    experts = studio.cm.experts
    assert handlers.settings_of(studio, controls(studio)).coefficients(experts).lambdas == {}
    values = controls(studio)
    values[lambda_name(0)] = 0.8  # first λ slider: image, moved by the user
    values[lambda_auto_name(0)] = False
    coef = handlers.settings_of(studio, values).coefficients(experts)
    assert coef.lambdas["image"] == 0.8 and coef.lambdas["audio"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("changes, message", [
    ({"lambdas": {"image": 9.0}}, "λ for 'image' is 9.0"),
    ({"mus": {"smell": 1.0}}, "unknown modality 'smell'"),
    ({"methods": ["fancy"]}, "unknown merge method 'fancy'"),
    ({"method_params": {"ties": {"sparsity": 0.3}}}, "no hyper-parameter 'sparsity'"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
])
def test_bad_settings_name_the_value(changes, message):
    with pytest.raises(CompositionError, match=message):
        CompositionConfig(**changes)


# --- compare -----------------------------------------------------------------------------
def test_api_compare_with_a_real_image_names_every_variant():
    studio = make_studio(kinds=("decoupled", "shared"))
    payload = handlers.compare_api(studio, "What is this?", image=CHEETAH)
    names = [v["name"] for v in payload["variants"]]
    assert names == ["NaiveMC", "DAMC", "expert:image", "expert:image-shared"]
    for v in payload["variants"]:
        assert isinstance(v["answer"], str) and v["new_tokens"] > 0 and v["seconds"] >= 0


def test_stream_yields_partial_cards_then_every_answer():
    studio = make_studio()
    pages = list(handlers.compare_stream(studio, ask("hi", [CHEETAH, None, None, None], False, short(studio))))
    assert len(pages) >= 2
    assert "generating…" in pages[0]
    for name in ("DAMC", "expert:image"):
        assert name in pages[-1]
    assert "tokens" in pages[-1] and "streaming" not in pages[-1]


def test_cards_say_when_an_expert_got_no_input():
    studio = make_studio()
    html = list(handlers.compare_stream(studio, ask("hi", [CHEETAH, None, None, None], True, short(studio))))[-1]
    assert "the audio expert got no audio input" in html and "the point expert got no point input" in html


def test_a_composition_that_cannot_run_is_a_skipped_card_not_a_failure():
    studio = make_studio(kinds=("decoupled", "shared"), modalities=("image", "audio"))
    studio.cm.remove_expert("audio-shared")
    npy = Path(__file__).resolve().parent.parent / "examples" / "audio-example.wav"
    payload = handlers.compare_api(studio, "hi", image=CHEETAH, audio=str(npy))
    assert [s["name"] for s in payload["skipped"]] == ["NaiveMC"]
    assert "no expert for the audio input" in payload["skipped"][0]["reason"]
    assert "DAMC" in [v["name"] for v in payload["variants"]]


def test_a_bad_file_is_refused_with_its_message_and_the_studio_keeps_working(tmp_path):
    studio = make_studio()
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match=r"notes.png could not be decoded as an image \(it looks like a text file\)"):
        handlers.compare_api(studio, "hi", image=str(bad))
    with pytest.raises(ValueError, match="question is empty"):
        handlers.compare_api(studio, "  ", image=CHEETAH)
    assert handlers.compare_api(studio, "hi", image=CHEETAH)["variants"]


def test_no_experts_loaded_is_explained():
    studio = Studio(ComposedModel(tiny_base(), feature_fn=file_features))
    assert handlers.catalog_message(studio) == NO_EXPERTS_HELP
    assert "no experts loaded" in studio.header()
    with pytest.raises(CompositionError, match="no experts are loaded"):
        handlers.compare_api(studio, "hi")


def test_adding_an_invalid_expert_folder_says_why(tmp_path):
    studio = make_studio()
    with pytest.raises(CompositionError, match="does not exist"):
        handlers.add_experts(studio, str(tmp_path / "nope"), [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompositionError, match="holds no expert.json"):
        handlers.add_experts(studio, str(tmp_path / "empty"), [])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "expert.json").write_text("{not json")
    with pytest.raises(CompositionError, match="broken"):
        handlers.add_experts(studio, str(broken), [])
    assert studio.expert_names == ["image", "audio", "point"]  # nothing lost


def test_selection_is_per_request_and_does_not_touch_the_shared_model():
    studio = make_studio()
    payload = handlers.compare_api(studio, "hi", image=CHEETAH)
    only_audio = handlers.settings_of(studio, short(studio, experts=["audio"]))
    with pytest.raises(CompositionError, match="none is selected for the given inputs"):
        list(handlers.compare_stream(studio, ask("hi", [CHEETAH, None, None, None], False, controls(studio, only_audio))))
    assert studio.expert_names == ["image", "audio", "point"]
    again = handlers.compare_api(studio, "hi", image=CHEETAH)
    assert [(v["name"], v["answer"]) for v in again["variants"]] == [(v["name"], v["answer"]) for v in payload["variants"]]


# --- compose timing, learn -----------------------------------------------------------------
def test_recompose_reports_time_and_fills_the_formulas():
    studio = make_studio(kinds=("decoupled", "shared"))
    values = controls(studio)
    values[lambda_name(0)] = 0.5
    values[lambda_auto_name(0)] = False
    timing, formulas = handlers.recompose(studio, ask("", [CHEETAH, None, None, None], False, values))
    assert timing.startswith("composed ") and " ms** on **cpu**" in timing
    assert "0.5\\,T_{\\text{image}}" in formulas and "D_{\\text{image-shared}}" in formulas


def test_token_routing_shows_text_tokens_and_modality_blocks():
    studio = make_studio()
    html = handlers.token_routing(studio, "DAMC", ask("What is it?", [CHEETAH, None, None, None], False, controls(studio)))
    assert "[image block: " in html and "M[image]" in html and "T[image]" in html


# --- config -------------------------------------------------------------------------------
def test_yaml_config_round_trip():
    studio = make_studio()
    settings = CompositionConfig(experts=["image", "audio"], lambdas={"image": 0.7, "audio": 0.2}, mus={"audio": 0.6},
                              methods=["ties"], method_params={"ties": {"density": 0.3}}, max_new_tokens=20, top_p=0.9)
    path = handlers.save_config(studio, controls(studio, settings))
    data = yaml.safe_load(Path(path).read_text())
    assert data["format"] == CONFIG_FORMAT and [e["name"] for e in data["experts"]] == ["image", "audio"]
    restored, message = handlers.load_config(studio, path)
    assert message == "config loaded."
    assert restored["selected"] == ["image", "audio"] and [m for n in method_names_all() for m in restored[n]] == ["ties"]
    assert [restored[n].value for n in lambda_names_all() if restored[n].visible] == [0.7, 0.2]
    assert restored[mu_name("audio")].value == 0.6
    assert restored[param_name("ties", "density")] == 0.3
    assert (restored["max_new_tokens"], restored["top_p"]) == (20, 0.9)


@pytest.mark.parametrize("text, message", [
    ("format: [unclosed", "not valid YAML at line 1"),
    ("format: something-else\n", "expected 'mllm-composition-studio/1'"),
    (f"format: {CONFIG_FORMAT}\nexperts: [{{name: smell, folder: smell}}]\n", "uses expert 'smell' (folder 'smell'), which is not loaded"),
    (f"format: {CONFIG_FORMAT}\nexperts: [image]\ncoefficients: {{lambdas: {{image: 12}}}}\n", "λ for 'image' is 12; expected"),
    (f"format: {CONFIG_FORMAT}\ngeneration: {{beams: 4}}\n", "generation key 'beams' is unknown"),
    (f"format: {CONFIG_FORMAT}\nexperts: [[1, 2]]\n", "has no name string"),
    (f"format: {CONFIG_FORMAT}\nexperts: [image]\nmethods: {{ties: [1]}}\n", "key 'ties' must be a mapping"),
])
def test_bad_configs_are_refused_clearly(text, message):
    with pytest.raises(CompositionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        studio = make_studio()
        CompositionConfig.from_yaml(text, studio.cm.experts, base_name=studio.cm.base.name)


def test_config_text_reloads_to_equal_settings():
    studio = make_studio()
    settings = CompositionConfig(experts=["point"], mus={"point": 1.5}, temperature=0.7, seed=3)
    again, notes = CompositionConfig.from_yaml(settings.to_yaml(studio.cm.experts, studio.cm.base.name), studio.cm.experts,
                                               base_name=studio.cm.base.name)
    assert again == settings and notes == []


# --- export, benchmark, examples ------------------------------------------------------------
def test_export_zip_holds_a_reloadable_checkpoint():
    studio = make_studio()
    path, message = export_zip(studio, CompositionConfig(experts=["image", "audio"]), "DAMC")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert any(n.endswith("/config.json") for n in names) and any(n.endswith("experts/audio/expert.json") for n in names)
    assert "exported **DAMC**" in message
    Path(path).unlink()


def test_benchmark_and_sweep_on_the_bundled_items():
    studio = make_studio(modalities=("image", "audio", "video", "point"))
    items = load_items("bundled examples", None, 2)
    seen = []
    fig, summary, result = run_mcub(studio, CompositionConfig(experts=studio.expert_names), items,
                                         lambda f, desc="": seen.append(f))
    assert result["items"] == 2 and "DAMC" in result["accuracy"] and seen[-1] == 1.0
    assert [t.type for t in fig.data] == ["bar"] and "2 items" in summary
    heat = run_sweep(studio, CompositionConfig(experts=studio.expert_names), items[:1], [0.5, 1.0], [1.0])
    assert heat.data[0].type == "heatmap" and len(heat.data[0].z[0]) == 2
    with pytest.raises(CompositionError, match="numbers separated by commas"):
        parse_grid("1, x", "λ scales")
    with pytest.raises(CompositionError, match="after uploading"):
        load_items("uploaded MCUB json", None, 2)


def test_examples_cover_each_modality_alone_mixed_and_mcub():
    rows = example_rows()
    given = [tuple(m for m, v in zip(MODALITY_NAMES, row[1:]) if v) for row in rows]
    for m in MODALITY_NAMES:
        assert (m,) in given
    assert any(1 < len(g) < 4 for g in given) and given.count(tuple(MODALITY_NAMES)) >= 2
    assert all(Path(v).is_file() for row in rows for v in row[1:] if v)


def test_point_views_show_a_mesh_itself_and_a_cloud_as_its_sampled_points():
    from studio.inputs import point_views

    assert point_views(None) is None
    mesh = point_views(str(MEDIA / "models3d" / "Duck.glb"))
    assert mesh.display_mode == "solid" and mesh.model_path.endswith("Duck.glb")
    assert [t.type for t in mesh.figure.data] == ["scatter3d"]
    cloud = point_views(str(Path(__file__).resolve().parent.parent / "examples" / "point-example.npy"))
    assert cloud.display_mode == "point_cloud" and cloud.model_path.endswith(".ply")
    assert Path(cloud.model_path).read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_tuning_chooses_on_validation_reports_on_test_and_fills_the_sliders():
    from studio.mcub_tab import SOURCES, run_tune, tune_items

    studio = make_studio(modalities=("image", "audio", "video", "point"))
    validation, test = tune_items(SOURCES[0], None, 6)
    assert validation and test and not {i.id for i in validation} & {i.id for i in test}
    summary, result, applied = run_tune(studio, handlers.default_settings(studio), validation, test, [0.5, 1.0], [1.0])
    n = len(load_items(SOURCES[0], None, 6))  # the bundled examples' MCUB items
    assert result["best"]["lambda_scale"] in (0.5, 1.0) and result["validation_items"] + result["test_items"] == n
    assert "disjoint test items" in summary and "sliders now hold" in summary
    k = 4  # every item has all four modalities: λ_i = scale/K
    assert applied.lambdas == {n: pytest.approx(result["best"]["lambda_scale"] / k) for n in ("image", "audio", "video", "point")}
    assert set(applied.mus.values()) == {1.0}



# --- coefficients over the layers ("advanced" boxes) ---------------------------------
def test_a_typed_schedule_locks_its_slider_and_the_plot_shows_it_per_layer():
    from studio.controls import lambda_schedule_name, mu_schedule_name

    studio = make_studio()
    values = ask("", [CHEETAH, None, None, None], False, controls(studio))
    values[lambda_schedule_name(0)] = "0, 1"
    values[mu_schedule_name("image")] = "[{filter: mlp, value: 0.5}, {value: 1}]"
    lams, mus = handlers.slider_views(studio, values)
    assert not lams[0].interactive and "over the layers" in lams[0].label and not lams[0].auto
    assert not mus[0].interactive and "over the layers" in mus[0].label
    curves = handlers.lambda_curves(studio, values)
    image = curves[0]
    layers = sorted(set(image["layer"]))
    assert set(image["modules"]) == {"attention", "MLP"}
    first, last = (image[image["layer"] == layer]["λ"].tolist() for layer in (layers[0], layers[-1]))
    assert first == [0.0, 0.0] and last == pytest.approx([1.0, 1.0])  # mergekit's gradient: the last layer is t = 1
    audio = curves[1]  # audio has no input: the plan applies none of its delta, the plot says so by its absence
    assert audio is None or set(audio["λ"]) == {0.0}
    timing, formulas = handlers.recompose(studio, values)
    assert "λ for **image** over the layers" in formulas
    settings = handlers.settings_of(studio, values)
    assert settings.lambdas["image"].plain() == [0.0, 1.0]
    assert controls(studio, settings)[lambda_schedule_name(0)] == "0, 1"  # a saved config shows the box as typed
    assert lams[0].schedule == "0, 1" and mus[0].schedule == "[{filter: mlp, value: 0.5}, {value: 1.0}]"


def test_a_number_typed_in_a_schedule_box_moves_onto_its_slider():
    """A plain number is no schedule: the slider takes it (unlocked, no longer auto) and the box empties,
    so a later slider move is not overridden by the box."""
    from studio.controls import lambda_schedule_name, mu_schedule_name

    studio = make_studio()
    values = ask("", [CHEETAH, None, None, None], False, controls(studio))
    values[lambda_schedule_name(0)] = "0.3"
    values[mu_schedule_name("image")] = "0.7"
    lams, mus = handlers.slider_views(studio, values)
    assert (lams[0].value, lams[0].interactive, lams[0].auto, lams[0].schedule) == (pytest.approx(0.3), True, False, "")
    assert (mus[0].value, mus[0].interactive, mus[0].schedule) == (pytest.approx(0.7), True, "")


def test_a_schedule_the_defaults_hold_fills_its_box():
    """A schedule shipped as a default (composition.json, or a Reset to it) shows in its box, so the
    locked slider's value is on screen and the next recompose reads it back."""
    from composition.schedules import parse_coefficient
    from studio.controls import lambda_views, mu_views

    studio = make_studio()
    names = list(studio.cm.experts)
    schedule = parse_coefficient([0, 0.5, 1], "λ", (-1.0, 2.0))
    lams = lambda_views(studio.cm.experts, names, {names[0]: schedule})
    assert not lams[0].interactive and lams[0].schedule == "0, 0.5, 1"
    modality = studio.cm.experts[names[0]].modality
    mus = mu_views(studio.cm.experts, names, {modality: schedule})
    assert [v.schedule for v in mus if v.schedule] == ["0, 0.5, 1"]


def test_a_schedule_box_that_cannot_parse_names_the_box_and_the_fix():
    from studio.controls import lambda_schedule_name

    studio = make_studio()
    values = controls(studio)
    values[lambda_schedule_name(1)] = "0, lots"
    with pytest.raises(CompositionError, match=r"λ for 'audio'.*'lots'"):
        handlers.settings_of(studio, values)


def test_a_refresh_empties_only_a_box_whose_number_moved_onto_its_slider():
    """Boxes as a refresh sends them back: a typed number empties its box (the slider holds it now); a box
    with a schedule, or one empty when the refresh was queued, is left as the user has it."""
    import app
    from studio.controls import SliderView

    number, schedule, empty = (SliderView(True, "λ", 0.3), SliderView(True, "λ", 0.5, False, False, "0, 1"),
                               SliderView(True, "λ", 0.5))
    typed = app.box_updates([number, schedule, empty], ["0.3", "0,1", ""])
    assert typed[0]["value"] == "" and "value" not in typed[1] and "value" not in typed[2]
    shown = app.box_updates([number, schedule, empty])  # defaults, Reset, a loaded config: the views' schedules
    assert [u["value"] for u in shown] == ["", "0, 1", ""]
