"""Kaldi log-mel filterbank features ("fbank"), written here because torchaudio cannot be installed.

BEATs was trained on `torchaudio.compliance.kaldi.fbank(wave * 2**15, num_mel_bins=128,
sample_frequency=16000, frame_length=25, frame_shift=10)` (microsoft/unilm `beats/BEATs.py`,
`preprocess`; THUNLP-MT/ModelCompose `modelcompose/model/multimodal_encoder/beats/audio_processor.py`).
torchaudio's last releases are pinned to older torch versions than this project's, so this module
implements the same computation from Kaldi's published definition (`feat/feature-window.cc`,
`feat/mel-computations.cc`, `feat/feature-fbank.cc`), with torchaudio's defaults for everything
the call above leaves unset:

  frames      window 25 ms = 400 samples, shift 10 ms = 160 samples, snip_edges=True:
              1 + (N - 400) // 160 frames, none when N < 400 (no padding at the edges)
  dither      0 (torchaudio's default; also what makes features deterministic)
  DC offset   each frame minus its own mean (remove_dc_offset=True)
  pre-emph.   x[i] -= 0.97 * x[i-1], and x[0] -= 0.97 * x[0] (Kaldi's convention for the first sample)
  window      "povey": (0.5 - 0.5 cos(2 pi n / (L - 1)))^0.85, n = 0..L-1
  FFT         zero-padded to the next power of two (512), power spectrum |X|^2 (257 bins)
  mel banks   Kaldi's mel scale 1127 ln(1 + f / 700); 128 triangles equally spaced in mel between
              low_freq = 20 Hz and high_freq = Nyquist; FFT bin k sits at k * fs / 512 for
              k = 0..255, the Nyquist bin (256) gets weight 0 (Kaldi uses num_fft_bins = 256)
  log         log(max(energy, float32 epsilon))  (use_log_fbank=True, use_energy=False)

`tests/test_paper_encoders.py` checks this against a float64 reference written from the same
formulas loop by loop, and the frame-count formula.
"""
from __future__ import annotations

import math

import torch

from .base import EncoderError

PREEMPHASIS = 0.97
POVEY_POWER = 0.85
LOW_FREQ = 20.0
LOG_FLOOR = torch.finfo(torch.float32).eps  # torchaudio: torch.finfo(torch.float).eps


def kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


def window_sizes(sample_rate: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    """(window samples, shift samples, FFT size): Kaldi truncates ms * rate / 1000 to an int."""
    size = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    if size < 2 or shift < 1:
        raise EncoderError(f"fbank window of {frame_length_ms} ms / shift {frame_shift_ms} ms at {sample_rate} Hz "
                           "is shorter than 2 samples; use a longer window")
    fft = 1 << (size - 1).bit_length()  # round_to_power_of_two
    return size, shift, fft


def num_frames(num_samples: int, window: int, shift: int) -> int:
    """Frames Kaldi makes with snip_edges=True: 1 + (N - window) // shift, 0 for N < window."""
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float = LOW_FREQ,
              high_freq: float = 0.0) -> torch.Tensor:
    """Triangular filters (num_bins, fft_size // 2 + 1) in float64; high_freq <= 0 means Nyquist + high_freq."""
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise EncoderError(f"fbank needs 0 <= low_freq ({low_freq}) < high_freq ({high}) <= Nyquist ({nyquist})")
    mel_low, mel_high = kaldi_mel(low_freq), kaldi_mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=torch.float64)[:, None]
    left, centre, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    half = fft_size // 2
    bin_mel = kaldi_mel(torch.arange(half, dtype=torch.float64) * (sample_rate / fft_size))[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin has no filter weight


def povey_window(size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.hann_window(size, periodic=False, dtype=dtype).pow(POVEY_POWER)


def kaldi_fbank(waveform: torch.Tensor, *, sample_rate: int = 16_000, num_mel_bins: int = 128,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> torch.Tensor:
    """Log-mel fbank (frames, num_mel_bins) float32 of a mono waveform (N,), on the waveform's device.

    The waveform is in the scale the caller wants (BEATs multiplies [-1, 1] audio by 2**15
    first). Computed in float64 and returned as float32, so it does not depend on the
    caller's dtype. Raises EncoderError when the waveform is shorter than one window.
    """
    if waveform.ndim != 1:
        raise EncoderError(f"kaldi_fbank takes a mono waveform of shape (N,), got {tuple(waveform.shape)}")
    size, shift, fft = window_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    count = num_frames(waveform.shape[0], size, shift)
    if count == 0:
        raise EncoderError(f"audio of {waveform.shape[0]} samples is shorter than one fbank window "
                           f"({size} samples = {frame_length_ms} ms at {sample_rate} Hz); give a longer clip")
    x = waveform.to(torch.float64)
    frames = x.as_strided((count, size), (shift * x.stride(0), x.stride(0)))  # snip_edges framing
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC offset
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0], as Kaldi does
    frames = (frames - PREEMPHASIS * previous) * povey_window(size).to(x.device)
    power = torch.fft.rfft(frames, n=fft).abs().pow(2)  # (frames, fft/2 + 1)
    banks = mel_banks(num_mel_bins, fft, sample_rate).to(x.device)
    energies = power @ banks.T
    return torch.clamp(energies, min=LOG_FLOOR).log().to(torch.float32)
