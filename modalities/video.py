"""Video files -> float32 (F, 3, S, S) in [0, 1]: F frames sampled uniformly with decord,
each padded to a square like images (the frame encoders take square inputs).

Frame indices are the centres of F equal segments of the video (deterministic; no random
flips or crops, which belong to training, not to inference). Duration and resolution are
checked from metadata before any frame is decoded (ffprobe when it is installed, which
reads only the container header; otherwise decord's frame count/fps plus one decoded frame),
and frames are decoded already downscaled so a 4K video never sits in memory at full size.

Those are the studio's defaults (the bundled experts and the previews read that form). An
encoder trained on another decoding asks for it through its `input_limits`: the paper's
LanguageBind video expert reads `frame_sampling="linspace", frame_max_side=None,
pad_square=False`, i.e. the original's decord branch (PKU-YuanGroup/LanguageBind
`languagebind/video/processing_video.py`, `load_and_transform_video`): every frame counted
(`len(VideoReader)`), frames `np.linspace(0, n - 1, F, dtype=int)` (209 frames -> 0, 29, 59, 89,
118, 148, 178, 208), decoded at full resolution, not padded -> float32 (F, 3, H, W).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import MB, Limits, LoadedInput, Modality, ModalityError, check_positive
from .image import IMAGENET_MEAN, pad_to_square
from .registry import register_modality
from .sniff import Sniffed


@dataclass(frozen=True)
class VideoLimits(Limits):
    """num_frames: frames sampled per video; frame_sampling: "centres" (of num_frames equal segments) or
    "linspace" (`np.linspace(0, n - 1, num_frames, dtype=int)`, the original LanguageBind rule);
    max_seconds / max_width / max_height: refused beyond these; frame_max_side: frames are downscaled so
    their longest side is at most this (None: full resolution); pad_square: False leaves frames their own
    shape; strip_height: preview height."""

    max_bytes: int = 200 * MB
    num_frames: int = 8
    frame_sampling: str = "centres"
    max_seconds: float = 600.0
    max_width: int = 4096
    max_height: int = 4096
    frame_max_side: int | None = 448
    pad_square: bool = True
    strip_height: int = 96

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_frames", "max_width", "max_height", "strip_height"):
            check_positive(self, name, int)
        if self.frame_max_side is not None:
            check_positive(self, "frame_max_side", int)
        check_positive(self, "max_seconds", float)
        if self.frame_sampling not in FRAME_SAMPLING:
            raise ModalityError(f"VideoLimits.frame_sampling must be one of {sorted(FRAME_SAMPLING)}, got {self.frame_sampling!r}")
        if not isinstance(self.pad_square, bool):
            raise ModalityError(f"VideoLimits.pad_square must be True or False, got {self.pad_square!r}")


def segment_centres(total: int, count: int) -> list[int]:
    """Indices of the centres of `count` equal segments of `total` frames (repeats when total < count)."""
    if total <= 0 or count <= 0:
        raise ValueError(f"need total > 0 and count > 0, got total={total}, count={count}")
    return [min(total - 1, int((i + 0.5) * total / count)) for i in range(count)]


def linspace_indices(total: int, count: int) -> list[int]:
    """`np.linspace(0, total - 1, count, dtype=int)`: the original LanguageBind frame choice (first and last
    frame included; truncation, so 3 frames -> [0, 0, 0, 0, 1, 1, 1, 2] for 8)."""
    if total <= 0 or count <= 0:
        raise ValueError(f"need total > 0 and count > 0, got total={total}, count={count}")
    return [int(i) for i in np.linspace(0, total - 1, count, dtype=int)]


FRAME_SAMPLING = {"centres": segment_centres, "linspace": linspace_indices}


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled so max(w, h) <= max_side, aspect kept, even sizes (what video scalers prefer); None: as is."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class VideoModality(Modality):
    name = "video"
    label = "video"
    what = "a video"
    extensions = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v")
    content_kinds = frozenset({"video", "av"})
    limits_type = VideoLimits

    def _fix_hint(self) -> str:
        return "Trim it or re-encode it at a lower resolution (e.g. 720p MP4) and upload it again."

    def _decode(self, file: Path, sniffed: Sniffed) -> LoadedInput:
        import decord

        limits: VideoLimits = self.limits
        probed = _ffprobe(file)
        reader = decord.VideoReader(str(file), ctx=decord.cpu(0), num_threads=1)
        total = len(reader)
        fps = float(reader.get_avg_fps())
        if total <= 0:
            raise ModalityError(f"{file.name} contains no video frames; export it again.")
        if not fps > 0:
            raise ModalityError(f"{file.name} has no valid frame rate (fps={fps}); re-encode it as MP4.")
        duration = total / fps
        if probed and probed.get("duration"):
            duration = max(duration, probed["duration"])
        if duration > limits.max_seconds:
            raise ModalityError(f"{file.name} is {_human_seconds(duration)} long; videos are limited to "
                                f"{_human_seconds(limits.max_seconds)}. {self._fix_hint()}")
        if probed and probed.get("width"):
            width, height = probed["width"], probed["height"]
        else:  # no ffprobe: one decoded frame tells the size
            height, width = reader.next().shape[:2]
            reader.seek(0)
        if width > limits.max_width or height > limits.max_height:
            raise ModalityError(f"{file.name} is {width}×{height}; videos are limited to "
                                f"{limits.max_width}×{limits.max_height}. {self._fix_hint()}")
        target_w, target_h = scaled_size(width, height, limits.frame_max_side)
        if (target_w, target_h) != (width, height):
            del reader  # reopen with decoder-side scaling
            reader = decord.VideoReader(str(file), ctx=decord.cpu(0), width=target_w, height=target_h, num_threads=1)
        indices = FRAME_SAMPLING[limits.frame_sampling](total, limits.num_frames)
        frames = reader.get_batch(indices).asnumpy()  # (F, H, W, 3) uint8
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            raise ModalityError(f"{file.name} returned frames of an unexpected shape {frames.shape}; re-encode it as MP4.")
        data = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        if limits.pad_square:  # same square padding as images, so frame encoders see what image encoders see
            data = torch.stack([pad_to_square(frame, IMAGENET_MEAN) for frame in data]).contiguous()
        notes: list[str] = []
        if total < limits.num_frames:
            notes.append(f"the video has only {total} frames; some of the {limits.num_frames} sampled frames repeat")
        if (target_w, target_h) != (width, height):
            notes.append(f"frames downscaled from {width}×{height} to {frames.shape[2]}×{frames.shape[1]}")
        meta: dict[str, Any] = {"frame_count": total, "fps": fps, "duration_s": duration, "width": width,
                                "height": height, "frame_indices": indices, "frame_sampling": limits.frame_sampling,
                                "frame_times_s": [round(i / fps, 3) for i in indices]}
        return LoadedInput(self.name, data, file.name, notes, meta)

    def preview(self, loaded: LoadedInput) -> dict[str, Any]:
        from .previews import keyframe_strip

        self._check_loaded(loaded)
        return {"keyframes": keyframe_strip(loaded.data, self.limits.strip_height)}


def _human_seconds(seconds: float) -> str:
    """12.5 -> '12.5 s', 754 -> '12.6 min': durations in messages are read by people."""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _ffprobe(file: Path, timeout: float = 10.0) -> dict[str, float] | None:
    """Width, height and duration from the container header, or None without ffprobe / on failure."""
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    cmd = [exe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height,duration:format=duration",
           "-of", "json", str(file)]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        info = json.loads(result.stdout or b"{}")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    streams = info.get("streams") or [{}]
    if not streams or not streams[0].get("width"):
        return None

    def number(value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return 0.0

    stream = streams[0]
    duration = number(stream.get("duration")) or number((info.get("format") or {}).get("duration"))
    return {"width": int(stream["width"]), "height": int(stream["height"]), "duration": duration}


register_modality(VideoModality())
