"""Coefficient schedules: mergekit's interpolation and filters, and the refusals a user sees."""
import pytest

from composition.errors import CompositionError
from composition.schedules import (ModuleLayout, Schedule, ScheduleEntry, interpolate, module_filters,
                                   parse_coefficient, parse_text)

RANGE = (-4.0, 4.0)
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def layout(n_layers: int) -> ModuleLayout:
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(n_layers) for p in PROJ]
    names += [f"model.layers.{i}.mlp.{p}" for i in range(n_layers) for p in MLP]
    return ModuleLayout.of(names, n_layers)


def per_layer(schedule, n_layers, module="q_proj", fallback=0.25):
    return layout(n_layers).layer_curve(schedule, fallback, module)


# mergekit's published behaviour (config.evaluate_setting with t = layer / (L - 1)), worked by hand.
@pytest.mark.parametrize("anchors, n_layers, expected", [
    ([0, 1], 5, [0, 0.25, 0.5, 0.75, 1]),
    ([0, 1, 0], 5, [0, 0.5, 1, 0.5, 0]),
    ([0, 0.3, 0.7, 1], 7, [0, 0.15, 0.3, 0.5, 0.7, 0.85, 1]),
    ([0.2, 0.4, 0.4, 0.1], 4, [0.2, 0.4, 0.4, 0.1]),  # as many layers as anchors: each layer its anchor
])
def test_interpolation_matches_mergekit(anchors, n_layers, expected):
    got = per_layer(parse_coefficient(anchors, "λ", RANGE), n_layers)
    assert got == pytest.approx(expected)


def test_one_anchor_and_one_layer_are_constants():
    assert interpolate([0.7], 0.3) == 0.7
    single = layout(1)
    assert single.position("model.layers.0.mlp.up_proj") == 1.0  # mergekit: t = 1 for a one-layer slice
    assert single.layer_curve(parse_coefficient([0, 1], "λ", RANGE), 0.0) == [1.0]


def test_filters_take_the_first_match_and_unmatched_modules_keep_the_fallback():
    s = parse_coefficient([{"filter": "self_attn", "value": [0, 1]}, {"filter": "down_proj", "value": 2}], "λ", RANGE)
    lay = layout(3)
    values = dict(zip(lay.modules, lay.values(s, 0.5, "λ")))
    assert values["model.layers.2.self_attn.k_proj"] == 1.0
    assert values["model.layers.1.self_attn.q_proj"] == 0.5  # interpolated: t = 0.5
    assert values["model.layers.0.mlp.down_proj"] == 2.0
    assert values["model.layers.0.mlp.up_proj"] == 0.5  # no entry: the fallback (the auto λ)
    catch_all = parse_coefficient([{"filter": "mlp", "value": 1}, {"filter": "*", "value": 0}], "λ", RANGE)
    assert catch_all.entries[-1].filter is None
    assert set(lay.values(catch_all, 0.5, "λ")) == {0.0, 1.0}


def test_a_number_stays_a_number_and_a_list_stays_a_schedule():
    assert parse_coefficient(0.5, "λ", RANGE) == 0.5
    constant = parse_coefficient([0.5], "λ", RANGE)
    assert isinstance(constant, Schedule) and constant.plain() == [0.5]
    entries = [{"filter": "self_attn", "value": [0.0, 1.0]}, 0.0]
    with pytest.raises(CompositionError, match="entry 2"):
        parse_coefficient(entries, "λ", RANGE)
    raw = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.0}]
    assert parse_coefficient(raw, "λ", RANGE).plain() == raw


@pytest.mark.parametrize("raw, message", [
    ([], "empty list"),
    ([0, "x"], "anchor 2 is 'x', not a number"),
    ([0, float("nan")], "finite number"),
    ([0, 9], r"in \[-4, 4\]"),
    ([{"filter": "self_attn"}], "has no 'value'"),
    ([{"filter": "", "value": 1}], "not a module name"),
    ([{"value": 1}, {"filter": "mlp", "value": 0}], "can never apply"),
    ([{"filter": "mlp", "value": 1, "weight": 2}], "key 'weight'"),
    ("half", "expected a number, a list of anchors"),
])
def test_schedules_that_cannot_apply_are_refused_by_name(raw, message):
    with pytest.raises(CompositionError, match=message) as info:
        parse_coefficient(raw, "λ for 'image'", RANGE)
    assert "λ for 'image'" in str(info.value)


