"""`python -m composition bench`: the figures' structure on tiny in-process models (no timing assertions)."""
from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from composition.benchmarks.speed import BenchConfig, format_gpu, gpu_section
from composition.cli import main

SIDE_BY_SIDE = {"batched_s", "one_variant_s", "sequential_s", "ratio_vs_one", "ratio_vs_sequential", "prefill_floor",
                "padded_prefill_ratio"}
MATERIALIZED = {"seconds", "plain_loop_s", "ratio_vs_plain_loop", "memory_floor_s", "ratio_vs_floor", "max_abs_change"}
DECODE = {"floor_ms_per_token", "hf_generate_ms_per_token", "online_one_variant_ms_per_token",
          "online_all_variants_ms_per_token", "materialized_ms_per_token", "online_vs_floor", "materialized_vs_floor"}


def positive(section: dict, keys: set[str]) -> None:
    assert "error" not in section, section.get("error")
    for key in keys:
        value = section[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def check_side_by_side(section: dict, n_inputs: int) -> None:
    positive(section, SIDE_BY_SIDE)
    assert len(section["inputs"]) == n_inputs
    assert section["variants"][:2] == ["NaiveMC", "DAMC"] or section["variants"][0] == "DAMC"
    assert len(section["variants"]) == len(section["prompt_tokens"]) == (2 if "NaiveMC" in section["variants"] else 1) + n_inputs
    assert section["generated_tokens"] == section["new_tokens"]  # EOS never cuts a row short: same work per run


def run_json(capsys, *args) -> dict:
    assert main(["bench", *args]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_quick_json_has_every_figure(capsys):
    data, progress = run_json(capsys, "--quick", "--json", "--device", "cpu")
    assert data["device"] == "cpu" and data["quick"] is True and data["new_tokens"] == 4
    check_side_by_side(data["side_by_side_one_input"], 1)
    check_side_by_side(data["side_by_side_all_inputs"], 4)
    assert data["side_by_side_one_input"]["variants"] == ["NaiveMC", "DAMC", "expert:image"]
    assert len(data["side_by_side_all_inputs"]["variants"]) == 6
    positive(data["recompose_online"], {"seconds", "variants"})
    positive(data["recompose_materialized"], MATERIALIZED)
    assert data["recompose_materialized"]["experts"] == 4
    assert data["recompose_materialized"]["max_abs_diff_vs_plain_loop"] <= 1e-4  # the same merge as the plain loop
    positive(data["mcub"], {"items", "batched_items_per_s", "one_item_at_a_time_items_per_s", "speedup"})
    # The two runs alternate; the figure is the median pair's ratio, one ratio per repeat.
    per_repeat = data["mcub"]["speedup_per_repeat"]
    assert len(per_repeat) == data["repeats"] and abs(data["mcub"]["speedup"] - statistics.median(per_repeat)) < 1e-3
    assert set(data["mcub"]["seconds_by_part"]["batched"]) == {"files", "encoders", "prefill", "decode", "other"}
    # Prefill by pass budget: smaller budgets, more passes; every row's tokens prefilled under each budget.
    passes = data["prefill_passes"]["passes"]
    assert [p["max_tokens"] for p in passes] == [None, 4096, 2048, 1024, 512]
    assert [p["passes"] for p in passes] == sorted(p["passes"] for p in passes) and passes[0]["vs_one_pass_per_bucket"] == 1
    for p in passes:
        positive(p, {"seconds", "ms_per_token", "padded_tokens"})
        assert p["padded_tokens"] >= data["prefill_passes"]["prompt_tokens"]
    assert "needs CUDA" in data["gpu"]["skipped"] and "app" not in data  # the app's figures: python -m studio.cold_start
    # The human-readable lines (each figure beside its baseline) went to stderr, so stdout is one JSON object.
    for words in ("x one variant", "prefill floor", "one by one", "plain per-layer loop", "memory floor", "items/s",
                  "skipped, needs CUDA"):
        assert words in progress, words


def test_gpu_section_code_path_on_cpu():
    """The 7B section's code (side by side, materialize vs loop, decode vs generate and floor) at tiny sizes on a CPU."""
    out = gpu_section(BenchConfig("cpu", quick=True, new_tokens=2, repeats=1, warmup=0), device="cpu", dtype=torch.float32)
    check_side_by_side(out["side_by_side"], 4)
    assert out["side_by_side"]["variants"] == ["DAMC", "expert:image", "expert:audio", "expert:video", "expert:point"]
    positive(out["recompose"], MATERIALIZED)
    assert out["recompose"]["max_abs_diff_vs_plain_loop"] <= 1e-4
    positive(out["decode"], DECODE)
    assert out["bandwidth_source"] == "measured copy"
    assert len(format_gpu(out)) == 6


def test_bad_numbers_are_refused(capsys):
    assert main(["bench", "--quick", "--repeats", "0"]) == 2
    assert "repeats=0" in capsys.readouterr().err


@pytest.mark.gpu
def test_quick_on_cuda_runs_the_gpu_section(capsys):
    data, _ = run_json(capsys, "--quick", "--json", "--device", "cuda")
    gpu = data["gpu"]
    check_side_by_side(gpu["side_by_side"], 4)
    positive(gpu["recompose"], MATERIALIZED)
    positive(gpu["decode"], DECODE)
    assert gpu["bandwidth_gb_s"] > 0


def test_only_gpu_runs_without_the_offline_base_and_rehearses_on_cpu(capsys, monkeypatch):
    """`bench --only gpu` is what a bare GPU machine runs: no offline base, no bundled experts, no example files."""
    import composition.benchmarks.speed as benchmark

    def no_base(*args, **kwargs):
        raise AssertionError("--only gpu loaded the offline base")

    monkeypatch.setattr(benchmark, "real_setup", no_base)
    data, progress = run_json(capsys, "--only", "gpu", "--quick", "--json", "--device", "cpu", "--new-tokens", "2")
    assert set(data) >= {"gpu"} and "setup" not in data and "mcub" not in data
    assert "rehearsal" in data["gpu"] and "error" not in data["gpu"], data["gpu"]
    check_side_by_side(data["gpu"]["side_by_side"], 4)
    positive(data["gpu"]["decode"], DECODE)


def test_an_unknown_section_is_refused(capsys):
    assert main(["bench", "--only", "speed"]) == 2
    assert "--only 'speed' is not a section" in capsys.readouterr().err
