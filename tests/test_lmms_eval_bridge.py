"""The lmms-eval bridge (optional extra): the model class, the MCUB task folder, the command, and agreement
with the studio's own runner on the same items and variant."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval", reason="the lmms-eval extra is not installed (pip install '.[lmms-eval]')")

from composition.composer import ComposedModel  # noqa: E402
from composition.errors import CompositionError  # noqa: E402
from composition.evaluation import evaluate, load_mcub  # noqa: E402
from composition.evaluation.lmms_bridge import MODEL_NAME, TASKS_DIR, register  # noqa: E402
from composition.evaluation.lmms_bridge.args import BridgeArgs, parse_mapping  # noqa: E402
from composition.evaluation.lmms_bridge.model import McStudio  # noqa: E402
from composition.generate import GenerationConfig  # noqa: E402
from composition.random_models import pooled_features, random_expert, tiny_base  # noqa: E402
from tests.cli_runner import run_cli  # noqa: E402

MODALITIES = ("image", "audio", "video", "point")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mcub" / "mcub-synth4.json"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """lmms-eval loads the task's local file through datasets: offline, with a cache of the test's own."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory) -> Path:
    """Six MCUB-synth-4 items with real files (training.mcub_synth, seed 5)."""
    from training.mcub_synth import build_mcub_synth

    out = tmp_path_factory.mktemp("synth")
    build_mcub_synth("synth-4", seed=5, n_items=6, out_dir=out)
    return out / "mcub-synth4.json"


@pytest.fixture(scope="module")
def tiny():
    base = tiny_base()
    experts = [random_expert(base, m, m, "decoupled", seed=400 + i) for i, m in enumerate(MODALITIES)]
    return ComposedModel(base, experts, feature_fn=pooled_features)


def run_task(lm, task: str, data: Path, monkeypatch, limit=None) -> dict:
    """lmms-eval's own evaluator on ``task`` (the studio's task folder), samples logged."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    monkeypatch.setenv("MCUB_SYNTH_DATA", str(data))
    return simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(TASKS_DIR)), log_samples=True,
                           limit=limit, bootstrap_iters=0)


def response(sample: dict) -> str:
    """A logged sample's answer (a list of one in memory, the string in the samples file)."""
    r = sample["filtered_resps"]
    return r[0] if isinstance(r, list) else r


# --- model arguments ----------------------------------------------------------------
def test_model_args_parse_and_refuse_with_the_fix():
    assert parse_mapping("image:0.5;audio:0.25", "lambdas") == {"image": 0.5, "audio": 0.25}
    assert parse_mapping('{"image": 0.5, "video": 1}', "lambdas") == {"image": 0.5, "video": 1.0}
    assert parse_mapping(None, "mus") == {}
    args = BridgeArgs.from_model_args(variant="expert:image", lambdas="image:0.3", lambda_scale=1, batch_size="4",
                                      merge_all_experts="true")
    assert (args.variant, args.lambdas, args.batch_size, args.merge_all_experts, args.prompt) == (
        "expert:image", {"image": 0.3}, 4, True, "auto")
    with pytest.raises(CompositionError, match="unknown model argument 'pretrained'"):
        BridgeArgs.from_model_args(pretrained="x")
    with pytest.raises(CompositionError, match="not NAME:VALUE"):
        parse_mapping("image0.5", "lambdas")
    with pytest.raises(CompositionError, match="expected a number"):
        parse_mapping("image:high", "lambdas")
    with pytest.raises(CompositionError, match="batch_size"):
        BridgeArgs.from_model_args(batch_size=0)
    with pytest.raises(CompositionError, match="prompt="):
        BridgeArgs.from_model_args(prompt="fancy")
    with pytest.raises(CompositionError, match="does not exist"):
        BridgeArgs.from_model_args(experts="/nonexistent/experts")


