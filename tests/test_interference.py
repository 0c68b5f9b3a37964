"""The interference curve (issue 36): the shared composition and DAMC at λ = s·(1/K) on the same items, paired
statistics, resuming, the plot, the CLI, and the app's plain functions (studio/interference.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from composition.composer import ComposedModel
from composition.errors import CompositionError
from composition.evaluation import load_mcub
from composition.evaluation.interference import (DECOUPLED, MODALITY_CHECK, ROUTE_CHECK, SHARED, RunFiles, check_scales,
                                                 plot_png, run_interference, scale_parts, scale_specs, table_lines)
from composition.evaluation.stats import compare_paired
from composition.random_models import pooled_features, random_expert, tiny_base

MODALITIES = ("image", "audio", "video", "point")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    from training.mcub_synth import build_mcub_synth

    out = tmp_path_factory.mktemp("interference")
    return load_mcub(build_mcub_synth("synth-4", seed=11, n_items=3, out_dir=out))


def make_cm(kinds=("decoupled", "shared")) -> ComposedModel:
    base = tiny_base()
    experts = [random_expert(base, m + ("" if kind == "decoupled" else "-shared"), m, kind, seed=300 + 10 * i + j)
               for j, kind in enumerate(kinds) for i, m in enumerate(MODALITIES)]
    return ComposedModel(base, experts, feature_fn=pooled_features)


@pytest.fixture(scope="module")
def cm():
    return make_cm()


@pytest.fixture(scope="module")
def run(cm, items):
    return run_interference(cm, items, scales=(1, 2), batch_items=2, resamples=500, data={"data": "test"})


def test_each_scale_runs_both_kinds_on_the_same_items_with_s_over_k(run, items):
    assert [p.scale for p in run.points] == [1.0, 2.0] and run.item_ids == [i.id for i in items]
    one, two = run.points
    assert list(one.accuracy) == [SHARED, DECOUPLED]  # at s = 1 the route check is NaiveMC itself: not run
    assert list(two.accuracy) == [SHARED, DECOUPLED, ROUTE_CHECK]
    assert two.coefficients[SHARED]["lambdas"] == {f"{m}-shared": 0.5 for m in ("audio", "image", "point", "video")}
    assert set(two.coefficients[DECOUPLED]["lambdas"].values()) == {0.5} and two.coefficients[DECOUPLED]["lambda_scale"] == 2.0
    assert two.coefficients[ROUTE_CHECK]["modality_lambdas"] == {f"{m}-shared": 0.25 for m in ("audio", "image", "point", "video")}
    assert set(one.coefficients[SHARED]["lambdas"].values()) == {0.25} and "lambda_scale" not in one.coefficients[SHARED]


def test_the_statistics_are_those_of_the_outcomes(run):
    for point in run.points:
        outcomes = {v: [c == "1" for c in s] for v, s in point.outcomes.items()}
        assert all(len(o) == 3 for o in outcomes.values())
        assert point.accuracy == {v: sum(o) / 3 for v, o in outcomes.items()}
        assert point.paired == compare_paired(outcomes[DECOUPLED], outcomes[SHARED])
        for v, (lo, hi) in point.interval.items():
            assert 0 <= lo <= point.accuracy[v] <= hi <= 1
        if ROUTE_CHECK in outcomes:
            check = point.route_check["text_only"]
            assert check["vs_shared"] == compare_paired(outcomes[ROUTE_CHECK], outcomes[SHARED])
            assert check["vs_damc"] == compare_paired(outcomes[DECOUPLED], outcomes[ROUTE_CHECK])
        named = point.named.outcomes
        fails = [i for i, (d, s) in enumerate(zip(outcomes[DECOUPLED], outcomes[SHARED]))
                 if d and not s and named[DECOUPLED][i] == "1"]  # DAMC right in full
        fails.sort(key=lambda i: named[SHARED][i] == "1")  # a wrong option named comes first
        assert [e["id"] for e in point.shared_fails] == [run.item_ids[i] for i in fails][:3]


def test_the_option_an_answer_names_is_scored_apart_from_its_letter(run, items):
    from dataclasses import replace

    from composition.evaluation.interference import named_option, names_gold, synth_options

    item = items[0]
    options = synth_options(item)
    assert list(options) == ["A", "B", "C", "D"] and item.answer in options
    gold, other = options[item.answer], next(v for k, v in options.items() if k != item.answer)
    wrong_letter = next(k for k in options if k != item.answer)
    assert names_gold(item, f"{gold} ({wrong_letter})") is True  # the right option, the wrong letter
    assert names_gold(item, f"{other} ({item.answer})") is False  # the right letter, another option named
    assert names_gold(item, "no idea") is False
    assert named_option("a diamond-ish cone (C)", ["cone", "diamond"]) == "diamond"  # the first named wins
    assert named_option("conehead", ["cone"]) is None  # whole words only
    assert synth_options(replace(item, synth=False)) is None  # other files' options are free text: not read
    for point in run.points:
        named = {v: [c == "1" for c in s] for v, s in point.named.outcomes.items()}
        assert point.named.accuracy == {v: sum(o) / 3 for v, o in named.items()}
        assert point.named.paired == compare_paired(named[DECOUPLED], named[SHARED])
        if ROUTE_CHECK in named:
            assert point.named.checks["text_only"]["vs_shared"] == compare_paired(named[ROUTE_CHECK], named[SHARED])
    assert run.to_json()["points"][0]["named"]["damc_vs_shared"]["both"] >= 0
    assert set(run.to_json()["points"][1]["named"]["route_check"]) == {"text_only"}


def test_the_json_holds_the_curve_and_says_retention_was_not_measured(run):
    data = json.loads(json.dumps(run.to_json()))
    assert data["items"] == 3 and data["retention"] is None and "--retention measures it" in data["retention_note"]
    point = data["points"][1]
    assert point["lambda_per_expert"][DECOUPLED] == {m: 0.5 for m in ("audio", "image", "point", "video")}
    d = point["damc_vs_shared"]
    assert (d["right_only_damc"], d["right_only_shared"]) == (d["only_a"], d["only_b"])
    assert data["criterion"]["scale"] == 2.0 and data["criterion"]["holds"] == (
        d["difference"] >= 0.1 and d["p_value"] < 0.05)
    lines = table_lines(data)
    assert len(lines) == 3 and lines[2].split()[:2] == ["2", "0.5"]
    assert "—" in lines[1] and "—" not in lines[2]  # the route check only where it ran


def test_synth_items_are_answered_whole_for_the_named_option(cm, items, monkeypatch):
    """The named option is read after the letter ("C. star"): the letter's streaming stop must not cut the
    answers of a run that scores it; items without options keep the stop."""
    import dataclasses

    stops = []
    real = cm.generate_rows
    monkeypatch.setattr(cm, "generate_rows", lambda *a, **k: stops.append(k.get("should_stop")) or real(*a, **k))
    run_interference(cm, items, scales=(2,), batch_items=3, resamples=100)
    assert stops and all(stop is None for stop in stops)
    stops.clear()
    plain = [dataclasses.replace(item, synth=False) for item in items]
    run_interference(cm, plain, scales=(2,), batch_items=3, resamples=100)
    assert stops and all(stop is not None for stop in stops)


def test_a_stopped_run_resumes_without_answering_again(cm, items, tmp_path, monkeypatch):
    files = RunFiles(tmp_path, "t", {"experts": {"x": "1"}})
    first = run_interference(cm, items, scales=(1.5,), batch_items=2, resamples=500, files=files)
    path = files.path(1.5)
    assert path.name == "t-interference-s1.5-predictions.jsonl" and len(path.read_text().splitlines()) == 9
    assert json.loads(path.with_name(path.name + ".settings.json").read_text())["lambda_scale"] == 1.5
    # Keep only the first item's answers (a run killed after one chunk), then resume: only the rest is generated.
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    calls = []
    real = cm.generate_rows
    monkeypatch.setattr(cm, "generate_rows", lambda requests, *a, **k: calls.append(len(requests)) or real(requests, *a, **k))
    resumed = run_interference(cm, items, scales=(1.5,), batch_items=2, resamples=500,
                               files=RunFiles(tmp_path, "t", {"experts": {"x": "1"}}, resume=True))
    assert calls == [2] and resumed.resumed_answers == 3
    assert resumed.points[0].outcomes == first.points[0].outcomes and len(path.read_text().splitlines()) == 9
    with pytest.raises(CompositionError, match="written with other settings"):
        run_interference(cm, items, scales=(1.5,), files=RunFiles(tmp_path, "t", {"experts": {"x": "2"}}, resume=True))


def test_the_modality_route_check_joins_a_finished_run_in_its_own_file(cm, items, tmp_path, monkeypatch):
    settings = {"experts": {"x": "1"}}
    first = run_interference(cm, items, scales=(1, 3), batch_items=3, resamples=500, files=RunFiles(tmp_path, "t", settings))
    calls = []
    real = cm.generate_rows
    monkeypatch.setattr(cm, "generate_rows", lambda requests, plan, *a, **k: calls.append(plan.names) or real(requests, plan, *a, **k))
    more = run_interference(cm, items, scales=(1, 3), batch_items=3, resamples=500, modality_checks_at=[3],
                            files=RunFiles(tmp_path, "t", settings, resume=True))
    assert calls == [[MODALITY_CHECK]]  # the main batches come from their files; only the new check is generated
    assert (tmp_path / "t-interference-s3-modality-predictions.jsonl").is_file()
    one, three = more.points
    assert list(one.accuracy) == [SHARED, DECOUPLED] and list(three.accuracy) == [SHARED, DECOUPLED, ROUTE_CHECK, MODALITY_CHECK]
    assert three.outcomes[SHARED] == first.points[1].outcomes[SHARED]
    assert set(three.route_check) == {"text_only", "modality_only"}
    assert three.coefficients[MODALITY_CHECK]["modality_lambdas"] == {f"{m}-shared": 0.75 for m in ("audio", "image", "point", "video")}
    assert "shared, λ modality only" in table_lines(more.to_json())[0]
    assert list(scale_parts(2.0, modality_checks_at=[4.0])) == [""] and list(scale_parts(1.0, modality_checks_at=[1])) == [""]
    assert [s.name for s in scale_parts(2.0, False, [2.0])["modality"]] == [MODALITY_CHECK]


def test_both_kinds_are_needed_and_scales_are_checked(items):
    with pytest.raises(CompositionError, match="NaiveMC merges experts trained with shared deltas"):
        run_interference(make_cm(("decoupled",)), items, scales=(1,))
    with pytest.raises(CompositionError, match="scale 2 is given twice"):
        check_scales([1, 2, 2.0])
    with pytest.raises(CompositionError, match="lambda_scale is 5.0"):
        check_scales([5.0])
    assert [s.name for s in scale_specs(1.0)] == ["NaiveMC", "DAMC"]
    assert [s.name for s in scale_specs(3.0, route_check=False)] == ["NaiveMC", "DAMC"]


def test_the_plot_is_a_png_and_stored_runs_replot(run, tmp_path, capsys):
    from composition.cli import main

    path = plot_png([run.to_json(), run.to_json()], tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = tmp_path / "run.json"
    stored.write_text(json.dumps(run.to_json()))
    assert main(["interference", "--replot", str(stored), str(stored), "--plot", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["interference", "--replot", str(tmp_path / "curve.png"), "--plot", str(tmp_path / "x.png")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err


def test_the_cli_refuses_experts_of_one_kind_before_loading_anything(tmp_path, items, capsys):
    from composition.cli import main
    from composition.random_models import save_random_experts

    experts = save_random_experts(tiny_base(), tmp_path / "experts", ("image", "audio"))
    data = items[0].inputs[0][1].parent.parent / "mcub-synth4.json"
    assert main(["interference", "--data", str(data), "--experts", str(experts)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs shared and decoupled experts; the folders given hold only decoupled" in err[0]
    assert main(["interference", "--data", str(data), "--scales", "1,9"]) == 2
    assert "lambda_scale is 9.0" in capsys.readouterr().err
    assert main(["interference", "--data", str(data), "--scales", "1,2", "--modality-check-at", "3"]) == 2
    assert "--modality-check-at 3 names a scale that --scales 1,2 does not run" in capsys.readouterr().err


# --- the app's plain functions --------------------------------------------------------
def test_retention_at_each_scale_is_that_scales_compositions_against_the_base(cm, items):
    """With retention, each scale asks the text-only set of both compositions at that scale's λ: the same
    numbers as measure_retention with those coefficients, and the table and summary show the share kept."""
    from composition.evaluation.retention import measure_retention
    from composition.variants import Coefficients
    from studio.interference import summary_markdown

    result = run_interference(cm, items[:1], scales=(1, 2), route_check=False, batch_items=1, resamples=200,
                              retention=True)
    direct = measure_retention(cm, [SHARED, DECOUPLED], coefficients=Coefficients(lambda_scale=2.0)).to_json()
    data = result.to_json()
    assert data["retention"]["items"] == sum(direct["parts"].values()) and data["retention_note"] is None
    two = data["points"][1]["retention"]
    assert two["variants"][DECOUPLED]["accuracy"] == direct["variants"][DECOUPLED]["accuracy"]
    assert data["retention"]["kept"]["2"] == {v: s["retention"] for v, s in two["variants"].items()}
    assert set(two["variants"]) == {SHARED, DECOUPLED} and two["base"] == direct["base"]
    assert "keeps base text DAMC / shared" in table_lines(data)[0]
    assert "What a larger λ costs the base's own text skills" in summary_markdown(data)


def test_stored_curves_figure_and_summary(run, tmp_path):
    from studio import interference as learn

    (tmp_path / "interference-seed1.json").write_text(json.dumps(run.to_json()))
    assert learn.stored_runs(tmp_path) == ["interference-seed1"]
    fig, summary = learn.stored_curves(folder=tmp_path)
    names = [t.name for t in fig.data]
    assert len(names) == 5 and names[0].startswith("decoupled") and names[1].startswith("shared")
    assert names[3:] == ["DAMC: names the right option (before its letter)",
                         "shared: names the right option (before its letter)"]
    assert list(fig.data[3].y) == [100 * p.named.accuracy[DECOUPLED] for p in run.points]
    damc = fig.data[0]
    assert list(damc.x) == [1.0, 2.0] and list(damc.y) == [100 * p.accuracy[DECOUPLED] for p in run.points]
    assert list(damc.error_y.array) == pytest.approx([100 * (p.interval[DECOUPLED][1] - p.accuracy[DECOUPLED])
                                                       for p in run.points])
    assert "| 2 |" in summary and "McNemar p" in summary and "not measured in this run" in summary
    assert "names the right option: DAMC / shared" in summary
    with pytest.raises(CompositionError, match="stored run 'nope' is unknown"):
        learn.load_run("nope", tmp_path)
    with pytest.raises(CompositionError, match="no stored interference run"):
        learn.load_run(None, tmp_path / "empty")


def test_failure_examples_give_both_answers_and_the_files(run, items):
    from studio import interference as learn

    data = run.to_json()
    fake = {"id": items[0].id, "question": "which?", "gold": "B", "answers": {SHARED: "C", DECOUPLED: "B"},
            "inputs": {"image": str(items[0].inputs[0][1]), "audio": ".cache/not-here/x.wav"}}
    data["points"][1]["shared_fails_damc_right"] = [fake]
    data["data"] = {"data": "synth-4", "seed": 6173, "synth_items": 200}
    [ex] = learn.failure_examples(data, scale=2)
    assert (ex["shared_answer"], ex["damc_answer"], ex["gold"]) == ("C", "B", "B")
    assert ex["inputs"]["image"] == str(items[0].inputs[0][1]) and ex["inputs"]["audio"] is None
    assert "python -m training.mcub_synth --kind synth-4 --seed 6173 --n-items 200" in ex["note"]
    media = learn.example_media({**ex, "inputs": {**ex["inputs"], "point": str(REPO / "examples" / "point-example.npy")}})
    assert media["image"] == ex["inputs"]["image"] and media["audio"] is None and len(media["point"].data) >= 1
    text = learn.failure_examples_markdown([ex])
    assert "shared merge: `C` ✗" in text and "DAMC: `B` ✓" in text
    assert "No item" in learn.failure_examples_markdown([])
    with pytest.raises(CompositionError, match="no point at s = 3"):
        learn.failure_examples(data, scale=3)


def test_copied_examples_are_shown_where_the_set_is_not_built(run, items, tmp_path, monkeypatch):
    """--copy-examples puts the stored runs' example files where the app looks when the set is missing."""
    from composition.discovery import workspace_root
    from composition.evaluation.interference import copy_examples
    from studio import interference as learn

    source = items[0].inputs[0][1]
    shown = ".cache/mcub-synth/seed1-n3/files/" + source.name
    (workspace_root() / ".cache/mcub-synth/seed1-n3/files").mkdir(parents=True, exist_ok=True)
    here = workspace_root() / shown
    here.write_bytes(source.read_bytes())
    data = run.to_json()
    data["points"][1]["shared_fails_damc_right"] = [{"id": "x", "question": "q", "gold": "B", "answers": {},
                                                     "inputs": {"image": shown}}]
    try:
        written = copy_examples([data], tmp_path / "copies")
    finally:
        here.unlink()
    assert written == [tmp_path / "copies" / "mcub-synth" / "seed1-n3" / "files" / source.name]
    assert written[0].read_bytes() == source.read_bytes()
    monkeypatch.setattr(learn, "EXAMPLE_COPIES", tmp_path / "copies")
    [ex] = learn.failure_examples(data, scale=2)
    assert ex["inputs"]["image"] == str(written[0]) and ex["note"] == ""
    with pytest.raises(CompositionError, match="is not on this machine"):
        copy_examples([data], tmp_path / "again")


