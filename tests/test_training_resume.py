"""A build that stops and resumes equals one that never stopped, bit for bit; a state made
with other settings, or a checkpoint that does not fit, is refused by name."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from composition.random_models import tiny_base
from training.checkpoint import BuildPaused, BuildState, StateMismatch
from training.recipe import TrainConfig, Trainer

from tests.test_training import fake_data

CONFIG = TrainConfig(stage0_steps=5, stage1_steps=3, stage2_steps=7, stage3_steps=3, batch_size=3, stage3_batch_size=2,
                     warmup_steps=2, stage2_steps_by_modality=())


class PauseAt(BuildState):
    """A state that asks for a pause at the n-th end of a step (every loop counted): the
    test's way to stop a build at each point a real pause could come."""

    def __init__(self, *args, at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.calls = at, 0

    def pause_requested(self) -> bool:
        self.calls += 1
        return self.calls == self.at

    def check_pause(self, where: str) -> None:
        """Between stages nothing pauses here: these tests count the loops' pause points
        (test_a_build_pauses_between_stages... checks the stage boundaries)."""


def _stage2(state: BuildState | None, training: str = "decoupled"):
    trainer = Trainer(tiny_base(), CONFIG, log=lambda *_: None)
    trainer.state = state
    data = fake_data()
    parts = trainer.stage1(data)
    return trainer.stage2(data, parts, training)


def _same_deltas(first, second) -> bool:
    return all(torch.equal(first[d].A[m], second[d].A[m]) and torch.equal(first[d].B[m], second[d].B[m])
               for d in first for m in first[d].A)


@pytest.mark.parametrize("training", ["decoupled", "shared"])
@pytest.mark.parametrize("at", [1, 3, 6])  # in stage 1 (3 steps), then in stage 2 (7 steps)
def test_a_paused_loop_resumes_to_the_uninterrupted_result(tmp_path, training, at):
    expected, expected_parts, expected_log = _stage2(None, training)
    settings = {"config": "test"}
    with pytest.raises(BuildPaused, match="paused at step"):
        _stage2(PauseAt(tmp_path, settings, at=at), training)
    assert list(tmp_path.glob("*.loop.safetensors"))  # what it saved
    deltas, parts, log = _stage2(BuildState(tmp_path, settings), training)
    assert _same_deltas(deltas, expected)
    assert all(torch.equal(a, b) for a, b in zip(parts.projector.state_dict().values(),
                                                 expected_parts.projector.state_dict().values()))
    assert torch.equal(parts.prefix, expected_parts.prefix)
    assert [row["loss"] for row in log] == [row["loss"] for row in expected_log]


def test_checkpoints_are_written_every_few_steps_and_hold_adams_state(tmp_path):
    state = BuildState(tmp_path, {"config": "test"}, every=2)
    _stage2(state)
    # Finished loops leave their last checkpoint (the build discards it once the stage's result is saved).
    path = state.loop_path("image decoupled stage 2")
    tensors = load_file(str(path))
    assert any(k.endswith(".exp_avg_sq") for k in tensors) and any(k.endswith(".step") for k in tensors)
    steps = {float(v) for k, v in tensors.items() if k.endswith(".step")}
    assert steps == {6.0}  # 7 steps, saved every 2: the last save is after step 6


def test_other_settings_are_refused_by_name(tmp_path):
    BuildState(tmp_path, {"config": {"stage2_steps": 70}, "scenes": 800})
    with pytest.raises(StateMismatch, match=r"differing: config.*--fresh"):
        BuildState(tmp_path, {"config": {"stage2_steps": 700}, "scenes": 800})
    BuildState(tmp_path, {"config": {"stage2_steps": 70}, "scenes": 800})  # the same settings resume


def test_a_checkpoint_that_does_not_fit_the_loop_is_refused(tmp_path):
    settings = {"config": "test"}
    with pytest.raises(BuildPaused):
        _stage2(PauseAt(tmp_path, settings, at=5))
    path = next(tmp_path.glob("*stage-2.loop.safetensors"))
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("param."))
    tensors[key] = torch.zeros(3, 3)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(StateMismatch, match=rf"{key} has shape \(3, 3\).*--fresh"):
        _stage2(BuildState(tmp_path, settings))


def test_bad_state_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="every=0"):
        BuildState(tmp_path, {}, every=0)
    with pytest.raises(ValueError, match="stop_after"):
        BuildState(tmp_path, {}, stop_after=-1.0)


@pytest.fixture
def tiny_build(monkeypatch):
    """build() on the tiny base (the real scenes and encoders of one modality, a few steps)."""
    import composition.base_llm as base_llm

    monkeypatch.setattr(base_llm, "load_base_llm", lambda device="cpu": tiny_base())


