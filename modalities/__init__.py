"""File -> validated tensor -> encoder features, one module per modality. Never imports gradio.

    from modalities import get_modality
    loaded = get_modality("image").load("cat.jpg")   # LoadedInput; ModalityError on bad input
    preview = get_modality("image").preview(loaded)  # {"thumbnail": PIL.Image}

Importing this package is cheap: the heavy decoders (librosa, decord, open3d, plotly) are
imported inside the functions that use them. The import order below is the registration
order, which is the order modalities appear in prompts (image, audio, video, point).
"""
from .base import LoadedInput, Limits, Modality, ModalityError
from .registry import get_modality, list_modalities, modality_for_file, register_modality
from . import image, audio, video, point  # noqa: E401,F401  (each registers itself; order matters)
from .image import ImageLimits
from .audio import AudioLimits
from .video import VideoLimits
from .point import PointLimits, point_cloud_to_ply_bytes, save_ply

MODALITY_NAMES: tuple[str, ...] = tuple(list_modalities())

__all__ = [
    "MODALITY_NAMES", "LoadedInput", "Limits", "Modality", "ModalityError",
    "get_modality", "list_modalities", "modality_for_file", "register_modality",
    "ImageLimits", "AudioLimits", "VideoLimits", "PointLimits", "point_cloud_to_ply_bytes", "save_ply",
]