def test_rerun_reports_progress_and_returns_a_run(cm):
    from studio import interference as learn
    from studio.session import Studio

    seen = []
    from studio.mcub_tab import SOURCES, load_items

    fig, summary, run = learn.rerun_curves(Studio(cm), 2, progress=lambda f, desc="": seen.append((f, desc)),
                                           scales=(1, 2), items=load_items(SOURCES[0], None, 2))
    assert run["items"] == 2 and [p["scale"] for p in run["points"]] == [1.0, 2.0] and len(fig.data) == 4
    assert seen[-1][0] == 1.0 and "item runs" in seen[-1][1] and all(0 < f <= 1 for f, _ in seen)
    assert isinstance(learn.failure_examples(run, scale=2), list)
    with pytest.raises(CompositionError, match="items=0"):
        learn.rerun_curves(Studio(cm), 0)
    with pytest.raises(CompositionError, match="python -m training.mcub_synth --kind synth-4 --seed 987"):
        learn.rerun_curves(Studio(cm), 2, seed=987)  # a set not built here: the message names the build


def test_the_stored_runs_in_the_repository_are_valid():
    from studio import interference as learn

    for name in learn.stored_runs():
        run = learn.load_run(name)
        assert run["format"] == "mllm-composition-studio/interference/1" and run["items"] == len(run["item_ids"])
        assert [p["scale"] for p in run["points"]][:1] == [1.0]
        for p in run["points"]:
            d = p["damc_vs_shared"]
            assert d["both"] + d["only_a"] + d["only_b"] + d["neither"] == run["items"]


