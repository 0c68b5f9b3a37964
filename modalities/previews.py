"""Preview data for the UI, built from validated tensors: PIL images and plotly figures, never gradio.

Each function takes what the loader produced, so a preview shows exactly what the encoder
will see (the padded square image, the clipped 16 kHz audio, the sampled frames, the
sampled and normalised points).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def tensor_to_pil(image: torch.Tensor) -> Any:
    """(3, H, W) float in [0, 1] -> PIL RGB image."""
    from PIL import Image

    array = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def image_thumbnail(image: torch.Tensor, max_side: int = 256) -> Any:
    """The padded image as a PIL thumbnail with its longest side <= max_side."""
    from PIL import Image

    thumb = tensor_to_pil(image)
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return thumb


def keyframe_strip(frames: torch.Tensor, height: int = 96, gap: int = 2) -> Any:
    """(F, 3, H, W) frames -> one PIL image with the frames side by side, each `height` pixels high."""
    from PIL import Image

    tiles = []
    for frame in frames:
        tile = tensor_to_pil(frame)
        width = max(1, round(tile.width * height / tile.height))
        tiles.append(tile.resize((width, height), Image.Resampling.BILINEAR))
    total = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (total, height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return strip


def audio_waveform(samples: np.ndarray, rate: int, title: str = "", max_points: int = 4000) -> Any:
    """A plotly line of the waveform; long audio is reduced to per-bucket min/max so the envelope stays visible."""
    import plotly.graph_objects as go

    samples = np.asarray(samples, dtype=np.float32)
    buckets = max(1, len(samples) // max(1, max_points // 2))
    usable = (len(samples) // buckets) * buckets
    if buckets > 1 and usable:
        grouped = samples[:usable].reshape(-1, buckets)
        y = np.stack([grouped.min(axis=1), grouped.max(axis=1)], axis=1).reshape(-1)
        t = np.repeat(np.arange(grouped.shape[0]) * buckets / rate, 2)
    else:
        y, t = samples, np.arange(len(samples)) / rate
    fig = go.Figure(go.Scatter(x=t, y=y, mode="lines", line={"width": 1}, name="waveform"))
    fig.update_layout(title=f"Waveform {title}".strip(), xaxis_title="time (s)", yaxis_title="amplitude",
                      yaxis_range=[-1, 1], height=250, margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig


def audio_spectrogram(samples: np.ndarray, rate: int, title: str = "", n_mels: int = 80) -> Any:
    """A plotly heatmap of the log-mel spectrogram (dB relative to the peak)."""
    import librosa
    import plotly.graph_objects as go

    samples = np.asarray(samples, dtype=np.float32)
    hop = 160 if rate == 16_000 else max(1, rate // 100)  # 10 ms frames, as speech encoders use
    mel = librosa.feature.melspectrogram(y=samples, sr=rate, n_fft=400 if rate == 16_000 else 2048,
                                         hop_length=hop, n_mels=n_mels)
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    times = np.arange(db.shape[1]) * hop / rate
    freqs = librosa.mel_frequencies(n_mels=n_mels, fmax=rate / 2)
    fig = go.Figure(go.Heatmap(z=db, x=times, y=freqs, colorscale="Magma", colorbar={"title": "dB"}))
    fig.update_layout(title=f"Mel spectrogram {title}".strip(), xaxis_title="time (s)", yaxis_title="frequency (Hz)",
                      height=250, margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


def point_scatter(points: torch.Tensor, title: str = "", max_points: int = 2048) -> Any:
    """A plotly 3-D scatter of (N, 6) points coloured by their rgb, with equal axis scales."""
    import plotly.graph_objects as go

    data = points.detach().cpu().numpy()
    if data.shape[0] > max_points:  # evenly spaced rows: deterministic and spread over the cloud
        data = data[np.linspace(0, data.shape[0] - 1, max_points).round().astype(int)]
    colours = [f"rgb({r},{g},{b})" for r, g, b in np.clip(np.round(data[:, 3:6] * 255), 0, 255).astype(int)]
    fig = go.Figure(go.Scatter3d(x=data[:, 0], y=data[:, 1], z=data[:, 2], mode="markers",
                                 marker={"size": 2, "color": colours}, name="points"))
    axis = {"range": [-1.05, 1.05], "title": ""}
    fig.update_layout(title=f"Point cloud {title}".strip(), height=400, margin={"l": 0, "r": 0, "t": 40, "b": 0},
                      scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube"})
    return fig
