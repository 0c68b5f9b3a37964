"""Guess what a file really is from its first bytes (magic numbers), without decoding it.

Used for two things: refusing a file whose content does not match its modality before a
decoder (which may be slow, or fall back to ffmpeg) sees it, and telling the user what the
file looks like ("it looks like a PNG image") when it cannot be decoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 512


@dataclass(frozen=True)
class Sniffed:
    """kind: a coarse family ("image", "audio", "video", "av", "npy", "ply", "glb", "text",
    "document", "archive", "unknown"); description: words for a message ("a PNG image")."""

    kind: str
    description: str


def sniff_bytes(head: bytes) -> Sniffed:
    """Classify the first bytes of a file; "unknown" when nothing matches (the decoder decides)."""
    riff_form = head[8:12] if head[:4] in (b"RIFF", b"RIFX", b"RF64") else b""
    table: list[tuple[bool, str, str]] = [
        (head.startswith(b"\x89PNG\r\n\x1a\n"), "image", "a PNG image"),
        (head.startswith(b"\xff\xd8\xff"), "image", "a JPEG image"),
        (head[:6] in (b"GIF87a", b"GIF89a"), "image", "a GIF image"),
        (head.startswith(b"BM") and len(head) >= 26, "image", "a BMP image"),
        (riff_form == b"WEBP", "image", "a WebP image"),
        (head[:4] in (b"II*\x00", b"MM\x00*"), "image", "a TIFF image"),
        (riff_form == b"WAVE", "audio", "a WAV audio file"),
        (riff_form == b"AVI ", "video", "an AVI video"),
        (head.startswith(b"fLaC"), "audio", "a FLAC audio file"),
        (head.startswith(b"OggS"), "audio", "an Ogg audio file"),
        (head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0),
         "audio", "an MP3 audio file"),
        (head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"), "audio", "an AIFF audio file"),
        (head[4:8] == b"ftyp", "av", "an MP4/MOV container"),
        (head.startswith(b"\x1a\x45\xdf\xa3"), "av", "a Matroska/WebM container"),
        (head.startswith(b"\x93NUMPY"), "npy", "a NumPy .npy array"),
        (head.startswith(b"ply\n") or head.startswith(b"ply\r\n"), "ply", "a PLY 3-D file"),
        (head.startswith(b"glTF"), "glb", "a binary glTF 3-D model"),
        (head.startswith(b"%PDF"), "document", "a PDF document"),
        (head.startswith(b"PK\x03\x04"), "archive", "a ZIP archive (or an Office document)"),
        (head.startswith(b"\x1f\x8b"), "archive", "a gzip archive"),
        (head.startswith(b"7z\xbc\xaf"), "archive", "a 7-Zip archive"),
        (head.startswith(b"\x80") and len(head) > 1 and head[1] in range(2, 6), "pickle", "a Python pickle"),
    ]
    for hit, kind, description in table:
        if hit:
            return Sniffed(kind, description)
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return Sniffed("document", "an HTML page")
    if _looks_like_text(head):
        return Sniffed("text", "a text file")
    return Sniffed("unknown", "an unknown binary file")


def sniff_file(path: Path) -> Sniffed:
    """Read the first bytes of `path` and classify them."""
    with open(path, "rb") as f:
        return sniff_bytes(f.read(HEAD_BYTES))


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 without NUL bytes or many control characters (a partial last character is fine)."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # a real decode error, not a character cut at the end
            return False
        text = head[: err.start].decode("utf-8")
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    return controls <= len(text) // 100