@pytest.mark.slow
def test_cli_runs_the_curve_with_the_bundled_experts_and_resumes(cli, base_cache_dir, items, tmp_path):
    data = items[0].inputs[0][1].parent.parent / "mcub-synth4.json"
    args = ("interference", "--data", data, "--limit", 2, "--scales", "1,2", "--predictions-dir", tmp_path,
            "--resamples", 200, "--json")
    result = cli(*args, cache=base_cache_dir, timeout=900)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["items"] == 2 and [p["scale"] for p in run["points"]] == [1.0, 2.0] and run["retention"] is None
    assert set(run["points"][1]["lambda_per_expert"]["NaiveMC"].values()) == {0.5}  # K = 4, s = 2
    assert (tmp_path / "mcub-synth4-interference.png").is_file()
    assert [Path(p).name for p in run["predictions"]] == ["mcub-synth4-interference-s1-predictions.jsonl",
                                                          "mcub-synth4-interference-s2-predictions.jsonl"]
    again = cli(*args, "--resume", cache=base_cache_dir, timeout=900)
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["resumed_answers"] == 2 * 2 + 2 * 3 and resumed["points"] == run["points"]
    table = cli(*args[:-1], "--resume", cache=base_cache_dir, timeout=900)
    assert "right only DAMC/shared" in table.stdout and "text-only retention: not measured" in table.stdout
