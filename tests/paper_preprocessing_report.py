"""Measure how far each paper encoder's full path is from the original's preprocessing, file by file.

    python tests/paper_preprocessing_report.py            # markdown tables on stdout (≈ 1 min on 2 CPU cores)

For every image, video and point-cloud file of gradio's media_assets (and the repository's
examples), the studio's full path (decoder with the encoder's `input_limits` -> encoder-side
transform -> a random-weight encoder) is compared with the original's preprocessing written out
in tests/paper_media.py, fed to the same encoder. For contrast, the studio's *default* decoded
form (what the bundled experts and previews read) is pushed through the same transform: that is
what the paper's encoders would see without their `input_limits`. BEATs: our Kaldi fbank against
a float64 reference written from Kaldi's definition, on every audio file decoded at 16 kHz.
Figures: max |Δ| of the normalised pixels / fbank; features: max |Δ| / max |reference|, and the
worst cosine between corresponding tokens.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from tests.paper_media import (IMAGES, POINTS, VIDEOS, media_files, reference_clip_pixels, reference_pc_norm,  # noqa: E402
                         reference_video_pixels, relative_error, write_tiny_clip)


def worst_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def row(name, *cells) -> str:
    return "| " + " | ".join([name, *[c if isinstance(c, str) else f"{c:.2g}" for c in cells]]) + " |"


def images(tmp: Path) -> list[str]:
    from modalities import get_modality
    from modalities.encoders import encoder_spec, get_encoder
    from modalities.encoders.clip import clip_pixels

    encoder = get_encoder("clip", str(write_tiny_clip(tmp / "clip")))
    paper = get_modality("image").with_limits(**encoder_spec("clip").input_limits)
    lines = ["| image | size | pixels Δ | features Δ (rel.) | default form: pixels Δ | default form: worst token cos |",
             "|---|---|---|---|---|---|"]
    for path in media_files("images", IMAGES):
        ref = reference_clip_pixels(path, encoder.processor)
        with torch.no_grad():
            want = encoder.model(pixel_values=ref[None], output_hidden_states=True).hidden_states[-2][0, 1:]
        loaded = paper.load(path)
        ours = clip_pixels(loaded.data, encoder.processor)
        default = get_modality("image").load(path).data
        lines.append(row(path.name, "×".join(map(str, loaded.meta["size"])), float((ours - ref).abs().max()),
                         relative_error(encoder.encode(loaded.data), want),
                         float((clip_pixels(default, encoder.processor) - ref).abs().max()),
                         f"{worst_cosine(encoder.encode(default), want):.3f}"))
    return lines


def videos(tmp: Path) -> list[str]:
    from modalities import get_modality
    from modalities.encoders import encoder_spec, get_encoder
    from modalities.encoders.languagebind_video import video_input
    from tests.test_paper_encoders import tiny_languagebind_config, tiny_languagebind_state, write_languagebind_folder

    config = tiny_languagebind_config()
    config["vision_config"]["image_size"] = 224  # the released input size, so the pixel figures are the real ones
    state = tiny_languagebind_state(config)
    folder = write_languagebind_folder(tmp / "lb", state)
    (folder / "config.json").write_text(__import__("json").dumps(config))
    encoder = get_encoder("languagebind-video", str(folder))
    paper = get_modality("video").with_limits(**encoder_spec("languagebind-video").input_limits)
    lines = ["| video | frames | indices | pixels Δ | features Δ (rel.) | default form: pixels Δ | default form: worst token cos |",
             "|---|---|---|---|---|---|---|"]
    for path in media_files("videos", VIDEOS):
        ref = reference_video_pixels(path, 224)
        with torch.no_grad():
            want = encoder.tower(ref[None]).flatten(1, 2)[0]
        loaded = paper.load(path)
        default = get_modality("video").load(path).data
        lines.append(row(path.name, str(loaded.meta["frame_count"]), str(loaded.meta["frame_indices"]),
                         float((video_input(loaded.data, 8) - ref).abs().max()),
                         relative_error(encoder.encode(loaded.data), want),
                         float((video_input(default, 8) - ref).abs().max()),
                         f"{worst_cosine(encoder.encode(default), want):.3f}"))
    return lines


def points(tmp: Path) -> list[str]:
    from modalities import get_modality
    from modalities.encoders import encoder_spec, get_encoder
    from modalities.encoders.point_bert import point_bert_input
    from tests.test_paper_encoders import tiny_point_bert_state
    from tests.test_paper_preprocessing import TINY_8192_YAML

    (tmp / "pb").mkdir()
    torch.save(tiny_point_bert_state(seed=2), tmp / "pb" / "point_bert_tiny.pt")
    (tmp / "pb" / "PointTransformer_tiny_8192.yaml").write_text(TINY_8192_YAML)
    encoder = get_encoder("point-bert", str(tmp / "pb"))
    paper = get_modality("point").with_limits(**encoder_spec("point-bert").input_limits)
    lines = ["| point cloud | sampling | points Δ after pc_norm | features Δ (rel.) |", "|---|---|---|---|"]
    for path in media_files("models3d", POINTS):
        loaded = paper.load(path)
        ref = torch.from_numpy(reference_pc_norm(loaded.data.numpy())).float()
        with torch.no_grad():
            want = encoder.model(ref[None])[0]
        lines.append(row(path.name, loaded.meta["sampling"], float((point_bert_input(loaded.data, 8192) - ref).abs().max()),
                         relative_error(encoder.encode(loaded.data), want)))
    return lines


def audio() -> list[str]:
    from modalities import get_modality
    from modalities.encoders.kaldi_fbank import kaldi_fbank
    from tests.test_paper_encoders import reference_fbank

    lines = ["| audio | seconds at 16 kHz | fbank Δ (max abs) | fbank Δ (rel.) |", "|---|---|---|---|"]
    for path in media_files("audio"):
        wave = get_modality("audio").with_limits(sample_rate=16000).load(path).data.double()[:16000 * 10]
        ours = kaldi_fbank(wave * 2 ** 15).numpy()
        ref = reference_fbank(wave.numpy() * 2 ** 15)
        lines.append(row(path.name, f"{wave.numel() / 16000:.1f}", float(np.abs(ours - ref).max()),
                         float(np.abs(ours - ref).max() / np.abs(ref).max())))
    return lines


def main() -> int:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for title, lines in (("CLIP (image)", images(Path(tmp))), ("LanguageBind (video)", videos(Path(tmp))),
                             ("Point-BERT (point cloud)", points(Path(tmp))), ("BEATs fbank (audio, first 10 s)", audio())):
            print(f"\n### {title}\n")
            print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
