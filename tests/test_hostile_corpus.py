"""The hostile input corpus (tests/hostile_corpus.py) through the paths the app and the CLI use.

Every case is refused with one of the project's own errors (never a raw KeyError,
UnicodeDecodeError, RecursionError or pickle error), whose message says what is wrong,
shows no server path and no link target; nothing is unpickled; the studio keeps what it
had; and a valid request right after the corpus still works. The app part sends a few of
the files to the running app's ``/compare`` and ``/add_expert`` through gradio_client.

Tiny in-process models (composition/factory.py); the whole file runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from composition.composer import ComposedModel
from composition.errors import CompositionError
from modalities import ModalityError, get_modality
from modalities.encoders import EncoderError
from studio import handlers
from studio.mcub_tab import SOURCES, load_items
from studio.inputs import point_preview
from studio.session import Studio
from tests.hostile_corpus import (Case, KINDS, build_corpus, case_specs, valid_experts, valid_inputs, valid_mcub)
from composition.random_models import tiny_base

REPO = Path(__file__).resolve().parent.parent
SPECS = case_specs()
PROJECT_ERRORS = (ModalityError, CompositionError, EncoderError)
MAX_MESSAGE_CHARS = 700
# ffmpeg's audioread fallback on the garbage mp3 announces itself; expected, not a test problem.
pytestmark = [pytest.mark.filterwarnings("ignore:PySoundFile failed:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*audioread.*:FutureWarning")]


def sized_features(expert, item) -> torch.Tensor:
    """A stand-in encoder: 4 deterministic tokens of the size the expert's projector takes."""
    flat = item.data.float().flatten()
    n = 4 * expert.config.projector.in_dim
    return flat[torch.linspace(0, flat.numel() - 1, n).long()].reshape(4, -1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, {case.name: case for case in build_corpus(root)}


def tiny_studio(root: Path) -> Studio:
    """A studio on the tiny base with the corpus's four valid experts (image, audio, video, point)."""
    studio = Studio(ComposedModel(tiny_base(), feature_fn=sized_features))
    handlers.add_experts(studio, str(valid_experts(root)), [])
    return studio


@pytest.fixture(scope="module")
def studio(corpus) -> Studio:
    return tiny_studio(corpus[0])


def submit(case: Case, studio: Studio) -> None:
    """Hand the case to the handler the app (and the CLI) would use for it."""
    if case.kind in ("image", "audio", "video", "point"):
        handlers.compare_api(studio, "What is this?", **{case.kind: str(case.path)})
        if case.kind == "point":  # the app also previews a point file as soon as it is uploaded
            point_preview(str(case.path))
    elif case.kind == "expert":
        handlers.add_experts(studio, str(case.path), [])
    elif case.kind == "mcub":
        load_items(SOURCES[2], str(case.path), 4)
    else:  # pragma: no cover - KINDS is closed
        raise AssertionError(case.kind)


def leaks(message: str, root: Path, case: Case | None = None) -> list[str]:
    """Server-side strings found in a message: the corpus and repository paths, link targets."""
    secrets = {str(root), str(root.resolve()), str(REPO), *(case.hidden if case else ())}
    return [s for s in secrets if s in message]


def check_refusal(case: Case, error: BaseException | None, root: Path) -> str:
    assert error is not None, f"{case.name} ({case.category}) was accepted"
    assert isinstance(error, PROJECT_ERRORS), (
        f"{case.name}: a raw {type(error).__module__}.{type(error).__name__} escaped: {error}")
    message = str(error)
    assert case.expect in message, f"{case.name}: {case.expect!r} not in {message!r}"
    assert not leaks(message, root, case), f"{case.name} leaks {leaks(message, root, case)}: {message!r}"
    assert "Traceback" not in message and 'File "' not in message, message
    assert 0 < len(message) <= MAX_MESSAGE_CHARS, f"{case.name}: {len(message)} characters"
    assert message.isprintable(), f"{case.name}: control characters in {message!r}"
    if case.tripwire is not None:
        assert not case.tripwire.exists(), f"{case.name}: a pickle was executed"
    return message


REFUSED: set[str] = set()


def refuse(case: Case, studio: Studio, root: Path) -> str:
    before = studio.expert_names
    error = None
    try:
        submit(case, studio)
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        error = exc
    message = check_refusal(case, error, root)
    assert studio.expert_names == before, f"{case.name} changed the loaded experts"
    REFUSED.add(case.name)
    return message


def test_the_corpus_covers_every_kind_and_category():
    kinds = {k: sum(s.kind == k for s in SPECS) for k in KINDS}
    assert len(SPECS) >= 50 and all(n >= 5 for n in kinds.values()), kinds
    categories = {s.category for s in SPECS}
    for needed in ("wrong-content", "truncated", "pickle", "huge-header", "oversize", "symlink", "special-file",
                   "path-traversal", "wrong-type", "wrong-shape"):
        assert needed in categories
    for kind in ("image", "audio", "video", "point"):
        assert {"pickle", "oversize"} <= {s.category for s in SPECS if s.kind == kind}, kind


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_hostile_input_is_refused_clearly(name, corpus, studio):
    root, cases = corpus
    refuse(cases[name], studio, root)


def test_a_valid_request_right_after_the_corpus_still_works(corpus, studio, tmp_path):
    root, cases = corpus
    for case in cases.values():  # the whole corpus first, if this test runs alone
        if case.name not in REFUSED:
            refuse(case, studio, root)
    assert sorted(studio.expert_names) == ["audio", "image", "point", "video"]
    files = {m: str(p) for m, p in valid_inputs(root).items()}
    payload = handlers.compare_api(studio, "What do these have in common?", **files)
    names = [v["name"] for v in payload["variants"]]
    assert names[0] == "DAMC" and {f"expert:{m}" for m in files} <= set(names)
    assert all(isinstance(v["answer"], str) and v["new_tokens"] > 0 for v in payload["variants"])
    # An expert folder still loads, and an MCUB file still reads.
    late = renamed_copy(valid_experts(root) / "image", tmp_path / "image-late", "image-late")
    assert handlers.add_experts(studio, str(late), [])[1][-1] == "image-late"
    items = load_items(SOURCES[2], str(valid_mcub(root)), 4)
    assert [m for m, _ in items[0].inputs] == ["image", "audio", "point"]


def renamed_copy(source: Path, folder: Path, name: str) -> Path:
    shutil.copytree(source, folder)
    config = folder / "expert.json"
    config.write_text(config.read_text().replace(f'"name": "{source.name}"', f'"name": "{name}"'))
    return folder


def test_links_that_stay_inside_still_load(corpus, tmp_path):
    """What the link checks must keep: a linked expert folder, and a hub snapshot linking into its own blobs/."""
    root, _ = corpus
    studio = Studio(ComposedModel(tiny_base(), feature_fn=sized_features))
    real = renamed_copy(valid_experts(root) / "audio", tmp_path / "real", "linked")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert handlers.add_experts(studio, str(tmp_path / "link"), [])[1] == ["linked"]
    # huggingface_hub's cache: snapshots/<revision>/<subfolder>/<file> -> ../../../blobs/<hash>
    repo = tmp_path / "hub" / "models--someone--experts"
    snapshot = repo / "snapshots" / "0123abc" / "image"
    source = renamed_copy(valid_experts(root) / "image", tmp_path / "hub-source", "from-hub")
    for i, file in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * len(link.relative_to(repo).parts[:-1]), "blobs", blob.name))
    assert (snapshot / "text" / "adapter_model.safetensors").is_symlink()
    assert handlers.add_experts(studio, str(snapshot), [])[1] == ["linked", "from-hub"]