def test_the_command_passes_lmms_eval_its_own_arguments():
    from composition.cli.lmms_eval import lmms_eval_argv, split_own

    env, rest = split_own(["--mcub_synth_data", "x.json", "--tasks", "mcub_synth", "--mcub_data=y.json", "--limit", "2"])
    assert rest == ["--tasks", "mcub_synth", "--limit", "2"]
    assert Path(env["MCUB_SYNTH_DATA"]).name == "x.json" and Path(env["MCUB_DATA"]).is_absolute()
    argv = lmms_eval_argv(["--model_args", "variant=DAMC", "--tasks", "mcub_synth"], "/tasks")
    assert argv[:2] == ["--model", "mcstudio"] and argv[argv.index("--include_path") + 1] == "/tasks"
    assert argv[argv.index("--batch_size") + 1] == "8"
    mine = lmms_eval_argv(["--model", "dummy", "--include_path", "/mine"], "/tasks")
    assert mine == ["--model", "dummy", "--include_path", "/mine"]  # what the user said stays
    assert "8" not in lmms_eval_argv(["-b", "4"], "/tasks")  # lmms-eval's short flag is the user's batch size too
    for model_args in (["--model_args", "variant=DAMC,batch_size=4"], ["--model_args=device=cuda"]):
        with pytest.raises(CompositionError, match=r"lmms-eval gives the model its own --(batch_size|device)"):
            lmms_eval_argv(model_args, "/tasks")


def test_the_class_is_registered_with_lmms_eval():
    from lmms_eval import models
    from lmms_eval.api import registry

    register()
    assert registry.MODEL_REGISTRY[MODEL_NAME] is McStudio  # lmms-eval's own register_model
    assert models.get_model(MODEL_NAME) is McStudio  # 0.7's manifest registry, what --model resolves through


@pytest.mark.slow
def test_plain_lmms_eval_finds_the_class_through_the_entry_point():
    """A fresh lmms-eval process (nothing of the studio imported) resolves --model mcstudio: the project
    declares lmms-eval's "lmms_eval.models" entry point (pyproject.toml)."""
    import subprocess
    import sys

    code = "from lmms_eval import models; print(models.get_model('mcstudio').__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "composition.evaluation.lmms_bridge.model"


