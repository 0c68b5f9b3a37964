"""Faults while the app runs: an expert folder removed, the GPU out of memory, a user cancelling a
generation, coefficients moved during a generation. The app stays consistent and says what happened.

Handler-level tests use tiny random models (no server). The last tests go through the real
server with gradio_client (real base, random experts; marked slow).
"""
from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch

import composition.composer as composer
from composition.expert import save_expert
from studio import handlers, run
from studio.cards import STOPPED
from studio.session import Studio
from composition.config import CompositionConfig
from tests.test_studio_handlers import CHEETAH, MEDIA, ask, controls, file_features, make_studio, short
from composition.random_models import random_expert, tiny_base

OOM = "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total capacity)"
IMAGE_ONLY = [CHEETAH, None, None, None]


def studio_from_folders(tmp_path, modalities=("image", "audio")) -> Studio:
    """A tiny studio whose experts were loaded from folders on disk (so the folders can go away)."""
    base = tiny_base()
    for i, m in enumerate(modalities):
        save_expert(random_expert(base, m, m, "decoupled", 200 + i), tmp_path / "experts" / m)
    studio = Studio(composer.ComposedModel(base, feature_fn=file_features))
    assert studio.add_expert_folder(str(tmp_path / "experts")) == sorted(modalities)  # folder order
    return studio


def model_is_free(studio: Studio) -> bool:
    """The engine's lock can be taken by another thread and no routing is left set."""
    got = []

    def take() -> None:
        got.append(studio.cm.lock.acquire(timeout=5))
        if got[0]:
            studio.cm.lock.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return bool(got and got[0]) and studio.cm.router.token_coef is None


def pairs(payload: dict) -> list[tuple[str, str]]:
    return [(v["name"], v["answer"]) for v in payload["variants"]]


# --- an expert folder removed while the app runs ----------------------------------------------
def test_a_removed_expert_folder_is_reported_and_its_expert_keeps_answering(tmp_path):
    studio = studio_from_folders(tmp_path)
    before = handlers.compare_api(studio, "hi", image=CHEETAH)
    assert before["warnings"] == [] and "removed" not in handlers.catalog_message(studio)

    shutil.rmtree(tmp_path / "experts" / "image")

    after = handlers.compare_api(studio, "hi", image=CHEETAH)
    assert pairs(after) == pairs(before)  # the loaded copy answers exactly as before
    assert len(after["warnings"]) == 1 and "folder of expert 'image' (image/) was removed" in after["warnings"][0]
    rows, message = handlers.catalog_status(studio)
    assert [r[-1] for r in rows] == ["audio", "image (removed)"]
    assert "keeps answering" in message
    page = list(handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, short(studio))))[-1]
    assert "was removed or moved while the app runs" in page
    # The selection decides which warnings a request gets: audio alone does not mention image.
    audio_only = handlers.settings_of(studio, short(studio, experts=["audio"]))
    req = run.prepare(studio, audio_only, "hi", {})
    assert req.warnings == []
    # Adding it again from the removed place says why it cannot.
    with pytest.raises(ValueError, match="does not exist"):
        handlers.add_experts(studio, str(tmp_path / "experts" / "image"), studio.expert_names)
    assert studio.expert_names == ["audio", "image"]
    assert handlers.save_config(studio, controls(studio))  # saving a config still works


def test_a_folder_removed_while_it_is_being_loaded_adds_nothing_and_says_so(tmp_path, monkeypatch):
    base = tiny_base()
    for i, m in enumerate(("image", "audio")):
        save_expert(random_expert(base, m, m, "decoupled", 300 + i), tmp_path / "experts" / m)
    studio = Studio(composer.ComposedModel(base, feature_fn=file_features))
    slots_before = len(studio.cm.slots)

    import composition.expert as expert_module

    real = expert_module.read_safetensors

    def vanishing(path, what):  # the audio folder is deleted while its weights are being read
        if path.parent.name == "audio":
            shutil.rmtree(path.parent)
        return real(path, what)

    monkeypatch.setattr(expert_module, "read_safetensors", vanishing)
    rows, names, selection, message = handlers.add_experts(studio, str(tmp_path / "experts"), [])
    assert names == ["image"] and selection == ["image"] and [r[0] for r in rows] == ["image"]
    assert "expert folder 'audio' was removed while it was being loaded" in message
    assert "nothing was added from it" in message
    # Only image's two deltas got slots: the vanished expert left nothing in the model.
    assert len(studio.cm.slots) == slots_before + 2
    with pytest.raises(ValueError, match="does not exist"):  # the single folder is gone: an error, nothing added
        handlers.add_experts(studio, str(tmp_path / "experts" / "audio"), ["image"])
    assert handlers.compare_api(studio, "hi", image=CHEETAH)["variants"]