def test_no_pickle_was_ever_executed(corpus, studio):
    root, cases = corpus
    for case in cases.values():
        if case.name not in REFUSED:
            refuse(case, studio, root)
    tripwires = [c.tripwire for c in cases.values() if c.tripwire is not None]
    assert len(tripwires) >= 6
    assert not [t for t in tripwires if t.exists()]
    assert not list((root / "tripwires").iterdir())


def test_oversize_files_are_refused_before_any_byte_is_decoded(corpus):
    root, cases = corpus
    for kind in ("image", "audio", "video", "point"):
        case = cases[f"{kind}/over-size-cap"]
        limit = get_modality(kind).limits.max_bytes
        assert case.path.stat().st_size > limit
        assert case.path.stat().st_blocks * 512 < 1024 * 1024  # sparse: nothing big was written or read


# --- static guarantees: never unpickle, no remote code unless asked ---------------------------------
SOURCE_DIRS = ("composition", "modalities", "studio", "training")


def project_sources() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))] + [REPO / "app.py"]


def test_the_code_never_unpickles_or_trusts_remote_code():
    found = []
    for path in project_sources():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO)
        for pattern in (r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True", r"trust_remote_code\s*=\s*True",
                        r"\bdill\b", r"\bjoblib\.load\("):
            found += [f"{rel}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                found.append(f"{rel}: {call.group(0)[:80]}")
    assert not found, found


def test_remote_code_is_off_unless_asked():
    import inspect

    from composition.base_llm import load_base_llm

    assert inspect.signature(load_base_llm).parameters["trust_remote_code"].default is False


# --- through the running app (gradio_client) -------------------------------------------------------
APP_CASES = ("image/text-as-png", "audio/pickle-as-wav", "video/truncated-mp4", "point/pickled-npy",
             "point/gltf-parent-uri")
APP_EXPERT_CASES = ("expert/projector-is-a-pickle", "expert/link-projector-outside", "expert/json-deep-nesting")


def patient(url_ok, seconds: float = 60.0):
    """``url_ok`` retried until ``seconds`` have passed."""
    def check(url: str) -> bool:
        deadline = time.monotonic() + seconds
        while not url_ok(url):
            if time.monotonic() > deadline:
                return False
        return True
    return check


@pytest.fixture(scope="module")
def app_client(corpus):
    """The app (app.py's own build and launch code) over a tiny studio, on a free loopback port."""
    import app
    from gradio import networking
    from gradio_client import Client

    from tests.app_server import free_port

    demo = app.build_demo(tiny_studio(corpus[0]))
    with pytest.MonkeyPatch.context() as patch:
        # gradio gives up on its own server after one 3 s HEAD timeout; on a loaded 2-core machine, wait longer.
        patch.setattr(networking, "url_ok", patient(networking.url_ok))
        _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def app_error(call) -> str:
    with pytest.raises(Exception) as info:
        call()
    return str(info.value)


def test_the_app_refuses_hostile_files_and_keeps_serving(corpus, app_client):
    from gradio_client import handle_file

    root, cases = corpus
    for name in APP_CASES:
        case = cases[name]
        message = app_error(lambda: app_client.predict(question="What is this?", api_name="/compare",
                                                       **{case.kind: handle_file(str(case.path))}))
        assert case.expect in message, f"{name}: {message!r}"
        assert not leaks(message, root, case) and "/gradio/" not in message, f"{name}: {message!r}"
        if case.tripwire is not None:
            assert not case.tripwire.exists()
    for name in APP_EXPERT_CASES:
        case = cases[name]
        message = app_error(lambda: app_client.predict(str(case.path), [], api_name="/add_expert"))
        assert case.expect in message and not leaks(message, root, case), f"{name}: {message!r}"
    assert not list((root / "tripwires").iterdir())
    valid = valid_inputs(root)
    ok = app_client.predict(question="What is it?", image=handle_file(str(valid["image"])),
                            point=handle_file(str(valid["point"])), api_name="/compare")
    assert [v["name"] for v in ok["variants"]][:3] == ["DAMC", "expert:image", "expert:point"]
    assert all(isinstance(v["answer"], str) for v in ok["variants"])
