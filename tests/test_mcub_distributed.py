"""``python -m composition mcub`` end to end in real processes, on a tiny random Llama saved to a folder:
the released layout, resume after a kill, and ``torchrun --nproc-per-node 2`` (gloo on CPU) writing
exactly what one process writes.

The base is honest: ``--base DIR`` is a transformers checkpoint folder (``save_pretrained``, with
its tokenizer beside it), which ``composition.base_llm`` loads like any local model; the experts are
untrained image experts on it (the offline EfficientNet-Lite0 encoder).
"""
from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.cli_runner import REPO

pytestmark = pytest.mark.slow
WORDS = ("ball", "cube", "star", "drum", "ring", "cone", "cross")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """(base folder, experts folder, question file, answers file, data root) in the released layout."""
    from PIL import Image

    from composition.base_llm import weights_sha256
    from composition.random_models import TEST, save_random_experts, synthetic_base

    root = tmp_path_factory.mktemp("tiny-world")
    base = synthetic_base(TEST, seed=4)
    with torch.no_grad():  # larger random layer weights, so answers differ by item and "identical" means something
        for name, param in base.model.named_parameters():
            if not any(k in name for k in ("norm", "lm_head", "embed")):
                param.mul_(16.0)
        # Only letters, digits and spaces can win the argmax (other rows give logit 0): readable answers.
        readable = set(string.ascii_letters + string.digits + " ")
        other = [i for i in range(base.model.lm_head.weight.shape[0]) if base.tokenizer.decode([i]) not in readable]
        base.model.lm_head.weight[other] = 0.0
    base.model.save_pretrained(root / "base")
    base.tokenizer.save_pretrained(root / "base")
    recorded = SimpleNamespace(model=base.model, name="base", sha256=weights_sha256(base.model), hidden_size=base.hidden_size)
    save_random_experts(recorded, root / "experts", ("image",), training="decoupled", seed=1)
    save_random_experts(recorded, root / "experts-shared", ("image",), training="shared", seed=2)
    (root / "experts-shared" / "image").rename(root / "experts" / "image-shared")
    cfg = json.loads((root / "experts" / "image-shared" / "expert.json").read_text())
    cfg["name"] = "image-shared"
    (root / "experts" / "image-shared" / "expert.json").write_text(json.dumps(cfg))
    media = root / "data" / "media"
    media.mkdir(parents=True)
    rng = np.random.default_rng(0)
    questions, answers = [], []
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(media / f"{i}.png")
        questions.append({"id": i, "conversations": [{"from": "human", "value": f"<image>\nWhich letter is the {WORDS[i]}?"},
                                                     {"from": "gpt", "value": None}],
                          "modal_inputs": {"vision": [f"media/{i}.png"]}})
        answers.append({"id": i, "conversations": [{"from": "gpt", "value": "ABCD"[i % 4]}]})
    test = root / "data" / "test"
    test.mkdir()
    (test / "MCUB-4.json").write_text(json.dumps(questions))
    (test / "MCUB-answer.json").write_text(json.dumps(answers))
    return root


def mcub_args(world: Path, out: Path, *extra) -> list[str]:
    return ["mcub", "--data", str(world / "data/test/MCUB-4.json"), "--answers", str(world / "data/test/MCUB-answer.json"),
            "--data-root", str(world / "data"), "--base", str(world / "base"), "--experts", str(world / "experts"),
            "--device", "cpu", "--batch-items", "2", "--max-new-tokens", "6", "--predictions", str(out), "--json", *extra]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def files_of(out: Path) -> dict[str, str]:
    paper = out.with_name(out.name.removesuffix(".jsonl").removesuffix("-predictions") + "-paper")
    return {"predictions": out.read_text(), **{p.name: p.read_text() for p in sorted(paper.glob("*.jsonl"))}}


@pytest.fixture(scope="module")
def single(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "mcub4-predictions.jsonl"
    result = run([sys.executable, "-m", "composition", *mcub_args(tiny_world, out, "--prompt", "paper")])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), files_of(out)


def test_one_process_reads_the_released_layout_and_scores_as_the_paper(single):
    summary, files = single
    assert summary["items"] == 7 and summary["task"]["family"] == "mcub" and summary["task"]["rule"] == "first-char"
    assert list(summary["accuracy"]) == ["DAMC", "NaiveMC", "expert:image", "expert:image-shared"] or \
        set(summary["accuracy"]) == {"DAMC", "NaiveMC", "expert:image", "expert:image-shared"}
    s = summary["settings"]
    assert (s["prompt"], s["max_new_tokens"], s["temperature"], s["processes"]) == ("paper", 6, 0.0, 1)
    assert s["labels"] == {"image": "image", "audio": "audio", "video": "video", "point": "point"}
    lines = [json.loads(x) for x in files["DAMC.jsonl"].splitlines()]
    assert [x["question_id"] for x in lines] == list(range(7)) and lines[0]["prompt"].startswith("<image>\n")
    assert len(files["predictions"].splitlines()) == 7 * len(summary["accuracy"])
    assert len({x["text"] for x in lines}) >= 3  # the answers differ by item