def test_an_unreadable_folder_during_loading_is_an_expert_error(tmp_path, monkeypatch):
    studio = studio_from_folders(tmp_path, ("image",))
    save_expert(random_expert(studio.cm.base, "audio", "audio", "decoupled", 9), tmp_path / "more" / "audio")

    def gone(folder):
        raise FileNotFoundError(2, "No such file or directory", str(folder))

    monkeypatch.setattr(studio.cm, "load_expert", gone)
    with pytest.raises(ValueError, match="could not be read while loading it .*No such file or directory"):
        handlers.add_experts(studio, str(tmp_path / "more" / "audio"), ["image"])
    assert studio.expert_names == ["image"]


# --- out of GPU memory -----------------------------------------------------------------
def oom_when(monkeypatch, fails) -> list[int]:
    """Make the engine's generation raise CUDA's OutOfMemoryError when ``fails(batch_rows)``; returns the rows seen."""
    real = composer.generate_batch
    seen = []

    class OutOfMemoryModel:  # the model as the engine sees it, whose forward pass runs out of memory
        def __init__(self, model):
            self.forward = model.forward

        def __call__(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError(OOM)

    def generate_batch(model, router, batch, *args, **kwargs):
        rows = batch.embeds.shape[0]
        seen.append(rows)
        # The failure happens inside the engine's forward pass (routing set), as it would on a GPU.
        return real(OutOfMemoryModel(model) if fails(rows) else model, router, batch, *args, **kwargs)

    monkeypatch.setattr(composer, "generate_batch", generate_batch)
    return seen


def test_out_of_memory_for_the_batch_retries_one_variant_at_a_time(monkeypatch):
    studio = make_studio()
    settings = handlers.default_settings(studio)
    req = run.prepare(studio, settings, "hi", {"image": [CHEETAH]})
    alone = studio.cm.compare("hi", req.inputs, req.plan, config=settings.generation(), batched=False)
    seen = oom_when(monkeypatch, lambda rows: rows > 1)
    payload = handlers.compare_api(studio, "hi", image=CHEETAH)
    assert seen == [2, 1, 1]  # the batch of DAMC + expert:image failed, then each row alone
    assert pairs(payload) == [(a.name, a.answer) for a in alone]
    assert payload["warnings"] == [run.OOM_RETRY_NOTE.format(n=2)]
    assert model_is_free(studio)


def test_out_of_memory_even_alone_is_a_readable_error_and_the_app_recovers(monkeypatch):
    studio = make_studio()
    reference = handlers.compare_api(studio, "hi", image=CHEETAH)
    oom_when(monkeypatch, lambda rows: True)
    with pytest.raises(run.OutOfMemory, match=r"the GPU ran out of memory \(CUDA out of memory\. Tried to allocate "
                                              r"20\.00 GiB.*\) even running one variant at a time.*ready for the next"):
        handlers.compare_api(studio, "hi", image=CHEETAH)
    assert isinstance(run.OutOfMemory("x"), ValueError)  # so the app shows it as gr.Error, without a traceback
    with pytest.raises(run.OutOfMemory):
        list(handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, short(studio))))
    assert model_is_free(studio)
    monkeypatch.undo()
    assert pairs(handlers.compare_api(studio, "hi", image=CHEETAH)) == pairs(reference)


def test_a_stream_says_when_it_fell_back_to_one_variant_at_a_time(monkeypatch):
    studio = make_studio()
    oom_when(monkeypatch, lambda rows: rows > 1)
    pages = list(handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, short(studio))))
    assert "ran one at a time instead" in pages[-1]
    assert "tokens" in pages[-1] and "streaming" not in pages[-1]


