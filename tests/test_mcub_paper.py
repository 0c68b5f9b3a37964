"""The paper's benchmarks as the paper runs them: released file layout, its scorers, its prompt and
predictions format, resume, the λ/μ search and the MCUB-synth layering.

Files in the exact released layout are built in-process (THUNLP-MT/ModelCompose data/test/*.json:
a "vision" key with a list of paths, a null gpt turn, a separate answers file, paths relative to
a data root), from real MCUB-synth renders.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import composition.composer as composer
import composition.evaluation.runner as mcub
import composition.evaluation.synth as synth_layout
from composition.composer import ComposedModel
from composition.errors import CompositionError
from composition.random_models import pooled_features, random_expert, tiny_base
from composition.evaluation import McubFormatError, McubItem, evaluate, load_mcub, load_question_set
from composition.evaluation.prompt import paper_message, paper_prompt_rows
from composition.evaluation.scoring import RULES, detect_family, normalize_vqa_answer, rule_for, strip_output
from composition.evaluation.tune import check_disjoint, tune_coefficients
from composition.variants import Coefficients

MODALITIES = ("image", "audio", "video", "point")
RELEASED_KEYS = {"image": "vision", "audio": "audio", "video": "video", "point": "point"}
LABEL_LINES = "image: <image>\naudio: <audio>\nvideo: <video>\npoint: <point>\n"


# --- fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from training.mcub_synth import build_mcub_synth

    out = tmp_path_factory.mktemp("synth")
    path = build_mcub_synth("synth-4", seed=5, n_items=6, out_dir=out)
    return out, json.loads(path.read_text())


def released(root: Path, synth, name: str = "MCUB-4.json", answers_name: str = "MCUB-answer.json",
             golds: list[str] | None = None, ids=None) -> tuple[Path, Path]:
    """Question + answers files in the released layout under root/data/test, media under root/media."""
    folder, items = synth
    shutil.copytree(folder / "files", root / "media", dirs_exist_ok=True)
    (root / "data" / "test").mkdir(parents=True, exist_ok=True)
    questions, answers = [], []
    for k, item in enumerate(items):
        item_id = ids[k] if ids else 1000 + k  # the released ids are integers
        question = item["conversations"][0]["value"]
        questions.append({"id": item_id,
                          "conversations": [{"from": "human", "value": LABEL_LINES + question}, {"from": "gpt", "value": None}],
                          "modal_inputs": {RELEASED_KEYS[m]: [p.replace("files/", "media/")] for m, p in item["modal_inputs"].items()}})
        gold = golds[k] if golds else item["conversations"][1]["value"]
        answers.append({"id": item_id, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": gold}]})
    q, a = root / "data" / "test" / name, root / "data" / "test" / answers_name
    q.write_text(json.dumps(questions))
    a.write_text(json.dumps(answers))
    return q, a



@pytest.fixture(scope="module")
def cm():
    base = tiny_base()
    experts = [random_expert(base, m, m, "decoupled", seed=300 + i) for i, m in enumerate(MODALITIES)]
    return ComposedModel(base, experts, feature_fn=pooled_features)


def always(cm, monkeypatch, text_for_row):
    """generate_batch replaced: row k answers text_for_row(k, table, n_routes)."""
    from composition.variants import route_names

    def fake(model, router, batch, table, config, eos, *args):
        n_routes = len(route_names())
        return [cm.base.tokenizer(text_for_row(k, table, n_routes), add_special_tokens=False)["input_ids"]
                for k in range(batch.embeds.shape[0])]

    monkeypatch.setattr(composer, "generate_batch", fake)


# --- the released layout ------------------------------------------------------------
def test_released_layout_reads_unchanged_with_a_data_root(tmp_path, synth):
    q, a = released(tmp_path, synth)
    qs = load_question_set(q, answers=a, data_root=tmp_path)
    items = qs.items
    assert len(items) == 6 and all(isinstance(i, McubItem) for i in items)
    first = items[0]
    assert first.raw_id == 1000 and first.id == "1000"  # ids as the file has them, for question_id
    assert first.modalities == MODALITIES  # "vision" is the image input
    assert first.prompt.startswith(LABEL_LINES) and "<image>" not in first.question and "image:" not in first.question
    assert first.answer == synth[1][0]["conversations"][1]["value"]  # joined from the answers file on id
    assert all(tmp_path.resolve() in p.parents for _, p in first.inputs)
    assert detect_family(qs.names, [i.answer for i in items], False) == ("mcub", "file name 'MCUB-4.json'")


def test_default_root_is_the_json_folder_then_the_working_directory(tmp_path, synth, monkeypatch):
    q, a = released(tmp_path, synth)
    monkeypatch.chdir(tmp_path / "data")  # neither the JSON's folder nor here has media/
    with pytest.raises(McubFormatError, match="was not found under the JSON file's folder or the working directory; pass --data-root"):
        load_mcub(q, answers=a)
    monkeypatch.chdir(tmp_path)  # as the paper's scripts run: from the repository root
    assert len(load_mcub(q, answers=a)) == 6


def test_answers_join_names_missing_ids_and_counts_extra_ones(tmp_path, synth):
    q, a = released(tmp_path, synth)
    answers = json.loads(a.read_text())
    a.write_text(json.dumps(answers[2:] + [{"id": 77, "conversations": [{"from": "gpt", "value": "B"}]}]))
    with pytest.raises(McubFormatError, match=r"2 question\(s\) of 'MCUB-4.json' have no answer in 'MCUB-answer.json' \(ids '1000', '1001'\)"):
        load_mcub(q, answers=a, data_root=tmp_path)
    a.write_text(json.dumps(answers + [{"id": 77, "conversations": [{"from": "gpt", "value": "B"}]}]))
    # MCUB-answer.json serves MCUB-4 and all four MCUB-3 files: answers nobody asked for are counted, not refused.
    assert load_question_set(q, answers=a, data_root=tmp_path).answers_without_question == ["77"]
    with pytest.raises(McubFormatError, match="the gold answer is missing .* pass the answers file with --answers"):
        load_mcub(q, data_root=tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda q: [{**q[0], "modal_inputs": {"vision": ["../../outside.png"]}}], "leaves the data root"),
    (lambda q: [{**q[0], "modal_inputs": {"vision": ["/etc/passwd"]}}], "is absolute and not inside the data root"),
    (lambda q: [{**q[0], "modal_inputs": {"vision": [3]}}], "must be a relative path"),
    (lambda q: [{**q[0], "modal_inputs": {"vision": []}}], "must be a relative path"),
    (lambda q: [{**q[0], "modal_inputs": {"smell": ["media/x.png"]}}], "unknown modal_inputs key 'smell'"),
    (lambda q: [{**q[0], "id": True}], "must be a non-empty string or an integer"),
    (lambda q: [{**q[0], "id": [1]}], "must be a non-empty string or an integer"),
    (lambda q: [{**q[0], "conversations": [{"from": "human", "value": None}]}], "the human turn a string"),
    (lambda q: [{**q[0], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}]}], "every turn must be"),
    (lambda q: [{**q[0], "conversations": "hello"}], "'conversations' must be a non-empty list"),
    (lambda q: {"questions": q}, "must hold a non-empty JSON list"),
    (lambda q: [q[0], q[0]], "appears more than once"),
])
def test_hostile_question_files_are_refused_clearly(tmp_path, synth, mutate, message):
    q, a = released(tmp_path, synth)
    q.write_text(json.dumps(mutate(json.loads(q.read_text()))))
    with pytest.raises(McubFormatError, match=message):
        load_mcub(q, answers=a, data_root=tmp_path)


@pytest.mark.parametrize("answers, message", [
    ({"1000": "A"}, "must hold a non-empty JSON list"),
    ([{"id": 1000, "conversations": [{"from": "gpt", "value": None}]}], "the last turn's value must be the answer text"),
    ([{"id": 1000, "conversations": []}], "'conversations' must be a non-empty list"),
    ([{"id": 1000, "conversations": [{"value": "A"}]}, {"id": 1000, "conversations": [{"value": "B"}]}], "appears twice"),
    (["A"], "must be a JSON object"),
])
def test_hostile_answers_files_are_refused_clearly(tmp_path, synth, answers, message):
    q, a = released(tmp_path, synth)
    a.write_text(json.dumps(answers))
    with pytest.raises(McubFormatError, match=message):
        load_mcub(q, answers=a, data_root=tmp_path)


def test_links_out_of_the_data_root_are_refused(tmp_path, synth, tmp_path_factory):
    q, a = released(tmp_path, synth)
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    shutil.copy(tmp_path / json.loads(q.read_text())[0]["modal_inputs"]["vision"][0], secret)
    (tmp_path / "media" / "link.png").symlink_to(secret)
    (tmp_path / "media" / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    data = json.loads(q.read_text())
    for path in ("media/link.png", "media/dirlink/secret.png"):
        q.write_text(json.dumps([{**data[0], "modal_inputs": {"vision": [path]}}]))
        with pytest.raises(McubFormatError, match="points outside the data root"):
            load_mcub(q, answers=a, data_root=tmp_path)
    with pytest.raises(McubFormatError, match="--data-root 'nope' is not a folder"):
        load_mcub(q, answers=a, data_root="nope")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, synth):
    q, a = released(tmp_path, synth)
    with pytest.raises(McubFormatError, match="MiB; files over"):
        load_mcub(q, answers=a, data_root=tmp_path, max_bytes=100)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(65 * 2**20)  # sparse: costs nothing, would be 65 MiB to read
    with pytest.raises(McubFormatError, match="'huge.json' is 65.0 MiB"):
        load_mcub(huge)
    with pytest.raises(McubFormatError, match="answers file 'huge.json' is 65.0 MiB"):
        load_mcub(q, answers=huge, data_root=tmp_path)


def test_task_families_are_detected_from_the_released_names():
    assert detect_family(["MCUB-3-image-audio-video.json", "MCUB-answer.json"], ["A"], False)[0] == "mcub"
    assert detect_family(["avqa-test_mm_video.json", "avqa-test_mm_answer.json"], ["B"], False)[0] == "avqa"
    assert detect_family(["music-avqa-test_mm_video+image+audio.json"], ["two"], False)[0] == "music-avqa"
    assert detect_family(["mine.json"], ["A", "C"], False)[0] == "multiple-choice"
    assert detect_family(["mine.json"], ["yes", "C"], False)[0] == "open-ended"
    assert detect_family(["mcub-synth4.json"], ["A"], True)[0] == "mcub-synth"
    assert rule_for("paper", "music-avqa").name == "vqa-exact" and rule_for("paper", "avqa").name == "first-char"
    assert rule_for("letter", "music-avqa").name == "letter"


# --- the paper's scorers ------------------------------------------------------------
@pytest.mark.parametrize("text, gold, first_char, letter", [
    ("C", "C", True, True), ("C. star", "C", True, True), ("  C  ", "C", True, True), ("C</s>", "C", True, True),
    ("The answer is C", "C", False, True), ("(C)", "C", False, True), ("star (C)", "C", False, True),
    ("c", "C", False, True), ("B", "C", False, False), ("", "C", False, False),
])
def test_first_char_rule_is_the_papers_and_letter_is_lenient(text, gold, first_char, letter):
    assert RULES["first-char"].correct(text, gold, ("</s>",)) is first_char
    assert RULES["letter"].correct(text, gold, ("</s>",)) is letter


@pytest.mark.parametrize("raw, normalised", [
    ("Two.", "2"), ("The guitar", "guitar"), ("yes!", "yes"), ("No", "no"), ("an apple", "apple"),
    ("dont", "don't"), ("3,000", "3000"), ("left-right", "left right"), ("It's the cello.", "it 's cello"),
    ("zero", "0"), ("none", "0"), ("3.5", "3.5"), ("a\tb\nc", "b c"),
])
def test_vqa_normalisation_follows_evalai(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_vqa_exact_rule_compares_normalised_answers():
    rule = RULES["vqa-exact"]
    assert rule.correct("Two.", "two") and rule.correct("The piano", "piano") and rule.correct("Yes</s>", "yes", ("</s>",))
    assert not rule.correct("two pianos", "two") and not rule.correct("yes, there is", "yes")
    assert strip_output("  B </s> ", ("</s>",)) == "B"


def test_paper_scoring_counts_only_the_first_character(cm, tmp_path, synth, monkeypatch):
    """Every row answers "The answer is <gold>": the letter rule gives 100 %, the paper's rule 0 %."""
    q, a = released(tmp_path, synth, golds=["B"] * 6)
    items = load_mcub(q, answers=a, data_root=tmp_path)
    always(cm, monkeypatch, lambda k, table, n: "The answer is B")
    assert evaluate(cm, items, ["DAMC"], rule=RULES["letter"]).accuracy() == {"DAMC": 1.0}
    paper = evaluate(cm, items, ["DAMC"], rule=RULES["first-char"])
    assert paper.accuracy() == {"DAMC": 0.0} and paper.rule == "first-char"
    always(cm, monkeypatch, lambda k, table, n: "B. it is a cone")
    assert evaluate(cm, items, ["DAMC"], rule=RULES["first-char"]).accuracy() == {"DAMC": 1.0}


