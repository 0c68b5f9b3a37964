"""Audio (16 kHz mono WAV, PCM 16-bit, ≤ 4 s) of a scene: per object, its spoken name, then its sound.

The spoken phrase ("a red ball", espeak-ng) is the only way colour reaches the audio
modality; the synthesized sound (world.SOUNDS) lets an expert recognise the category
from timbre and rhythm as well. Objects follow each other in scene order.

espeak-ng is deterministic for the same text, voice, speed and pitch, so each such
combination is synthesized once per process and cached. Without espeak-ng the audio holds
the sounds only and `speech_available()` says so (colour questions about audio are then
not generated).
"""
from __future__ import annotations

import functools
import math
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np

from .scene import Scene, scene_rng

SAMPLE_RATE = 16_000
VOICES = ("en-us", "en-gb")
SPEEDS = (190, 215)  # words per minute
PITCHES = (35, 50, 65)
ESPEAK_TIMEOUT_S = 20
SOUND_SECONDS = 0.35
GAP_SECONDS = 0.06
NOISE_STD = 0.003


@functools.lru_cache(maxsize=1)
def speech_available() -> bool:
    """Whether espeak-ng is installed (checked once; warns once when it is not)."""
    ok = shutil.which("espeak-ng") is not None
    if not ok:
        warnings.warn("espeak-ng was not found: synthetic audio will hold synthesized sounds only, "
                      "without spoken names (install it with apt-get install espeak-ng)", stacklevel=2)
    return ok


