"""Audio files -> float32 (N,) mono at 16 kHz, at most `max_seconds` long.

Decoding: soundfile (libsndfile reads wav, flac, ogg, mp3) first because it is fast and
reads only the frames we keep; when it cannot read a file (m4a/aac, some mp3s) audioread
(ffmpeg) decodes it. Resampling uses soxr "HQ", the
resampler behind librosa's default `res_type="soxr_hq"`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import MB, Limits, LoadedInput, Modality, ModalityError, check_positive
from .registry import register_modality
from .sniff import Sniffed


@dataclass(frozen=True)
class AudioLimits(Limits):
    """sample_rate: output rate (Hz); max_seconds: longer input is clipped (with a note);
    min_seconds: shorter input is refused; silence_peak: input whose peak |sample| is below this is refused."""

    max_bytes: int = 50 * MB
    sample_rate: int = 16_000
    max_seconds: float = 30.0
    min_seconds: float = 0.01
    silence_peak: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "sample_rate", int)
        for name in ("max_seconds", "min_seconds", "silence_peak"):
            check_positive(self, name, float)
        if self.min_seconds >= self.max_seconds:
            raise ModalityError(f"AudioLimits.min_seconds ({self.min_seconds}) must be below max_seconds ({self.max_seconds})")


class AudioModality(Modality):
    name = "audio"
    label = "audio"
    what = "audio"
    extensions = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac")
    # "av": an .m4a is an MP4 container; "unknown": raw AAC/ADTS streams have no fixed magic.
    content_kinds = frozenset({"audio", "av"})
    limits_type = AudioLimits

    def _fix_hint(self) -> str:
        return "Trim or re-encode it (e.g. as a 16 kHz mono WAV or an MP3) and upload it again."

    def _decode(self, file: Path, sniffed: Sniffed) -> LoadedInput:
        limits: AudioLimits = self.limits
        decoded = _read_soundfile(file, limits.max_seconds)
        if decoded is None:
            decoded = _read_audioread(file, limits.max_seconds)
        samples, rate, channels, total_seconds = decoded
        if samples.size == 0 or total_seconds == 0:
            raise ModalityError(f"{file.name} contains no audio samples (0 s); record or export it again.")
        if not np.all(np.isfinite(samples)):
            raise ModalityError(f"{file.name} contains invalid samples (NaN or infinity); re-export it.")
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples
        kept_seconds = mono.shape[0] / rate
        if kept_seconds < limits.min_seconds:
            raise ModalityError(f"{file.name} is only {kept_seconds * 1000:.1f} ms long; at least "
                                f"{limits.min_seconds} s of audio is needed (the file may be truncated).")
        peak = float(np.abs(mono).max())
        if peak < limits.silence_peak:
            where = "is silent" if kept_seconds >= total_seconds else f"is silent in its first {kept_seconds:.1f} s"
            raise ModalityError(f"{file.name} {where} (peak level {peak:.1e}); upload a recording with audible sound.")
        notes: list[str] = []
        if total_seconds > limits.max_seconds + 1e-6:
            notes.append(f"audio clipped to the first {limits.max_seconds:.1f} s of {total_seconds:.1f} s")
        if channels > 1:
            notes.append(f"{channels} channels mixed down to mono")
        if rate != limits.sample_rate:
            # soxr "HQ" is exactly librosa.resample(res_type="soxr_hq") (librosa calls it), without
            # librosa's ~2 s cold import on the common path.
            import soxr

            mono = soxr.resample(np.ascontiguousarray(mono, dtype=np.float32), rate, limits.sample_rate, quality="HQ")
            notes.append(f"resampled from {rate} Hz to {limits.sample_rate} Hz")
        mono = np.clip(mono, -1.0, 1.0).astype(np.float32)
        meta: dict[str, Any] = {"original_sample_rate": rate, "channels": channels, "duration_s": total_seconds,
                                "used_s": mono.shape[0] / limits.sample_rate, "sample_rate": limits.sample_rate,
                                "peak": peak}
        return LoadedInput(self.name, torch.from_numpy(np.ascontiguousarray(mono)), file.name, notes, meta)

    def preview(self, loaded: LoadedInput) -> dict[str, Any]:
        from .previews import audio_spectrogram, audio_waveform

        self._check_loaded(loaded)
        rate = int(loaded.meta.get("sample_rate", self.limits.sample_rate))
        samples = loaded.data.detach().cpu().numpy()
        return {"waveform": audio_waveform(samples, rate, loaded.source_name),
                "spectrogram": audio_spectrogram(samples, rate, loaded.source_name)}


def _read_soundfile(file: Path, max_seconds: float) -> tuple[np.ndarray, int, int, float] | None:
    """(samples (n, channels), rate, channels, total seconds) read by libsndfile, or None if it cannot read the file."""
    import soundfile as sf

    try:
        with sf.SoundFile(file) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            if rate <= 0 or channels <= 0:
                return None
            wanted = min(frames, int(round(max_seconds * rate))) if frames > 0 else int(round(max_seconds * rate))
            samples = f.read(frames=wanted, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    # The header's frame count is an estimate for compressed formats (mp3): when fewer frames
    # than asked for came back, the file ended there.
    total = frames / rate if frames > 0 and samples.shape[0] >= wanted else samples.shape[0] / rate
    return samples, rate, channels, total


def _read_audioread(file: Path, max_seconds: float) -> tuple[np.ndarray, int, int, float]:
    """Fallback decoder (ffmpeg through audioread) for what libsndfile cannot read (m4a, aac, odd mp3s).

    audioread directly, not librosa.load: librosa's cold import takes seconds, and a bad
    file must be refused in well under one. Raises on files nothing can decode.
    """
    import audioread

    with audioread.audio_open(str(file)) as f:
        rate, channels, total = int(f.samplerate), int(f.channels), float(f.duration or 0.0)
        if rate <= 0 or channels <= 0:
            raise ValueError("no audio stream")
        wanted = int(round(max_seconds * rate)) * channels
        chunks, have = [], 0
        for buffer in f:  # 16-bit little-endian interleaved PCM
            chunk = np.frombuffer(buffer, dtype="<i2")
            chunks.append(chunk)
            have += chunk.size
            if have >= wanted:
                break
    pcm = np.concatenate(chunks)[:wanted] if chunks else np.zeros(0, dtype="<i2")
    pcm = pcm[: pcm.size - pcm.size % channels]
    samples = (pcm.astype(np.float32) / 32768.0).reshape(-1, channels)
    return samples, rate, channels, total or samples.shape[0] / rate


register_modality(AudioModality())