def test_other_errors_are_not_mistaken_for_out_of_memory(monkeypatch):
    studio = make_studio()

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in a layer")

    monkeypatch.setattr(composer, "generate_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        handlers.compare_api(studio, "hi", image=CHEETAH)
    assert run.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not run.is_out_of_memory(ValueError("out of range"))


def test_out_of_memory_while_composing_a_dense_merge_is_a_message(monkeypatch):
    import composition.methods as methods

    studio = make_studio()
    values = short(studio, methods=["ties"])

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(OOM)

    monkeypatch.setattr(methods, "merge_deltas", no_memory)
    timing, formulas = handlers.recompose(studio, ask("hi", IMAGE_ONLY, False, values))
    assert timing.startswith("⚠️ out of GPU memory while composing (CUDA out of memory.") and "Nothing was changed" in timing
    assert formulas
    monkeypatch.undo()
    assert handlers.recompose(studio, ask("hi", IMAGE_ONLY, False, values))[0].startswith("composed ")


# --- cancelling, and coefficients moved during a generation --------------------------------------
class SlowGeneration:
    """Wraps the engine's generation: no EOS (it runs to max_new_tokens), a pause per token, and a
    record of every step and of whether the stop flag ended it."""

    def __init__(self, monkeypatch, pause: float = 0.02):
        self.steps = 0
        self.stopped_by_flag = False
        self.finished = threading.Event()
        real = composer.generate_batch

        def generate_batch(model, router, batch, table, config, eos_ids, on_step=None, should_stop=None):
            def step(tokens):
                self.steps += 1
                time.sleep(pause)
                if on_step is not None:
                    on_step(tokens)

            def stop():
                flag = should_stop is not None and should_stop()
                self.stopped_by_flag |= flag
                return flag

            try:
                return real(model, router, batch, table, config, [], step, stop)
            finally:
                self.finished.set()

        monkeypatch.setattr(composer, "generate_batch", generate_batch)


def compare_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "studio-compare" and t.is_alive()]


def test_cancelling_a_stream_stops_the_generation_thread_and_the_next_request_runs(monkeypatch):
    studio = make_studio()
    slow = SlowGeneration(monkeypatch)
    pages = handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, short(studio, max_new_tokens=400)))
    first = next(pages)
    partial = next(pages)
    assert "generating…" in first and "streaming" in partial
    pages.close()  # what gradio does to a generator when the user presses Stop
    assert slow.finished.wait(5), "the generation thread did not stop"
    assert slow.stopped_by_flag and slow.steps < 400
    deadline = time.monotonic() + 5
    while compare_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not compare_threads() and model_is_free(studio)
    shown = handlers.stopped_cards(partial)
    assert STOPPED in shown and "stopped</span>" in shown and "streaming" not in shown
    assert handlers.stopped_cards(shown) == shown and "mc-empty" in handlers.stopped_cards(None)
    # The next request runs to the end.
    monkeypatch.undo()
    final = list(handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, short(studio))))[-1]
    assert "tokens" in final and "streaming" not in final and "cut short" not in final
    assert handlers.stopped_cards(final) == final  # Stop after the end leaves finished answers alone


def test_a_stop_flag_set_from_outside_ends_early_and_says_so(monkeypatch):
    studio = make_studio()
    SlowGeneration(monkeypatch)
    settings = handlers.settings_of(studio, short(studio, max_new_tokens=400))
    req = run.prepare(studio, settings, "hi", {"image": [CHEETAH]})
    stop = threading.Event()
    pages = run.stream(req, stop=stop)
    next(pages)
    stop.set()
    final = list(pages)[-1]
    assert "stopped before the end: the answers are cut short." in final and "streaming" not in final