def test_two_processes_write_exactly_what_one_writes(tiny_world, single, tmp_path):
    out = tmp_path / "mcub4-predictions.jsonl"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "composition",
                  *mcub_args(tiny_world, out, "--prompt", "paper")])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # rank 0 alone prints
    assert summary["settings"]["processes"] == 2
    assert summary["accuracy"] == single[0]["accuracy"]
    assert files_of(out) == single[1]
    assert not list(tmp_path.glob("*.part"))


def test_a_killed_run_resumes_from_its_predictions_file(tiny_world, single, tmp_path):
    out = tmp_path / "mcub4-predictions.jsonl"
    first = run([sys.executable, "-m", "composition", *mcub_args(tiny_world, out, "--prompt", "paper")])
    assert first.returncode == 0, first.stderr
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:9]) + "\n" + lines[9][:17])  # killed mid-run, a line half written
    resumed = run([sys.executable, "-m", "composition", *mcub_args(tiny_world, out, "--prompt", "paper", "--resume")])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_answers"] == 9
    assert files_of(out) == single[1]
    other = run([sys.executable, "-m", "composition", *mcub_args(tiny_world, out, "--resume")])  # studio prompt now
    assert other.returncode == 2 and "was written with other settings" in other.stderr and "differing: labels, prompt)" in other.stderr
    # Other weights under the same expert name: their answers must not be mixed with the stored ones.
    import shutil

    experts = tmp_path / "experts"
    shutil.copytree(tiny_world / "experts", experts)
    projector = experts / "image" / "projector.safetensors"
    projector.write_bytes(projector.read_bytes()[:-1] + bytes([projector.read_bytes()[-1] ^ 1]))
    args = mcub_args(tiny_world, out, "--prompt", "paper", "--resume")
    args[args.index("--experts") + 1] = str(experts)
    changed = run([sys.executable, "-m", "composition", *args])
    assert changed.returncode == 2 and "differing: experts" in changed.stderr


def test_missing_answers_fail_in_one_line_before_the_model_loads(tiny_world, tmp_path):
    answers = tmp_path / "MCUB-answer.json"
    answers.write_text(json.dumps([{"id": 0, "conversations": [{"from": "gpt", "value": "A"}]}]))
    args = mcub_args(tiny_world, tmp_path / "p.jsonl")
    args[args.index("--answers") + 1] = str(answers)
    result = run([sys.executable, "-m", "composition", *args], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "6 question(s) of 'MCUB-4.json' have no answer" in lines[0]


def test_tune_searches_on_validation_and_reports_on_the_rest(tiny_world, tmp_path):
    args = mcub_args(tiny_world, tmp_path / "p.jsonl", "--tune", "--tune-scales", "0.5,1", "--tune-mus", "1,1.5",
                     "--val-fraction", "0.4", "--seed", "3")
    result = run([sys.executable, "-m", "composition", *args])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["tune"]
    assert (out["validation_items"], out["test_items"]) == (3, 4)  # a seeded split, disjoint
    assert len(out["grid"]) == 4 and out["variant"] == "DAMC"
    best = max(out["grid"], key=lambda c: c["accuracy"])
    assert out["validation_accuracy"] == best["accuracy"]
    assert {"lambda_scale", "mu"} == set(out["best"]) and 0 <= out["test_accuracy"] <= 1


def test_a_synth_set_not_built_names_the_command(tmp_path):
    result = run([sys.executable, "-m", "composition", "mcub", "--data", "synth-3", "--seed", "97", "--synth-items", "3"],
                 timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("build it with: python -m training.mcub_synth --kind synth-3 --subset all "
                                          "--seed 97 --n-items 3 --out .cache/mcub-synth/seed97-n3"), result.stderr


RANK_SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
from composition.evaluation.distributed import all_gather_json, init_distributed
from composition.base_llm import load_base_llm

def native_threads():
    return sorted(open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task"))

ctx = init_distributed("cpu")
load_base_llm({base!r}, device="cpu")  # what the CLI does next: transformers imports torch.distributed.nn
assert all_gather_json(ctx.rank, ctx) == [0, 1]
ctx.close()
# one file per rank: two ranks printing to one pipe interleave their lines
with open(os.path.join({out!r}, f"rank{{ctx.rank}}.txt"), "w") as f:
    f.write(f"RANK {{ctx.rank}} threads after teardown: {{native_threads()}}")
"""


def test_tearing_down_the_process_group_ends_its_threads(tiny_world, tmp_path):
    """The cause of the rare abort at exit: after the CLI's teardown no gloo thread may be left for the
    interpreter's own teardown to destroy (a model load imported torch.distributed.nn after the group
    existed, whose default arguments kept the group alive)."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(repo=str(REPO), base=str(tiny_world / "base"), out=str(tmp_path)))
    torchrun = Path(sys.executable).with_name("torchrun")
    result = run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script)])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    for line in lines:
        assert "gloo" not in line, line


def test_without_device_a_single_process_group_starts_on_what_the_machine_has(monkeypatch):
    """--device left out (None): cuda when the machine has one, else gloo on the CPU (the device check runs
    before the group starts, with torch bound in the function that also imports torch.distributed.nn)."""
    import socket

    from composition.evaluation.distributed import init_distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    ctx = init_distributed(None)
    try:
        assert ctx.backend == ("nccl" if torch.cuda.is_available() else "gloo") and ctx.world_size == 1
    finally:
        ctx.close()