def _expert_tensors(folder):
    """Every file of a saved expert: tensors of each .safetensors (the LoRA deltas sit in
    sub-folders), the text of the rest."""
    return {str(f.relative_to(folder)): load_file(str(f)) if f.suffix == ".safetensors" else f.read_text()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _same_files(first, second) -> bool:
    return first.keys() == second.keys() and all(
        a == b if isinstance(a, str) else a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for a, b in ((first[f], second[f]) for f in first))


def test_a_paused_build_resumes_to_the_uninterrupted_experts(tmp_path, tiny_build):
    from training.build_experts import build

    cache = tmp_path / "data"
    quiet = lambda *_: None  # noqa: E731
    expected = build(tmp_path / "straight", CONFIG, 4, cache, modalities=("image",), eval_items=2, log=quiet)
    settings = {"config": "test"}
    paused_at = []
    # Each rerun counts step ends afresh (the last step of a loop is not a pause point): stage 1
    # (3 steps) at its 2nd; stage 2 (7) at its 3rd; 3 more to its end, then stage 3 at its 1st;
    # its 2nd, then the shared expert's stage 2 at its 3rd; 3 more, then its stage 3 at its 1st.
    for at in (2, 3, 4, 4, 4):
        try:
            build(tmp_path / "resumed", CONFIG, 4, cache, modalities=("image",), eval_items=2, log=quiet,
                  state=PauseAt(tmp_path / "state", settings, at=at))
        except BuildPaused as exc:
            paused_at.append(str(exc).split(" paused")[0])
    assert paused_at == ["image stage 1", "image decoupled stage 2", "image decoupled stage 3", "image shared stage 2",
                         "image shared stage 3"]
    report = build(tmp_path / "resumed", CONFIG, 4, cache, modalities=("image",), eval_items=2, log=quiet,
                   state=BuildState(tmp_path / "state", settings))
    for name in ("image", "image-shared"):
        straight, resumed = _expert_tensors(tmp_path / "straight" / name), _expert_tensors(tmp_path / "resumed" / name)
        assert any("/" in f for f in straight) and _same_files(straight, resumed)  # the deltas' sub-folders too
        assert report["experts"][name]["heldout"] == expected["experts"][name]["heldout"]
        for stage in ("stage2", "stage3"):
            assert [r["loss"] for r in report["experts"][name][stage]] == [r["loss"] for r in expected["experts"][name][stage]]
    # Only finished results are left: no loop checkpoints, no stage-2 leftovers.
    assert not list((tmp_path / "state").glob("*.loop.safetensors"))
    assert sorted(p.name for p in (tmp_path / "state").glob("*.result.safetensors")) == [
        "image-expert.result.safetensors", "image-shared-expert.result.safetensors",
        "image-stage-0.result.safetensors", "image-stage-1.result.safetensors"]
    # A finished build run again retrains nothing and writes the same experts.
    (tmp_path / "resumed" / "image" / "projector.safetensors").unlink()
    again = build(tmp_path / "resumed", CONFIG, 4, cache, modalities=("image",), eval_items=2, log=quiet,
                  state=PauseAt(tmp_path / "state", settings, at=1))  # no loop runs, so no pause comes
    assert again["experts"] == report["experts"]
    assert _same_files(_expert_tensors(tmp_path / "straight" / "image"), _expert_tensors(tmp_path / "resumed" / "image"))


def test_a_build_pauses_between_stages_and_only_fresh_clears_a_state(tmp_path, tiny_build):
    from training.build_experts import build

    state = BuildState(tmp_path / "state", {"config": "test"}, stop_after=1e-9)
    with pytest.raises(BuildPaused, match="before the image experts"):
        build(tmp_path / "out", CONFIG, 4, tmp_path / "data", modalities=("image",), eval_items=2, log=lambda *_: None,
              state=state)
    with pytest.raises(StateMismatch, match="another base"):
        state.bind("base", "f" * 64)  # the tiny base is "0" * 64
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(StateMismatch, match="not a build state"):
        BuildState.clear(tmp_path / "keep")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"
    (tmp_path / "state" / "notes.txt").write_text("mine too")
    BuildState.clear(tmp_path / "state")
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["notes.txt"]  # only the state's own files went


def test_the_command_pauses_with_status_3_and_resumes(tmp_path, tiny_build, capsys):
    from training.build_experts import main

    args = ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "data"), "--modalities", "image",
            "--kinds", "decoupled", "--scenes", "4", "--eval-items", "2", "--stage0-steps", "2", "--stage1-steps", "2",
            "--stage2-steps", "3", "--stage3-steps", "2", "--batch-size", "2", "--state", str(tmp_path / "state")]
    assert main(args + ["--stop-after", "0.001"]) == 3
    assert "before the image experts" in capsys.readouterr().out
    assert main(args) == 0
    manifest = json.loads((tmp_path / "state" / "manifest.json").read_text())
    assert manifest["settings"]["config"]["stage2_steps"] == 3 and len(manifest["settings"]["code"]) == 64
    assert main(args + ["--stage2-steps", "4"]) == 2  # other settings: refused, by name
    assert "differing: config" in capsys.readouterr().err
    assert main(args + ["--stage2-steps", "4", "--fresh"]) == 0  # --fresh starts over
    assert main(["--state", str(tmp_path / "out"), "--fresh"] + args[:-2]) == 2  # not a state folder: not deleted
    assert (tmp_path / "out" / "image" / "expert.json").is_file()