def test_music_avqa_scoring_end_to_end(cm, tmp_path, synth, monkeypatch):
    golds = ["two", "yes", "no", "guitar", "three", "left"]
    q, a = released(tmp_path, synth, "music-avqa-test_mm_video+image+audio.json", "music-avqa-test_mm_answer.json", golds)
    qs = load_question_set(q, answers=a, data_root=tmp_path)
    family, _ = detect_family(qs.names, [i.answer for i in qs.items], False)
    answers = ["Two.", "Yes", "No, there is not", "The guitar", "3", "right"]  # right, right, wrong, right, right, wrong
    from composition.evaluation.runner import _chunks

    # The runner batches items in order of their prompt's length: row k of the one chunk is item order[k].
    (order,) = _chunks(qs.items, 6)
    always(cm, monkeypatch, lambda k, table, n: answers[order[k]])
    result = evaluate(cm, qs.items, ["DAMC"], rule=rule_for("paper", family), batch_items=6)
    assert family == "music-avqa" and result.accuracy() == {"DAMC": pytest.approx(4 / 6)}


def _paper_eval_avqa(answers_path: Path, output_path: Path) -> float:
    """eval_avqa.py's calculate_accuracy, as the paper runs it on a predictions file (re-typed for the test)."""
    gold = {a["id"]: a["conversations"][-1]["value"] for a in json.loads(answers_path.read_text())}
    outputs = [json.loads(line) for line in output_path.read_text().splitlines()]
    right = sum(1 for o in outputs if o["question_id"] in gold and o["text"][:1] == gold[o["question_id"]])
    return 100 * right / len(outputs)