def test_a_filter_that_matches_no_module_is_refused_with_the_choices():
    s = parse_coefficient([{"filter": "cross_attn", "value": 1}], "λ", RANGE)
    with pytest.raises(CompositionError, match="'cross_attn' matches no module.*self_attn, mlp, k_proj"):
        layout(2).values(s, 0.5, "λ for 'image'")
    assert module_filters(layout(1).modules)[:3] == ["self_attn", "mlp", "k_proj"]


@pytest.mark.parametrize("text, expected", [
    ("0.5", 0.5),
    ("0, 0.5, 1", Schedule((ScheduleEntry((0.0, 0.5, 1.0)),))),
    ("[0, 1]", Schedule((ScheduleEntry((0.0, 1.0)),))),
    ("[{filter: self_attn, value: [0, 1]}, {value: 0}]",
     Schedule((ScheduleEntry((0.0, 1.0), "self_attn"), ScheduleEntry((0.0,))))),
])
def test_text_forms(text, expected):
    assert parse_text(text, "λ", RANGE) == expected


@pytest.mark.parametrize("text, message", [("", "is empty"), ("0, a", "'a' is not a number"), ("[0, 1", "not valid YAML")])
def test_text_forms_refused(text, message):
    with pytest.raises(CompositionError, match=message):
        parse_text(text, "λ for 'image'", RANGE)


def test_describe():
    assert parse_coefficient([0, 0.5, 1], "λ", RANGE).describe() == "0→0.5→1 over layers"
    two = parse_coefficient([{"filter": "self_attn", "value": [0, 1]}, {"value": 0}], "λ", RANGE)
    assert two.describe() == "self_attn 0→1; elsewhere 0"


# --- in the engine: tiny random models ---------------------------------------------------
import torch  # noqa: E402

from composition.config import CompositionConfig  # noqa: E402
from composition.variants import TEXT_ROUTE, Coefficients  # noqa: E402
from tests.test_engine import QUESTION, inputs_for, make  # noqa: E402

def both_kinds(lambdas: dict) -> dict:
    """The same λ for the decoupled experts (DAMC, methods) and the shared ones (NaiveMC)."""
    return {**lambdas, **{f"{name}-shared": value for name, value in lambdas.items()}}


SCALAR = Coefficients(lambdas=both_kinds({"image": 0.5, "audio": 0.3, "point": 0.4}), mus={"audio": 0.7})
CONSTANT = Coefficients(lambdas=both_kinds({"image": [0.5], "audio": [{"value": 0.3}], "point": [0.4, 0.4]}),
                        mus={"audio": [0.7]})


@pytest.mark.parametrize("variant", ["DAMC", "NaiveMC", "weight_average", "ties", "ties@core"])
def test_a_constant_schedule_equals_the_scalar(variant):
    cm = make(kinds=("decoupled", "shared"))
    inputs = inputs_for("image", "audio", "point")
    scalar = cm.logits(QUESTION, inputs, [variant], SCALAR)[0]
    scheduled = cm.logits(QUESTION, inputs, [variant], CONSTANT)[0]
    assert torch.allclose(scalar, scheduled, atol=1e-6)
    # ... and a schedule that is not constant changes the answer, so the comparison can fail.
    rising = Coefficients(lambdas=both_kinds({"image": [0.0, 1.0], "audio": 0.3, "point": 0.4}), mus={"audio": 0.7})
    assert not torch.allclose(scalar, cm.logits(QUESTION, inputs, [variant], rising)[0], atol=1e-4)


def test_a_long_pass_gathers_each_layers_coefficients_with_the_same_numbers(monkeypatch):
    """Past ``PER_MODULE_GATHER`` a schedule's rank coefficients are gathered layer by layer, not for every
    module at once: the logits do not change."""
    import composition.routing as routing

    cm = make(kinds=("decoupled", "shared"))
    inputs = inputs_for("image", "audio", "point")
    rising = Coefficients(lambdas=both_kinds({"image": [0.0, 1.0], "audio": [0.3, 0.1], "point": 0.4}), mus={"audio": [0.7, 1]})
    at_once = cm.logits(QUESTION, inputs, ["DAMC", "NaiveMC"], rising)
    monkeypatch.setattr(routing, "PER_MODULE_GATHER", 0)
    gathers = []
    real = routing.Router.rank_coef
    monkeypatch.setattr(routing.Router, "rank_coef",
                        lambda self, *a: gathers.append(len(self._expanded)) or real(self, *a))
    by_layer = cm.logits(QUESTION, inputs, ["DAMC", "NaiveMC"], rising)
    assert gathers and set(gathers) == {0}  # nothing cached: each layer gathered its own
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(at_once, by_layer))


