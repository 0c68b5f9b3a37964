"""MLLM Composition Studio: the Gradio UI. Only components and wiring live here; every
handler is a plain function of studio/ (or a one-line adapter around one).

    python app.py [--experts DIR ...] [--base SOURCE]     (also $STUDIO_EXPERTS, $STUDIO_BASE)
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os

from studio.memory import limit_malloc_arenas

# First, before torch and the server start their threads: every thread made later shares
# two malloc arenas, so memory stays flat as users come and go (see studio/memory.py).
limit_malloc_arenas()

import gradio as gr

from composition.methods import list_methods
from modalities import MODALITY_NAMES
from studio import bench, exporting, handlers
from studio.cards import CARD_CSS
from studio.examples import example_rows
from studio.inputs import point_accept, point_views
from studio.session import Studio, expert_dirs_from, load_studio
from studio.settings import MAX_LAMBDA_SLOTS

try:  # On a ZeroGPU Space, spaces.GPU asks for a GPU per call; elsewhere it is a no-op.
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn

MAX_FILE_SIZE = "100mb"
SESSION_CAPACITY = 1000
INPUT_HEIGHT = 260  # image, video and point boxes as tall as the audio box (which has no height)
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
CATALOG_HEADERS = ["name", "modality", "training", "base", "encoder", "folder"]


def user_errors(fn):
    """Turn the project's user errors (ValueError subclasses) into gr.Error: the message, no traceback."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
    return call


def slider_updates(views):
    return [gr.update(visible=v.visible, label=v.label, value=v.value) for v in views]


class Ui:
    """The components other tabs' events read, gathered while the tabs are built."""

    def __init__(self, studio: Studio):
        self.studio = studio

    @property
    def controls(self):
        return [self.selected, *self.lams, *self.mus, self.methods, *self.params, self.max_new, self.temperature, self.top_p]

    @property
    def media(self):
        return [self.image, self.audio, self.video, self.point]


# --- tabs -----------------------------------------------------------------------------
def experts_tab(ui: Ui) -> None:
    s = ui.studio
    gr.Markdown("Experts share one base LLM. Tick the ones that take part in the compositions.")
    ui.catalog = gr.Dataframe(value=s.catalog_rows() or None, headers=CATALOG_HEADERS, interactive=False,
                              label="Loaded experts", wrap=True)
    ui.catalog_msg = gr.Markdown(handlers.catalog_message(s))
    ui.selected = gr.CheckboxGroup(s.expert_names, value=s.expert_names, label="Experts taking part")
    with gr.Row():
        ui.add_path = gr.Textbox(label="Add an expert", placeholder="/path/to/expert-folder (or a folder of experts, or a hub id when online)", scale=4)
        ui.add_btn = gr.Button("Add expert", scale=1)


def coefficients_block(ui: Ui) -> None:
    s = ui.studio
    lam_views, mu_views = handlers.selection_views(s, s.expert_names)
    with gr.Accordion("Coefficients and merge methods", open=True):
        gr.Markdown("λ weighs each expert's **text** delta (DAMC text merge, default 1/K); μ scales each "
                    "**modality** delta (default 1). Answers recompose when you release a slider.")
        with gr.Row():
            ui.lams = [gr.Slider(-1, 2, value=v.value, step=0.01, label=v.label, visible=v.visible, min_width=160)
                       for v in lam_views]
        with gr.Row():
            ui.mus = [gr.Slider(0, 2, value=v.value, step=0.01, label=v.label, visible=v.visible, min_width=160)
                      for v in mu_views]
        with gr.Row():
            ui.reset = gr.Button("Reset to the paper's defaults (λ = 1/K, μ = 1)", size="sm")
            ui.compose_msg = gr.Markdown()
        methods = list_methods()
        ui.methods = gr.CheckboxGroup([(m.label, m.name) for m in methods], value=[], label="Add merge methods as comparison columns",
                                      info="applied to the text deltas; modality deltas stay as in DAMC")
        ui.params, ui.param_groups = [], []
        for m in methods:
            with gr.Group(visible=False) as group:
                gr.Markdown(f"**{m.label}** — {m.help}")
                with gr.Row():
                    for p in m.params:
                        ui.params.append(gr.Slider(p.minimum, p.maximum, value=p.default, step=p.step,
                                                   label=f"{m.label}: {p.name}", info=p.help))
            ui.param_groups.append(group)