@functools.lru_cache(maxsize=2048)
def speak(phrase: str, voice: str = "en-us", speed: int = 185, pitch: int = 50) -> np.ndarray:
    """espeak-ng's rendering of `phrase` as float32 at 16 kHz, silence trimmed (read-only array)."""
    cmd = ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), phrase]
    result = subprocess.run(cmd, capture_output=True, timeout=ESPEAK_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng failed (exit {result.returncode}) for {phrase!r}: "
                           f"{result.stderr.decode(errors='replace').strip()[-300:]}")
    rate, pcm = _parse_stream_wav(result.stdout)
    from scipy.signal import resample_poly

    g = math.gcd(SAMPLE_RATE, rate)
    audio = resample_poly(pcm.astype(np.float64) / 32768.0, SAMPLE_RATE // g, rate // g)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    audio = audio[loud[0]: loud[-1] + 1] if len(loud) else audio
    audio = (0.5 * audio / max(1e-6, float(np.abs(audio).max()))).astype(np.float32)
    audio.setflags(write=False)  # cached: callers must copy, never modify
    return audio


def _parse_stream_wav(data: bytes) -> tuple[int, np.ndarray]:
    """(sample rate, int16 samples) from espeak-ng's --stdout WAV, whose size fields are
    placeholders (0x7fffffff, it streams), so the data chunk runs to the end of the bytes."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError(f"espeak-ng did not write a WAV stream (first bytes {data[:12]!r})")
    pos = 12
    rate = None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            if channels != 1 or bits != 16:
                raise RuntimeError(f"espeak-ng wrote {channels} channel(s) of {bits}-bit audio; expected mono 16-bit")
        elif chunk == b"data":
            if rate is None:
                raise RuntimeError("espeak-ng's WAV stream has its data before its format chunk")
            body = data[pos + 8:]
            return rate, np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
        pos += 8 + size
    raise RuntimeError("espeak-ng's WAV stream has no data chunk")


def _tone(freq: np.ndarray | float, t: np.ndarray) -> np.ndarray:
    """A sine whose (possibly time-varying) frequency is integrated to a phase."""
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), t.shape)
    return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)


def sound(category: str, rng: np.random.Generator) -> np.ndarray:
    """SOUND_SECONDS of a category's sound, float32 with peak ≈ 0.4-0.55, pitch jittered by ±8 %."""
    n = int(SOUND_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    k = float(rng.uniform(0.92, 1.08))
    if category == "ball":  # three blips, closer and closer: a bounce
        y = np.zeros(n)
        for start in (0.0, 0.17, 0.29):
            tt = t - start
            on = tt >= 0
            y[on] += np.sin(2 * np.pi * 660 * k * tt[on]) * np.exp(-tt[on] / 0.025)
    elif category == "cube":  # band-limited square wave: a buzz
        f = 140 * k
        y = sum(np.sin(2 * np.pi * h * f * t) / h for h in range(1, 16, 2)) * 0.8
        y *= np.minimum(1, t / 0.02) * np.minimum(1, (SOUND_SECONDS - t) / 0.05)
    elif category == "cone":  # exponential sweep up
        y = _tone(300 * k * (5.0 ** (t / SOUND_SECONDS)), t) * np.minimum(1, (SOUND_SECONDS - t) / 0.03)
    elif category == "ring":  # inharmonic partials with a long decay: a bell
        y = sum(a * np.sin(2 * np.pi * 880 * k * p * t) for p, a in ((1, 1), (2.0, .5), (2.76, .4), (5.4, .25)))
        y *= np.exp(-t / 0.15) * np.minimum(1, t / 0.003)
    elif category == "star":  # high tone with a fast tremolo: a twinkle
        y = (np.sin(2 * np.pi * 1760 * k * t) + 0.4 * np.sin(2 * np.pi * 2637 * k * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 14 * t))
    elif category == "drum":  # two low hits: a pitch drop plus a short noise burst each
        y = np.zeros(n)
        for start in (0.0, 0.2):
            tt = t - start
            on = tt >= 0
            env = np.exp(-tt[on] / 0.06)
            y[on] += _tone(50 * k + 70 * k * np.exp(-tt[on] / 0.03), tt[on]) * env
            y[on] += 0.3 * rng.normal(size=int(on.sum())) * np.exp(-tt[on] / 0.01)
    elif category == "cross":  # four alternating beeps: a two-tone signal
        step = SOUND_SECONDS / 4
        freq = np.where((t // step) % 2 == 0, 600 * k, 900 * k)
        y = np.sin(2 * np.pi * freq * t) * ((t % step) < step - 0.012)
    elif category == "diamond":  # exponential sweep down
        y = _tone(1500 * k * (0.2 ** (t / SOUND_SECONDS)), t) * np.minimum(1, (SOUND_SECONDS - t) / 0.03)
    else:
        raise ValueError(f"no sound for category {category!r}")
    y = np.asarray(y, dtype=np.float64)
    return (float(rng.uniform(0.4, 0.55)) * y / max(1e-9, float(np.abs(y).max()))).astype(np.float32)


def waveform(scene: Scene, speech: bool | None = None) -> np.ndarray:
    """The scene's audio as float32 at 16 kHz. `speech=None` speaks when espeak-ng is installed."""
    rng = scene_rng(scene, "audio")
    speech = speech_available() if speech is None else speech
    voice, speed, pitch = VOICES[int(rng.integers(len(VOICES)))], int(rng.choice(SPEEDS)), int(rng.choice(PITCHES))
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    pieces = [np.zeros(int(rng.uniform(0.05, 0.15) * SAMPLE_RATE), dtype=np.float32)]
    for i, obj in enumerate(scene.objects):
        if speech:
            pieces += [speak(obj.phrase, voice, speed, pitch), gap]
        pieces += [sound(obj.category, rng)] + ([gap, gap] if i < len(scene.objects) - 1 else [gap])
    audio = np.concatenate(pieces)
    audio = audio + rng.normal(0.0, NOISE_STD, size=audio.shape).astype(np.float32)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def write_wav(scene: Scene, path: Path, speech: bool | None = None) -> Path:
    """Write the scene as a 16 kHz mono 16-bit WAV (speech as in `waveform`)."""
    import soundfile as sf

    sf.write(str(path), waveform(scene, speech), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return path


def render_audio(scene: Scene, path: Path) -> Path:
    """Write the scene as a 16 kHz mono 16-bit WAV, with spoken names when espeak-ng is installed."""
    return write_wav(scene, path)
