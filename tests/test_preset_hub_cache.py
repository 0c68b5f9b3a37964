"""`--preset modelcompose` with no set-up, from a Hugging Face cache and no network (issue 32).

A huggingface_hub cache is filled in its own on-disk layout (models--owner--name/{blobs, refs/main,
snapshots/<commit>/..., trees/<commit>.json}) with tiny synthetic files for every repository the
preset reads: the experts (Adu2021/ModelCompose, the eight folders of the release), the base
(lmsys/vicuna-7b-v1.5) and the encoders (openai/clip-vit-large-patch14-336,
LanguageBind/LanguageBind_Video_merge, RunsenXu/PointLLM_7B_v1.1_init). A fresh process with
HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing there then does what `python app.py --preset modelcompose`
does (resolve_preset, load_preset_studio; on the CPU, as there is no GPU here), so the real
`snapshot_download` / `hf_hub_download` / `from_pretrained` code paths resolve every file.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.media_factory import asset, media_assets  # noqa: E402
from tests.paper_media import EXAMPLES, write_tiny_clip  # noqa: E402

from tests import modelcompose_checkpoints as mc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth")
SHORT = [f"{m}-{k}" for m in ("vision", "audio", "video", "point") for k in ("damc", "naivemc")]
# The training scripts' encoder paths (ModelCompose scripts/model_composition/train/run_finetune_<m>_*.sh).
TRAINING_ENCODERS = {"vision": "model/clip-vit-large-patch14-336", "audio": "model/beats/BEATs_iter3_plus_AS2M.pt",
                     "video": "model/LanguageBind_Video_merge", "point": "model/PointLLM/point_bert_v1.2.pt"}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fill_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Write `files` (path in the repository -> local file) as huggingface_hub keeps a downloaded repository:
    blobs/<etag> (sha256 for LFS files, the git blob id otherwise), snapshots/<commit>/<path> as relative
    symlinks to them, refs/main holding the commit, trees/<commit>.json the repository's listing."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    listing = {}
    for rel, src in sorted(files.items()):
        data = Path(src).read_bytes()
        if rel.endswith(LFS_SUFFIXES):
            etag = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{etag}\nsize {len(data)}\n".encode()
            listing[rel] = {"size": len(data), "blob_id": git_blob_id(pointer), "lfs_sha256": etag, "lfs_size": len(data)}
        else:
            etag = git_blob_id(data)
            listing[rel] = {"size": len(data), "blob_id": etag}
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}, indent=1))
    return storage / "snapshots" / commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {prefix + p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def modelcompose_release(staging: Path) -> dict[str, Path]:
    """The eight folders of Adu2021/ModelCompose at tiny sizes, each adapter_model.bin + config.json +
    trainer_state.json, the encoders named by the training scripts' paths."""
    old = dict(mc.FEATURES)
    mc.FEATURES["video"] = 32  # the tiny LanguageBind tower below is 32 wide (the CLIP one is 24, as FEATURES says)
    try:
        files = {}
        for i, short in enumerate(SHORT):
            m, kind = short.split("-")
            strategy = "modal+language" if kind == "damc" else "same"
            folder = staging / f"multimodal-vicuna-7b-v1.5-{short}"
            if m == "audio":
                mc.audio_expert(folder, strategy, seed=i)
            else:
                mc.single(folder, m, strategy, seed=i)
            cfg = json.loads((folder / "config.json").read_text())
            cfg[f"mm_{m}_encoder"] = TRAINING_ENCODERS[m]
            (folder / "config.json").write_text(json.dumps(cfg, indent=2))
            files.update(folder_files(folder, folder.name + "/"))
    finally:
        mc.FEATURES.clear()
        mc.FEATURES.update(old)
    (staging / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    files["README.md"] = staging / "README.md"
    return files


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    from composition.random_models import ModelShape, synthetic_base
    from tests.test_paper_encoders import tiny_languagebind_config, tiny_languagebind_state, tiny_point_bert_state, write_languagebind_folder

    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub-cache"
    fill_hub_cache(cache, "Adu2021/ModelCompose", modelcompose_release(tmp / "release"))
    base = synthetic_base(ModelShape("tiny-mc", 64, 2, 4, 128), seed=3)
    base.model.save_pretrained(tmp / "vicuna")
    base.tokenizer.save_pretrained(tmp / "vicuna")
    fill_hub_cache(cache, "lmsys/vicuna-7b-v1.5", folder_files(tmp / "vicuna"))
    fill_hub_cache(cache, "openai/clip-vit-large-patch14-336", folder_files(write_tiny_clip(tmp / "clip", hidden=24)))
    lb = write_languagebind_folder(tmp / "languagebind", tiny_languagebind_state(tiny_languagebind_config(), seed=1))
    fill_hub_cache(cache, "LanguageBind/LanguageBind_Video_merge", folder_files(lb))
    (tmp / "pointllm").mkdir()
    torch.save(tiny_point_bert_state(), tmp / "pointllm" / "point_bert_v1.2.pt")
    (tmp / "pointllm" / "config.json").write_text(json.dumps({"model_type": "pointllm", "point_backbone": "PointBERT"}))
    fill_hub_cache(cache, "RunsenXu/PointLLM_7B_v1.1_init", folder_files(tmp / "pointllm"))
    return cache


# What app.py main() does for `--preset modelcompose`, on the CPU (the only change: no GPU here).
CHILD = r'''
import dataclasses, json, sys
from pathlib import Path
from studio import presets

root, image, video = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
said = []
try:
    plan = presets.resolve_preset("modelcompose", cuda_available=lambda: True)
    plan = dataclasses.replace(plan, device="cpu", dtype="float32")
    studio = presets.load_preset_studio(plan, root, log=said.append)
except presets.PresetError as exc:
    print("RESULT " + json.dumps({"error": str(exc)}))
    sys.exit(0)
result = {"experts": sorted(studio.cm.experts), "base": studio.cm.base.name, "log": list(said), "problems": studio.load_problems,
          "sources": {n: e.config.encoder.source for n, e in studio.cm.experts.items()}}
if image:
    from composition.generate import GenerationConfig
    from composition.inputs import ModalInput, decoder_needs
    from modalities.encoders.point_bert import resolve_source

    experts = list(studio.cm.experts.values())
    needs = decoder_needs(experts)
    one = GenerationConfig(max_new_tokens=1)
    (answer,) = studio.cm.compare("What is it?", [ModalInput.open("image", image, needs["image"])], ["expert:mc-image"], config=one)
    result["image"] = {"notes": answer.notes, "prompt_tokens": answer.prompt_tokens}
    (answer,) = studio.cm.compare("What is it?", [ModalInput.open("video", video, needs["video"])], ["expert:mc-video"], config=one)
    result["video"] = {"notes": answer.notes, "prompt_tokens": answer.prompt_tokens}
    result["point_file"] = str(resolve_source(plan.encoders["point"].source)[0])
    said.clear()
    again = presets.load_preset_studio(plan, root, log=said.append)
    result["second_start"] = {"experts": sorted(again.cm.experts), "log": list(said)}
print("RESULT " + json.dumps(result))
'''


def start_preset(tmp_path: Path, cache: Path, image: str = "", video: str = "", **env_changes) -> dict:
    """A fresh process: HF_HUB_OFFLINE=1, HF_HUB_CACHE=cache, no STUDIO_* or other HF_* variable unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "HF_", "TRANSFORMERS_", "HUGGINGFACE"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"),
                "PYTHONPATH": str(ROOT), **env_changes})
    script = tmp_path / "start_preset.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "app"), image, video], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.skipif(media_assets() is None, reason="gradio media_assets not installed")
def test_the_preset_starts_from_the_hub_cache_with_no_set_up(tmp_path, hub_cache):
    got = start_preset(tmp_path, hub_cache, str(asset("images", "avatar.png")), str(EXAMPLES / "video-example.mp4"))
    assert "error" not in got, got
    assert got["experts"] == ["mc-audio", "mc-image", "mc-point", "mc-video"]  # the four DAMC experts
    assert got["base"] == "vicuna-7b-v1.5" and "importing 4" in got["log"][0]
    assert got["sources"] == {"mc-image": "openai/clip-vit-large-patch14-336", "mc-audio": None,
                              "mc-video": "LanguageBind/LanguageBind_Video_merge",
                              "mc-point": "RunsenXu/PointLLM_7B_v1.1_init:point_bert_v1.2.pt"}
    # BEATs is not on the hub: the audio expert loads, and the app says where its encoder comes from.
    assert any("mc-audio" in p and "BEATs_iter3_plus_AS2M.pt" in p and "STUDIO_BEATS_WEIGHTS" in p for p in got["problems"])
    # CLIP came from the cache (576 patch tokens reached the prompt) and the card says what the decoder did.
    assert got["image"]["prompt_tokens"] > 576
    assert any("avatar.png: transparency was dropped" in n for n in got["image"]["notes"])
    assert got["video"]["prompt_tokens"] > 8 * 5  # the tiny LanguageBind tower's 8 x 5 tokens, from the cache
    snapshots = hub_cache / "models--RunsenXu--PointLLM_7B_v1.1_init" / "snapshots"
    assert Path(got["point_file"]).parent.parent == snapshots and Path(got["point_file"]).name == "point_bert_v1.2.pt"
    # The next start reuses what it imported.
    assert got["second_start"]["experts"] == got["experts"]
    assert not any("importing" in line for line in got["second_start"]["log"])


def test_the_preset_imports_the_experts_it_is_asked_for(tmp_path, hub_cache):
    got = start_preset(tmp_path, hub_cache, STUDIO_MODELCOMPOSE_EXPERTS="vision-naivemc,point-damc",
                       STUDIO_BEATS_WEIGHTS=str(tmp_path / "BEATs_iter3_plus_AS2M.pt"))
    assert got["experts"] == ["mc-image-shared", "mc-point"] and got["problems"] == []


def test_without_the_files_in_the_cache_the_preset_says_so_in_one_line(tmp_path):
    (tmp_path / "empty-cache").mkdir()
    got = start_preset(tmp_path, tmp_path / "empty-cache")
    assert "\n" not in got["error"] and "Adu2021/ModelCompose" in got["error"]
    assert "Starting the bundled experts" in got["error"]