def compare_tab(ui: Ui) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            ui.question = gr.Textbox(label="Question", value="What do these inputs have in common?", lines=2)
            with gr.Row():
                ui.image = gr.Image(type="filepath", label="Image", height=INPUT_HEIGHT)
                ui.audio = gr.Audio(type="filepath", label="Audio")
            with gr.Row():
                ui.video = gr.Video(label="Video", height=INPUT_HEIGHT)
                ui.point = gr.File(label="Point cloud", file_types=point_accept(), height=INPUT_HEIGHT)
            with gr.Row():
                ui.point_plot = gr.Plot(label="Point cloud preview (drag to rotate)", visible=False)
                ui.point_3d = gr.Model3D(label="3-D view (drag to rotate, scroll to zoom)", visible=False,
                                         interactive=False, display_mode="point_cloud", height=320)
            with gr.Accordion("Generation settings", open=False):
                ui.max_new = gr.Slider(1, 256, value=48, step=1, label="max new tokens")
                ui.temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
                ui.top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
                ui.no_input = gr.Checkbox(False, label="also run selected experts that got no input of their modality")
            with gr.Row():
                ui.go = gr.Button("Compare all variants", variant="primary", scale=3)
                ui.stop = gr.Button("Stop", variant="stop", scale=1)
        with gr.Column(scale=3, min_width=420):
            coefficients_block(ui)
            ui.cards = gr.HTML(handlers.empty_cards(), label="Answers")
            ui.answered_with = gr.State("")  # the coefficients of the answers on screen (see handlers.recompose)
    rows = example_rows()
    if rows:
        gr.Examples(rows, [ui.question, *ui.media], label="Examples: each modality alone, mixed, and MCUB-synth items",
                    examples_per_page=12)


def benchmark_tab(ui: Ui) -> None:
    gr.Markdown("MCUB-synth: each item gives 3–4 modalities and asks which option they have in common; a single "
                "expert cannot beat ~50 %. **Slow on CPU**: every item runs every variant; keep the item count small.")
    with gr.Row():
        ui.b_source = gr.Radio(list(bench.SOURCES), value=bench.SOURCES[0], label="Items")
        ui.b_upload = gr.File(label="MCUB .json (for 'uploaded')", file_types=[".json"], height=100)
        ui.b_items = gr.Slider(1, 200, value=2, step=1, label="items")
    ui.b_run = gr.Button("Run benchmark", variant="primary")
    ui.b_plot = gr.Plot(label="Accuracy by variant")
    ui.b_summary = gr.Markdown()
    ui.b_json = gr.JSON(label="Result", open=False)
    gr.Markdown("### Coefficient sweep (DAMC)\nλ_i = scale/K for every expert and one μ for every modality, "
                "over a small grid. Each cell runs every item: cells × items generations — **slow on CPU**.")
    with gr.Row():
        ui.s_scales = gr.Textbox("0.5, 1, 1.5", label="λ scales")
        ui.s_mus = gr.Textbox("0.5, 1", label="μ values")
        ui.s_items = gr.Slider(1, 50, value=2, step=1, label="items per cell")
    ui.s_run = gr.Button("Run sweep")
    ui.s_plot = gr.Plot(label="DAMC accuracy heat map")


def learn_tab(ui: Ui) -> None:
    gr.Markdown("What the compositions compute, with **your current coefficients** filled in.")
    ui.formulas = gr.Markdown(latex_delimiters=LATEX)
    gr.Markdown("### Token routing of the current prompt\nEvery prompt token goes through the base weights W plus "
                "the deltas of its route: text tokens use the text merge, tokens of a modality block use that "
                "modality's delta. Uses the question and inputs of the Compare tab.")
    with gr.Row():
        ui.r_variant = gr.Dropdown(["DAMC", "NaiveMC"] + [m.name for m in list_methods()], value="DAMC",
                                   label="Variant", allow_custom_value=True, scale=3)
        ui.r_btn = gr.Button("Show token routing", scale=1)
    ui.routing = gr.HTML()


def export_tab(ui: Ui) -> None:
    gr.Markdown("### Composition config (YAML)\nExperts (by folder name), base, variants, λ, μ, method "
                "hyper-parameters and generation settings. Loading one restores the sliders.")
    with gr.Row():
        ui.cfg_save = gr.Button("Save config")
        ui.cfg_file = gr.File(label="Config to download", interactive=False, height=100)
        ui.cfg_upload = gr.File(label="Load a config (.yaml)", file_types=[".yaml", ".yml"], height=100)
    ui.cfg_msg = gr.Markdown()
    gr.Markdown("### Materialized model\nWrites the variant's text merge into the weights: a plain transformers "
                "checkpoint plus one small expert per modality that reproduces the modality routes.")
    with gr.Row():
        ui.x_variant = gr.Dropdown(["DAMC", "NaiveMC"] + [m.name for m in list_methods()], value="DAMC", label="Variant")
        ui.x_btn = gr.Button("Export and zip")
    ui.x_file = gr.File(label="Exported composition (.zip)", interactive=False, height=100)
    ui.x_msg = gr.Markdown()