def test_coefficients_moved_during_a_generation_do_not_change_it_and_the_ui_says_so(monkeypatch):
    studio = make_studio()
    a = short(studio, lambdas={"image": 0.9, "audio": 0.05, "point": 0.05}, max_new_tokens=20)
    b = short(studio, lambdas={"image": 0.1, "audio": 0.8, "point": 0.1}, mus={"image": 0.3}, max_new_tokens=20)
    reference_a = list(handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, a)))[-1]

    slow = SlowGeneration(monkeypatch, pause=0.05)
    used_a = handlers.answered_with(studio, ask("hi", IMAGE_ONLY, False, a))
    # With an image input only the image expert takes part: the coefficients shown are the ones applied.
    assert used_a == "DAMC: λ image 0.90 · μ image 1.00"
    pages = handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, a))
    next(pages)
    next(pages)  # generating with A
    # The user moves sliders: cheap compositions answer at once, a dense method (TIES) waits for the model.
    timing, formulas = handlers.recompose(studio, ask("hi", IMAGE_ONLY, False, b), used_a)
    assert not slow.finished.is_set(), "recomposing waited for the running generation"
    assert timing.startswith("composed ") and f"use **{used_a}**" in timing and "keeps the coefficients" in timing
    assert "0.1\\,T_{\\text{image}}" in formulas
    ties = {}
    waiter = threading.Thread(target=lambda: ties.update(out=handlers.recompose(studio, ask("hi", IMAGE_ONLY, False, short(
        studio, methods=["ties"], lambdas={"image": 0.1, "audio": 0.8, "point": 0.1})), used_a)))
    waiter.start()
    final = list(pages)[-1]
    waiter.join(30)
    assert ties["out"][0].startswith("composed ")
    # The running generation kept A: same answers as A alone, and its caption names A.
    assert answer_cells(final) == answer_cells(reference_a) and f"Coefficients: {used_a}" in final
    # Unchanged sliders: no warning.
    assert "⚠️" not in handlers.recompose(studio, ask("hi", IMAGE_ONLY, False, a), used_a)[0]
    monkeypatch.undo()
    final_b = list(handlers.compare_stream(studio, ask("hi", IMAGE_ONLY, False, b)))[-1]
    assert "DAMC: λ image 0.10 · μ image 0.30" in final_b


def answer_cells(page: str) -> list[str]:
    import re

    return re.findall(r'<span class="mc-name"[^>]*>(.*?)</span>.*?<div class="mc-(?:answer|wait)">(.*?)</div>', page)


# --- through the running server (real base, random experts) -----------------------------------
@pytest.fixture(scope="module")
def live(smollm2, base_cache_dir, tmp_path_factory):
    """(url, experts folder, studio) of the app served on a loopback port, with experts on disk."""
    import app
    from studio.session import load_studio
    from tests.app_server import free_port
    from composition.random_models import save_random_experts

    folder = save_random_experts(smollm2, tmp_path_factory.mktemp("fault-experts"), ("image", "audio", "point"))
    studio = load_studio([folder], cache_dir=base_cache_dir, device="cpu")
    demo = app.build_demo(studio)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url.rstrip("/"), folder, studio
    finally:
        demo.close()


def ui_args(studio: Studio, question: str, image=None, max_new_tokens: int = 8, **settings) -> dict:
    """The named inputs of /compare_ui: the question, the media, 'also run experts without input', the controls."""
    values = controls(studio, CompositionConfig(experts=studio.expert_names, max_new_tokens=max_new_tokens, **settings))
    return ask(question, [image, None, None, None], False, values)


@pytest.mark.slow
def test_cancelling_through_the_server_frees_the_model_for_the_next_request(live):
    from gradio_client import Client, handle_file

    url, _, studio = live
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 300})  # a busy CPU is slow
    image = handle_file(str(MEDIA / "images" / "cheetah.jpg"))
    job = client.submit(**ui_args(studio, "Tell me a long story about this picture.", image, max_new_tokens=256),
                        api_name="/compare_ui")
    deadline = time.monotonic() + 120
    while "streaming" not in "".join(str(o) for o in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "streaming" in "".join(str(o) for o in job.outputs()), "no partial answer arrived"
    job.cancel()
    deadline = time.monotonic() + 30
    while compare_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not compare_threads(), "the generation thread kept running after the cancel"
    result = client.predict(question="What is it?", image=image, api_name="/compare")
    assert [v["name"] for v in result["variants"]] == ["DAMC", "expert:image"]


@pytest.mark.slow
def test_removing_an_expert_folder_while_serving(live):
    from gradio_client import Client, handle_file

    url, folder, _ = live
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 300})  # a busy CPU is slow
    point = handle_file(str(MEDIA / "models3d" / "Duck.glb"))
    before = client.predict(question="What shape?", point=point, api_name="/compare")
    assert before["warnings"] == []
    shutil.rmtree(folder / "point")
    after = client.predict(question="What shape?", point=point, api_name="/compare")
    assert pairs(after) == pairs(before)
    assert any("expert 'point'" in w and "removed" in w for w in after["warnings"])
    rows, message = client.predict(api_name="/catalog_status")
    assert "point (removed)" in str(rows) and "keeps answering" in message