def _outputs(cm, coefficients, variant="DAMC"):
    """Every routed layer's input and output for a text-only question (every token on the text route)."""
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, (args[0], out)))
             for name, layer in cm.layers.items()]
    try:
        cm.logits(QUESTION, [], [variant], coefficients)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_zero_on_the_attention_modules_is_the_base_attention_there():
    cm = make()
    schedule = [{"filter": "self_attn", "value": 0}, {"value": 0.5}]
    seen = _outputs(cm, Coefficients(lambdas={"image": schedule, "audio": schedule, "point": schedule}))
    attention = [n for n in seen if ".self_attn." in n]
    assert attention and len(attention) < len(seen)
    for name, (x, y) in seen.items():
        base = cm.layers[name].base(x)
        if name in attention:
            assert torch.equal(y, base), name  # no delta at all: the base's projection
        else:
            assert not torch.allclose(y, base, atol=1e-4), name  # the MLP keeps its merge


def test_a_rising_schedule_leaves_the_first_layer_alone_and_merges_the_last_fully():
    cm = make()
    seen = _outputs(cm, Coefficients(lambdas={"image": [0, 1], "audio": [0, 0], "point": [0, 0]}))
    for name, (x, y) in seen.items():
        if ".layers.0." in name:
            assert torch.equal(y, cm.layers[name].base(x)), name  # λ = 0 for every expert at the first layer
        else:
            assert not torch.allclose(y, cm.layers[name].base(x), atol=1e-4), name
    name = next(n for n in seen if f".layers.{cm.layout.n_layers - 1}." in n)
    plan = cm.plan(set(), ["DAMC"], Coefficients(lambdas={"image": [0, 1], "audio": 0.0, "point": 0.0}))
    rv = plan.variants[0]
    slot = cm.slots.index[("image", "text")]
    assert rv.route_at(TEXT_ROUTE, cm.layers[name].position)[slot] == 1.0
    first = next(n for n in seen if ".layers.0." in n)
    assert rv.route_at(TEXT_ROUTE, cm.layers[first].position)[slot] == 0.0


@pytest.mark.parametrize("variant", ["DAMC", "ties"])
def test_materialize_honours_schedules(variant):
    cm = make(kinds=("decoupled",))
    inputs = inputs_for("image", "audio", "point")
    coef = Coefficients(lambdas={"image": [0.2, 0.9], "audio": [{"filter": "mlp", "value": [1, 0]}], "point": 0.4},
                        mus={"point": [1.0, 0.5]})
    online = cm.logits(QUESTION, inputs, [variant], coef)[0]
    cm.materialize(variant, coef, {"image", "audio", "point"})
    try:
        materialized = cm.logits(QUESTION, inputs, [variant], coef)[0]
        # Other variants stay right while a scheduled merge sits in the weights.
        other = cm.logits(QUESTION, inputs, ["expert:audio"])[0]
    finally:
        cm.dematerialize()
    assert (online - materialized).abs().max() <= 1e-5
    assert (other - cm.logits(QUESTION, inputs, ["expert:audio"])[0]).abs().max() <= 1e-4


def test_a_filter_matching_no_module_is_refused_when_planned():
    cm = make()
    with pytest.raises(CompositionError, match="λ for 'image': filter 'cross_attn' matches no module"):
        cm.plan({"image"}, ["DAMC"], Coefficients(lambdas={"image": [{"filter": "cross_attn", "value": 1}]}))
    with pytest.raises(CompositionError, match="μ for 'image': filter 'vision' matches no module"):
        cm.plan({"image"}, ["DAMC"], Coefficients(mus={"image": [{"filter": "vision", "value": 1}]}))


