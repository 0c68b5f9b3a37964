"""The CLI contract: `python -m composition compare|export|experts` (real processes)."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from tests.cli_runner import REPO, run_cli

MEDIA = Path(importlib.util.find_spec("gradio").submodule_search_locations[0]) / "media_assets"


@pytest.mark.slow
def test_compare_json_contract(random_experts_dir, base_cache_dir):
    result = run_cli("compare", "--question", "What do you see and hear?", "--image", MEDIA / "images" / "cheetah.jpg",
                     "--audio", MEDIA / "audio" / "cantina.wav", "--experts", random_experts_dir, "--max-new-tokens", 6, "--json",
                     cache=base_cache_dir)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    names = [v["name"] for v in data["variants"]]
    assert names == ["DAMC", "expert:image", "expert:audio"]
    for v in data["variants"]:
        assert set(v) >= {"name", "answer", "seconds", "new_tokens"}
        assert isinstance(v["answer"], str) and 0 < v["new_tokens"] <= 6
    assert len({v["seconds"] for v in data["variants"]}) == 1  # one batch, one wall time
    assert "Traceback" not in result.stderr
    # What ran: DAMC merged the two experts with an input at 1/K = 1/2 each.
    damc = data["variants"][0]
    assert damc["kind"] == "damc" and damc["experts"] == ["image", "audio"]
    assert damc["coefficients"] == {"lambdas": {"image": 0.5, "audio": 0.5}, "mus": {"image": 1.0, "audio": 1.0}}
    assert data["variants"][1]["coefficients"] == {"lambdas": {"image": 1.0}, "mus": {"image": 1.0}}


@pytest.mark.slow
def test_compare_reads_a_config_and_its_flags_override_it(random_experts_dir, tmp_path, base_cache_dir):
    """The app's saved config runs as is from the CLI; --lambda over the file; λ set by hand stays with a new input."""
    config = tmp_path / "composition.yaml"
    config.write_text("format: mllm-composition-studio/1\nexperts: [image, audio]\nvariants: [DAMC]\n"
                      "coefficients: {lambdas: {image: 0.5, audio: auto}, mus: {audio: 0.8}}\n"
                      "generation: {max_new_tokens: 4}\n")
    result = run_cli("compare", "--question", "What is it?", "--image", MEDIA / "images" / "cheetah.jpg", "--audio",
                     MEDIA / "audio" / "cantina.wav", "--experts", random_experts_dir, "--config", config,
                     "--lambda", "audio=0.3", "--json", cache=base_cache_dir)
    assert result.returncode == 0, result.stderr
    (damc,) = json.loads(result.stdout)["variants"]
    assert damc["coefficients"] == {"lambdas": {"image": 0.5, "audio": 0.3}, "mus": {"image": 1.0, "audio": 0.8}}
    assert 0 < damc["new_tokens"] <= 4
    bad = run_cli("compare", "--question", "?", "--experts", random_experts_dir, "--config", tmp_path / "missing.yaml")
    assert bad.returncode == 2 and "config 'missing.yaml' could not be read" in bad.stderr


@pytest.mark.slow
def test_chat_reads_a_piped_three_turn_script(random_experts_dir, base_cache_dir):
    """Turns on stdin, a file attached before turns 1 and 3: each turn answered by every variant, in context."""
    script = (f":image {MEDIA / 'images' / 'cheetah.jpg'}\nWhat is it?\nWhat colour is it?\n"
              f":audio {MEDIA / 'audio' / 'cantina.wav'}\nAnd what do you hear?\n")
    result = run_cli("chat", "--experts", random_experts_dir, "--max-new-tokens", 5, "--json", cache=base_cache_dir,
                     stdin=script)
    assert result.returncode == 0, result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert [v["name"] for v in turns[0]["variants"]] == ["DAMC", "expert:image"]
    assert [v["name"] for v in turns[2]["variants"]] == ["DAMC", "expert:image", "expert:audio"]
    assert turns[2]["variants"][0]["coefficients"]["lambdas"] == {"image": 0.5, "audio": 0.5}
    assert "attached cheetah.jpg to the next turn" in result.stderr and "Traceback" not in result.stderr
    bad = run_cli("chat", "--experts", random_experts_dir, cache=base_cache_dir, stdin=":smell nose.txt\nhi\n")
    assert bad.returncode == 2 and "unknown command ':smell nose.txt'" in bad.stderr


@pytest.mark.slow
def test_export_as_an_adapter_with_its_card_and_a_push_that_says_why_it_did_not(random_experts_dir, tmp_path, base_cache_dir):
    out = tmp_path / "adapter"
    result = run_cli("export", "--variant", "DAMC", "--form", "adapter", "--out", out, "--experts", random_experts_dir,
                     "--push", "me/damc", cache=base_cache_dir, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    assert "note: not pushed: the Hub is offline here" in result.stderr and "the export stays in adapter/" in result.stderr
    card = (out / "README.md").read_text()
    assert "base_model_relation: adapter" in card and "HuggingFaceTB/SmolLM2-135M-Instruct" in card


@pytest.mark.slow
def test_export_then_list_the_exported_experts(random_experts_dir, tmp_path, base_cache_dir):
    out = tmp_path / "exported"
    result = run_cli("export", "--variant", "DAMC", "--out", out, "--experts", random_experts_dir, "--lambda", "image=0.7", cache=base_cache_dir)
    assert result.returncode == 0, result.stderr
    assert (out / "config.json").is_file() and (out / "experts" / "image" / "expert.json").is_file()
    listed = run_cli("experts", "--experts", out / "experts", "--json")
    assert [e["modality"] for e in json.loads(listed.stdout)["experts"]] == ["audio", "image"]


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.png"], "missing.png was not found"),
    (["--image", REPO / "pyproject.toml"], "extension '.toml'"),
    (["--variants", "FancyMC"], "unknown variant 'FancyMC'"),
    (["--lambda", "image=abc"], "--lambda image: 'abc' is not a number; write a number or anchors such as 0, 0.5, 1"),
    (["--lambda", "image=[]"], "--lambda image is an empty list"),
    (["--lambda", "smell=0.5"], "--lambda names expert 'smell'"),
    (["--mu", "smell=0.5"], "unknown modality 'smell'"),
    (["--max-new-tokens", "0"], "max_new_tokens=0"),
    (["--variants", "ties", "--method-param", "ties.sparsity=0.3"], "no hyper-parameter 'sparsity'"),
    (["--experts", "/nonexistent/experts"], "expert folder 'experts' does not exist"),
])
def test_bad_arguments_fail_fast_with_one_line(random_experts_dir, args, message):
    start = time.perf_counter()
    experts = [] if "--experts" in args else ["--experts", random_experts_dir]
    result = run_cli("compare", "--question", "hi", *experts, *args)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    # A hang guard, not a benchmark: refusals come before any model loads (typically ~3 s,
    # nearly all of it Python + torch import); timings belong to `python -m composition bench`.
    assert elapsed < 60, f"refusal took {elapsed:.1f} s"