def api_block(ui: Ui) -> None:
    """The /compare endpoint: hidden components so its signature never follows the UI."""
    with gr.Group(visible=False):
        question = gr.Textbox(label="question")
        files = [gr.File(label=m) for m in MODALITY_NAMES]
        out = gr.JSON(label="variants")
        trigger = gr.Button("compare")

    @gpu
    @user_errors
    def compare(question: str, image=None, audio=None, video=None, point=None):
        return handlers.compare_api(ui.studio, question, image, audio, video, point)

    trigger.click(compare, [question, *files], out, api_name="compare")


# --- wiring ---------------------------------------------------------------------------
def wire(ui: Ui) -> None:
    s = ui.studio
    controls, media = ui.controls, ui.media

    def on_select(selected):
        lams, mus = handlers.selection_views(s, selected)
        return slider_updates(lams) + slider_updates(mus)

    recompose = user_errors(lambda *v: handlers.recompose(s, v[:4], v[4:-1], v[-1]))
    compose_in, compose_out = [*media, *controls, ui.answered_with], [ui.compose_msg, ui.formulas]
    # .input, not .change: a config load sets the selection and must not reset λ to 1/K.
    ui.selected.input(user_errors(on_select), ui.selected, [*ui.lams, *ui.mus], api_name="select_experts").then(
        recompose, compose_in, compose_out, api_name="recompose_after_select")

    def on_add(path, selected):
        rows, names, selection, msg = handlers.add_experts(s, path, selected)
        return rows, gr.update(choices=names, value=selection), msg, s.header()

    ui.add_btn.click(user_errors(on_add), [ui.add_path, ui.selected], [ui.catalog, ui.selected, ui.catalog_msg, ui.header],
                     api_name="add_expert")

    gr.on([sl.release for sl in (*ui.lams, *ui.mus, *ui.params)] + [ui.methods.change],
          recompose, compose_in, compose_out, api_name="recompose")

    def on_reset(selected):
        lams, mus = handlers.selection_views(s, selected)
        return [gr.update(value=v.value) for v in (*lams, *mus)]

    ui.reset.click(on_reset, ui.selected, [*ui.lams, *ui.mus], api_name="reset_coefficients").then(
        recompose, compose_in, compose_out, api_name="recompose_after_reset")
    ui.methods.change(lambda chosen: [gr.update(visible=m.name in (chosen or [])) for m in list_methods()],
                      ui.methods, ui.param_groups, api_name="choose_methods")

    def on_point(path):
        views = point_views(path)
        if views is None:
            return gr.update(value=None, visible=False), gr.update(value=None, visible=False)
        return (gr.update(value=views.figure, visible=True),
                gr.update(value=views.model_path, display_mode=views.display_mode, visible=True))

    ui.point.change(user_errors(on_point), ui.point, [ui.point_plot, ui.point_3d], api_name="point_preview")

    def on_compare(question, *v):
        used = handlers.answered_with(s, v[5:])
        for page in handlers.compare_stream(s, question, v[:4], v[4], v[5:]):
            yield page, used

    stream = gpu(user_errors(on_compare))
    compare_in, compare_out = [ui.question, *media, ui.no_input, *controls], [ui.cards, ui.answered_with]
    runs = [ui.go.click(stream, compare_in, compare_out, api_name="compare_ui"),
            ui.question.submit(stream, compare_in, compare_out, api_name="compare_ui_submit")]
    # Cancelling closes the stream's generator; studio.run stops the generation thread at its next token.
    ui.stop.click(handlers.stopped_cards, ui.cards, ui.cards, cancels=runs, queue=False, api_name="stop_compare")

    def on_bench(source, upload, n, *ctl, progress=gr.Progress()):
        items = bench.load_items(source, upload, n, progress)
        return bench.run_benchmark(s, handlers.settings_of(s, ctl), items, progress)

    ui.b_run.click(gpu(user_errors(on_bench)), [ui.b_source, ui.b_upload, ui.b_items, *controls],
                   [ui.b_plot, ui.b_summary, ui.b_json], api_name="benchmark")

    def on_sweep(source, upload, n, scales, mus, *ctl, progress=gr.Progress()):
        items = bench.load_items(source, upload, n, progress)
        return bench.run_sweep(s, handlers.settings_of(s, ctl), items, bench.parse_grid(scales, "λ scales"),
                               bench.parse_grid(mus, "μ values"), progress)

    ui.s_run.click(gpu(user_errors(on_sweep)), [ui.b_source, ui.b_upload, ui.s_items, ui.s_scales, ui.s_mus, *controls],
                   ui.s_plot, api_name="sweep")

    ui.r_btn.click(user_errors(lambda q, var, *v: handlers.token_routing(s, q, var, v[:4], v[4:])),
                   [ui.question, ui.r_variant, *media, *controls], ui.routing, api_name="token_routing")

    ui.cfg_save.click(user_errors(lambda *ctl: handlers.save_config(s, ctl)), controls, ui.cfg_file, api_name="save_config")

    def on_load_config(path):
        c, msg = handlers.load_config(s, path)
        return ([gr.update(value=c["selected"])] + slider_updates(c["lambdas"]) + slider_updates(c["mus"]) +
                [gr.update(value=c["methods"])] + [gr.update(value=v) for v in c["params"]] +
                [c["max_new_tokens"], c["temperature"], c["top_p"], msg])

    ui.cfg_upload.upload(user_errors(on_load_config), ui.cfg_upload, [*controls, ui.cfg_msg], api_name="load_config").then(
        recompose, compose_in, compose_out, api_name="recompose_after_load")

    def on_export(variant, *ctl):
        path, msg = exporting.export_zip(s, handlers.settings_of(s, ctl), variant)
        return path, msg

    ui.x_btn.click(gpu(user_errors(on_export)), [ui.x_variant, *controls], [ui.x_file, ui.x_msg], api_name="export_model")
    ui.demo.load(recompose, compose_in, compose_out, api_name="initial_compose")
    # A page load shows the catalog as it is now (an expert folder removed since startup is flagged).
    ui.demo.load(lambda: handlers.catalog_status(s), None, [ui.catalog, ui.catalog_msg], api_name="catalog_status")