def test_schedules_round_trip_through_yaml_and_show_in_the_plan():
    cm = make()
    config = CompositionConfig(lambdas={"image": [0, 0.5, 1], "audio": [{"filter": "self_attn", "value": [1, 0]},
                                                                        {"value": 0.25}]},
                               mus={"point": [1, 0.5]})
    text = config.to_yaml(cm.experts)
    assert "- filter: self_attn" in text
    again, _ = CompositionConfig.from_yaml(text, cm.experts)
    assert (again.lambdas, again.mus) == (config.lambdas, config.mus)
    plan = again.plan(cm, {"image", "audio", "point"})
    damc = plan.variant("DAMC").coefficients_json()
    assert damc["lambdas"]["image"] == [0.0, 0.5, 1.0]
    assert damc["mus"]["point"] == [1.0, 0.5]
    from composition.plan import describe_coefficients
    assert "image 0→0.5→1 over layers" in describe_coefficients(damc)
    assert "audio self_attn 1→0; elsewhere 0.25" in describe_coefficients(damc)


# --- the study: DAMC under each schedule against the scalar λ, paired ----------------------
def test_the_study_runs_each_schedule_on_the_same_items_and_pairs_it_with_the_scalar(tmp_path):
    from composition.evaluation.schedule_study import (SCHEDULES, StudyFiles, run_schedule_study, study_coefficients,
                                                       table_lines)
    from composition.evaluation.stats import compare_paired
    from tests.test_interference import make_cm
    from training.mcub_synth import build_mcub_synth

    from composition.evaluation import load_mcub

    items = load_mcub(build_mcub_synth("synth-4", seed=12, n_items=3, out_dir=tmp_path / "set"))
    cm = make_cm()
    at_two = study_coefficients(cm, items, scale=2.0)
    assert at_two["scalar"].lambdas == {m: 0.5 for m in ("image", "audio", "video", "point")}  # a = 2/K, K = 4
    assert at_two["rising"].lambdas["image"].plain() == [0.0, 1.0]
    files = StudyFiles(tmp_path / "pred", "study", {"run": "test"})
    out = run_schedule_study(cm, items, batch_items=2, resamples=200, files=files, scale=2.0)
    assert list(out["schedules"]) == list(SCHEDULES) and out["scale"] == 2.0 and out["items"] == 3
    scalar = [c == "1" for c in out["schedules"]["scalar"]["outcomes"]]
    for name, entry in out["schedules"].items():
        mine = [c == "1" for c in entry["outcomes"]]
        assert entry["accuracy"] == pytest.approx(sum(mine) / 3, abs=1e-4)
        assert files.path(name).is_file()
        if name != "scalar":
            assert entry["vs_scalar"]["p_value"] == compare_paired(mine, scalar).p_value
    lines = table_lines(out)
    assert len(lines) == 1 + len(SCHEDULES) and lines[1].startswith("scalar") and "right only here" in lines[2]
    again = run_schedule_study(cm, items, batch_items=2, resamples=200, scale=2.0,
                               files=StudyFiles(tmp_path / "pred", "study", {"run": "test"}, resume=True))
    assert again["resumed_answers"] == 3 * len(SCHEDULES) and again["schedules"] == out["schedules"]
    mixed = items[:1] + load_mcub(build_mcub_synth("synth-3", seed=12, n_items=1, out_dir=tmp_path / "three"))
    with pytest.raises(CompositionError, match="items of one modality set"):
        study_coefficients(cm, mixed)


@pytest.mark.slow
def test_the_schedules_command_prints_the_study_and_refuses_an_unknown_schedule(cli, base_cache_dir, tmp_path):
    """python -m composition schedules on the bundled experts: a table line per schedule, paired with the scalar."""
    from training.mcub_synth import build_mcub_synth

    data = build_mcub_synth("synth-4", seed=21, n_items=2, out_dir=tmp_path / "set")
    result = cli("schedules", "--data", data, "--only", "rising", "--predictions-dir", tmp_path / "pred",
                 "--resamples", 200, cache=base_cache_dir, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 items (mcub-synth4.json), DAMC, a = 1/K")
    assert [line.split()[0] for line in lines[2:]] == ["scalar", "rising"] and "right only here" in lines[3]
    refused = cli("schedules", "--data", data, "--only", "zigzag", cache=base_cache_dir)
    assert refused.returncode == 2 and "--only 'zigzag' is not a schedule of the study" in refused.stderr