# --- the task folder ----------------------------------------------------------------
def test_the_task_folder_reads_mcub_files_and_scores_with_the_studios_rules(monkeypatch):
    from lmms_eval.tasks import TaskManager

    import importlib.util

    manager = TaskManager(include_path=str(TASKS_DIR))
    assert {"mcub", "mcub_synth", "mcub_synth_mc"} <= set(manager.all_tasks)
    spec = importlib.util.spec_from_file_location("mcub_task_utils", TASKS_DIR / "mcub" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    monkeypatch.setenv("MCUB_SYNTH_DATA", str(EXAMPLES))
    docs = utils.mcub_synth_docs(None)
    items = load_mcub(EXAMPLES)
    assert [d["id"] for d in docs] == [i.id for i in items] and docs[0]["answer"] == items[0].answer
    assert [v["modality"] for v in utils.doc_to_visual(docs[0])] == list(MODALITIES)
    assert utils.doc_to_choice(docs[0]) == ["ball (A)", "cone (B)", "diamond (C)", "ring (D)"]
    assert utils.doc_to_target_index(docs[0]) == 0
    assert utils.process_letter(docs[0], ["ball (A)"]) == {"accuracy": 1.0}
    assert utils.process_letter(docs[0], ["cone (B)"]) == {"accuracy": 0.0}
    assert utils.process_first_char({"answer": "A"}, [" A. ball"]) == {"accuracy": 1.0}
    assert utils.process_first_char({"answer": "A"}, ["The answer is A"]) == {"accuracy": 0.0}  # the paper's rule
    monkeypatch.delenv("MCUB_DATA", raising=False)
    with pytest.raises(CompositionError, match="MCUB_DATA"):
        utils.mcub_docs(None)


# --- the model on a tiny composition ------------------------------------------------
def test_generate_until_through_lmms_eval_equals_the_studio_runner(tiny, synth_file, monkeypatch):
    items = load_mcub(synth_file)
    for variant in ("DAMC", "expert:audio"):
        lm = McStudio(composed_model=tiny, variant=variant, batch_size=4)
        out = run_task(lm, "mcub_synth", synth_file, monkeypatch)
        studio = evaluate(tiny, items, [variant], config=GenerationConfig(max_new_tokens=4), batch_items=8)
        samples = sorted(out["samples"]["mcub_synth"], key=lambda s: s["doc_id"])
        assert [response(s) for s in samples] == [p.answer for p in studio.predictions]
        assert [s["accuracy"] for s in samples] == [float(p.correct) for p in studio.predictions]
        assert out["results"]["mcub_synth"]["accuracy,none"] == pytest.approx(studio.accuracy()[variant])


def test_loglikelihood_is_the_engines_next_token_probability(tiny, monkeypatch):
    import torch

    lm = McStudio(composed_model=tiny, variant="DAMC", batch_size=2)
    monkeypatch.setattr(lm, "task_dict", {"t": {"test": [{"x": 1}]}})

    class Request:
        def __init__(self, context, continuation):
            self.args = (context, continuation, None, 0, "t", "test")

    tok = tiny.base.tokenizer
    question = "What is in common?"
    one = tok.decode(tok(" A", add_special_tokens=False)["input_ids"][:1])
    wrapped = lm.loglikelihood([Request(question, one), Request(question, " A B C"), Request(question, "")])
    results = [r.text for r in wrapped]  # (logprob, greedy), wrapped for lmms-eval 0.7's evaluator
    # The first token's probability from the engine's own prompt logits (prefill, not generation).
    logits = tiny.logits(question, [], ["DAMC"])[0][-1]
    first = tok(one, add_special_tokens=False)["input_ids"][0]
    assert results[0][0] == pytest.approx(float(torch.log_softmax(logits, -1)[first]), abs=1e-4)
    assert results[0][1] == (int(logits.argmax()) == first)
    assert results[1][0] < 0 and results[0][0] < 0
    assert results[2] == (0.0, True)  # an empty continuation is certain
    with pytest.raises(CompositionError, match="multi-round"):
        lm.generate_until_multi_round([])


def test_multiple_choice_task_runs_on_loglikelihood(tiny, synth_file, monkeypatch):
    lm = McStudio(composed_model=tiny, variant="DAMC", batch_size=8)
    out = run_task(lm, "mcub_synth_mc", synth_file, monkeypatch, limit=2)
    samples = out["samples"]["mcub_synth_mc"]
    assert len(samples) == 2 and all(len(s["resps"]) == 4 for s in samples)  # one loglikelihood per option
    acc = out["results"]["mcub_synth_mc"]["acc,none"]
    best = [max(range(4), key=lambda k: s["resps"][k][0][0]) for s in samples]
    assert acc == pytest.approx(sum(b == s["target"] for b, s in zip(best, samples)) / 2)


# --- the bundled experts, as CI runs it -----------------------------------------------
@pytest.fixture(scope="module")
def bundled(base_cache_dir):
    from composition.base_llm import load_base_llm
    from composition.discovery import BUNDLED_EXPERTS, scan_experts

    cm = ComposedModel(load_base_llm(cache_dir=base_cache_dir))
    for entry in scan_experts([BUNDLED_EXPERTS]):
        cm.load_expert(entry.folder)
    yield cm
    for name in list(cm.experts):
        cm.remove_expert(name)


@pytest.mark.slow
def test_lmms_eval_on_mcub_synth_agrees_with_the_studio_runner_on_the_bundled_experts(bundled, synth_file, monkeypatch):
    items = load_mcub(synth_file)
    for variant in ("DAMC", "NaiveMC", "expert:image"):
        out = run_task(McStudio(composed_model=bundled, variant=variant, batch_size=8), "mcub_synth", synth_file, monkeypatch)
        studio = evaluate(bundled, items, [variant], config=GenerationConfig(max_new_tokens=4), batch_items=8)
        samples = sorted(out["samples"]["mcub_synth"], key=lambda s: s["doc_id"])
        assert [response(s) for s in samples] == [p.answer for p in studio.predictions], variant
        assert out["results"]["mcub_synth"]["accuracy,none"] == pytest.approx(studio.accuracy()[variant]), variant


@pytest.mark.slow
def test_the_command_runs_lmms_eval_and_agrees_with_the_mcub_command(synth_file, base_cache_dir, tmp_path):
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "ds")}
    run = run_cli("lmms-eval", "--model_args", "variant=DAMC", "--tasks", "mcub_synth", "--mcub_synth_data", synth_file,
                  "--log_samples", "--output_path", tmp_path / "out", cache=base_cache_dir, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = next((tmp_path / "out").rglob("*results.json"))
    lmms_accuracy = json.loads(results.read_text())["results"]["mcub_synth"]["accuracy,none"]
    mcub = run_cli("mcub", "--data", synth_file, "--variants", "DAMC", "--json", "--predictions", tmp_path / "p.jsonl",
                   cache=base_cache_dir, timeout=900)
    assert mcub.returncode == 0, mcub.stderr[-3000:]
    summary = json.loads(mcub.stdout)
    assert lmms_accuracy == pytest.approx(summary["accuracy"]["DAMC"])
    assert summary["statistics"]["variants"]["DAMC"]["items"] == 6