def build_demo(studio: Studio) -> gr.Blocks:
    ui = Ui(studio)
    with gr.Blocks(title="MLLM Composition Studio") as demo:
        ui.demo = demo
        gr.Markdown("# MLLM Composition Studio\nCompose single-modality experts that share one base LLM with "
                    "**NaiveMC** and **DAMC** (Chen et al., ACL 2024) and other merge methods, and compare every "
                    "variant's answer side by side.")
        ui.header = gr.Markdown(studio.header())
        with gr.Tabs():
            with gr.Tab("Compare"):
                compare_tab(ui)
            with gr.Tab("Experts"):
                experts_tab(ui)
            with gr.Tab("Benchmark"):
                benchmark_tab(ui)
            with gr.Tab("Learn"):
                learn_tab(ui)
            with gr.Tab("Export"):
                export_tab(ui)
        api_block(ui)
        wire(ui)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="MLLM Composition Studio")
    parser.add_argument("--experts", nargs="+", metavar="DIR", help="expert folders or folders of them "
                        "(default: $STUDIO_EXPERTS, else the bundled experts in assets/experts/)")
    parser.add_argument("--base", default=None, help="base LLM: folder, .gguf or hub id (default: offline SmolLM2-135M)")
    args = parser.parse_args(argv)
    studio = load_studio(expert_dirs_from(args.experts), base=args.base)
    print(studio.header().replace("**", ""), flush=True)
    launch(build_demo(studio))


def launch(demo: gr.Blocks, **overrides):
    """Queue (generation is CPU/GPU bound: a small concurrency limit) and serve; tests pass overrides."""
    demo.queue(default_concurrency_limit=int(os.environ.get("STUDIO_CONCURRENCY", "2")), max_size=32)
    options = dict(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                   max_file_size=MAX_FILE_SIZE, css=CARD_CSS, theme=gr.themes.Soft(),
                   # Gradio keeps each session's component state (≈ 0.2 MB here) until this many newer
                   # sessions exist (its default is 10,000); the app's own per-session state is one
                   # caption, so forgetting the oldest idle sessions loses nothing a user sees.
                   state_session_capacity=SESSION_CAPACITY)
    options.update(overrides)
    return demo.launch(**options)


if __name__ == "__main__":
    main()