def test_paper_format_predictions_score_the_same_with_the_papers_scorer(cm, tmp_path, synth, monkeypatch):
    q, a = released(tmp_path, synth)
    items = load_mcub(q, answers=a, data_root=tmp_path)
    letters = ["A", "B", "C", "D", "B", "The answer is A"]
    always(cm, monkeypatch, lambda k, table, n: letters[(k // 2) % 6])  # 2 variants per item
    result = evaluate(cm, items, ["DAMC", "expert:image"], rule=RULES["first-char"], batch_items=6)
    files = result.write_paper_predictions(tmp_path / "out", items)
    assert set(files) == {"DAMC", "expert:image"} and files["expert:image"].name == "expert-image.jsonl"
    lines = [json.loads(x) for x in files["DAMC"].read_text().splitlines()]
    assert [set(x) for x in lines] == [{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}] * 6
    assert lines[0]["question_id"] == 1000 and lines[0]["prompt"] == json.loads(q.read_text())[0]["conversations"][0]["value"]
    assert len({x["answer_id"] for x in lines}) == 6
    for variant, path in files.items():
        assert _paper_eval_avqa(a, path) == pytest.approx(100 * result.accuracy()[variant])
    monkeypatch.undo()  # real generation: other batch sizes write the same lines (resume and torchrun rely on it)
    one = evaluate(cm, items[:4], ["DAMC", "expert:image"], rule=RULES["first-char"], batch_items=4, config=mcub.DEFAULT_CONFIG)
    two = evaluate(cm, items[:4], ["DAMC", "expert:image"], rule=RULES["first-char"], batch_items=1, config=mcub.DEFAULT_CONFIG)
    assert one.paper_lines(items) == two.paper_lines(items)


# --- prompt fidelity ----------------------------------------------------------------
def test_paper_message_keeps_the_turn_verbatim():
    turn = "image: <image>\naudio: <audio>\nWhat do they share?  A. x"
    assert paper_message(turn, ["image", "audio"]) == turn
    assert paper_message(turn, ["image"]) == "image: <image>\nWhat do they share?  A. x"  # a single expert's row
    assert paper_message("What?", ["image", "point"]) == "image: <image>\npoint: <point>\nWhat?"  # the original's labels
    assert paper_message("<image>\nDescribe.", ["image"]) == "<image>\nDescribe."  # LLaVA-style, kept where it is


def test_paper_prompt_rows_are_the_verbatim_turn_in_the_template(cm, tmp_path, synth):
    q, a = released(tmp_path, synth)
    item = load_mcub(q, answers=a, data_root=tmp_path)[0]
    inputs = mcub._load_item_inputs(item)
    resolved = cm.resolve(["DAMC", "expert:audio"], Coefficients(), set(item.modalities))
    paper = paper_prompt_rows(cm, item.prompt, inputs, resolved)
    studio = cm.prompt_rows(item.question, inputs, resolved)
    assert paper[0].text == cm.base.template.format_prompt(item.prompt)
    assert paper[1].text == cm.base.template.format_prompt(item.prompt.replace("image: <image>\n", "")
                                                           .replace("video: <video>\n", "").replace("point: <point>\n", ""))
    assert paper[0].text == studio[0].text  # vicuna_v1 writes the original's labels ("point: <point>") in both modes
    assert sorted(set(paper[0].routes)) == sorted(set(studio[0].routes))  # the same modality blocks


def test_a_turn_with_more_placeholders_than_inputs_is_refused(cm, tmp_path, synth):
    q, a = released(tmp_path, synth)
    data = json.loads(q.read_text())
    data[0]["conversations"][0]["value"] = "<image>\n<image>\n" + data[0]["conversations"][0]["value"]
    q.write_text(json.dumps(data))
    items = load_mcub(q, answers=a, data_root=tmp_path)
    with pytest.raises(CompositionError, match=r"has 3 <image> placeholder\(s\) but 1 image input"):
        evaluate(cm, items, ["DAMC"], prompt="paper")


# --- resume -------------------------------------------------------------------------
def test_previous_answers_are_reused_and_only_the_rest_is_generated(cm, tmp_path, synth):
    q, a = released(tmp_path, synth)
    items = load_mcub(q, answers=a, data_root=tmp_path)
    full = evaluate(cm, items, ["DAMC", "expert:video"], rule=RULES["first-char"], batch_items=2)
    previous = {(p.item_id, p.variant): p.answer for p in full.predictions[:6]}  # the first 3 items
    chunks = []
    resumed = evaluate(cm, items, ["DAMC", "expert:video"], rule=RULES["first-char"], batch_items=2, previous=previous,
                       on_chunk=chunks.append)
    assert [p.item_id for c in chunks for p in c][::2] == [i.id for i in items[3:]]
    assert resumed.predictions == full.predictions


# --- λ/μ search -----------------------------------------------------------------------
def test_tune_picks_the_best_validation_cell_and_reports_it_on_test(cm, tmp_path, synth, monkeypatch):
    """A stand-in generator answers by the DAMC text coefficients' sum (= λ scale): scale 1.5 -> "C"."""
    from composition.variants import TEXT_ROUTE, route_names

    items = load_mcub(released(tmp_path, synth, golds=["C"] * 6)[0], answers=tmp_path / "data/test/MCUB-answer.json",
                      data_root=tmp_path)
    text = route_names().index(TEXT_ROUTE)
    by_scale = {0.5: "A", 1.0: "B", 1.5: "C"}

    def answer(k, table, n):
        s = round(float(table[k * n + text].sum()), 3)
        return by_scale.get(s, "D")

    always(cm, monkeypatch, answer)
    result = tune_coefficients(cm, items[:3], items[3:], scales=(0.5, 1.0, 1.5), mus=(0.5, 1.0), rule=RULES["first-char"])
    assert (result.best_scale, result.validation_accuracy, result.test_accuracy) == (1.5, 1.0, 1.0)
    assert result.best_mu == 1.0  # a tie on μ goes to the paper's default
    assert result.default_test_accuracy == 0.0 and len(result.grid) == 6 and result.n_test == 3
    coef = result.coefficients(cm, MODALITIES)
    assert coef.lambdas == {m: pytest.approx(1.5 / 4) for m in MODALITIES} and coef.mus == {m: 1.0 for m in MODALITIES}
    with pytest.raises(CompositionError, match="test item\\(s\\) are also validation items"):
        tune_coefficients(cm, items[:3], items[2:], scales=(1.0,), mus=(1.0,))
    check_disjoint(items[:3], items[3:])


# --- MCUB-synth: built by training, found by composition -------------------------------
def test_composition_never_imports_training():
    root = Path(__file__).resolve().parent.parent / "composition"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+training\b", p.read_text(), re.M)]
    assert offenders == []


def test_synth_sets_are_found_where_training_builds_them(tmp_path):
    from training.mcub_synth import SYNTH3_SUBSETS, build_mcub_synth, main, set_name

    assert SYNTH3_SUBSETS == synth_layout.SYNTH3_SUBSETS
    assert [f"mcub-{set_name('synth-3', s)}.json" for s in SYNTH3_SUBSETS] == list(synth_layout.synth_file_names("synth-3").values())
    with pytest.raises(synth_layout.SynthSetMissing) as missing:
        synth_layout.synth_sets("synth-4", seed=9, n_items=2, cache_dir=tmp_path)
    command = missing.value.args[0].split("build it with: ")[1]
    assert command.startswith("python -m training.mcub_synth --kind synth-4 --seed 9 --n-items 2 --out ")
    main(command.split("python -m training.mcub_synth ")[1].split() + ["--workers", "1"])  # the named command, run
    assert len(load_mcub(synth_layout.synth_sets("synth-4", seed=9, n_items=2, cache_dir=tmp_path)[synth_layout.ALL_FOUR])) == 2
    build_mcub_synth("synth-4", seed=9, n_items=1, out_dir=tmp_path / "seed9-n3")  # wrong size: not silently used
    with pytest.raises(synth_layout.SynthSetMissing, match="has 1 items, not 3"):
        synth_layout.synth_sets("synth-4", seed=9, n_items=3, cache_dir=tmp_path)
    with pytest.raises(synth_layout.SynthSetMissing, match="--kind synth-3 --subset all --seed 9"):
        synth_layout.synth_sets("synth-3", seed=9, n_items=2, cache_dir=tmp_path)
