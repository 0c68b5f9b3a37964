"""MLLM Composition Studio: the Gradio UI. Only components and wiring live here; every
handler is a plain function of studio/ (or a one-line adapter around one).

    python app.py [--experts DIR ...] [--base SOURCE]     (also $STUDIO_EXPERTS, $STUDIO_BASE)
"""
from __future__ import annotations

import argparse
import functools
import inspect
import logging
import os
import uuid
from pathlib import Path

from studio.memory import limit_malloc_arenas

# First, before torch and the server start their threads: every thread made later shares
# two malloc arenas, so memory stays flat as users come and go (see studio/memory.py).
limit_malloc_arenas()

import gradio as gr

from modalities.checks import UserError
from composition.methods import list_methods
from composition.methods.registry import GROUPS
from modalities import MODALITY_NAMES, get_modality
from studio import arena, chat, controls, exporting, handlers, interference, mcub_tab, presets
from studio import votes as votes_mod
from studio.cards import CARD_CSS
from studio.examples import example_rows
from studio.inputs import point_views
from studio.errors import StudioError
from studio.session import Studio, expert_dirs_from, load_studio

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
SCHEDULE_INFO = ("anchors spread over the layers (mergekit's gradient), or YAML entries with filters: "
                 "[{filter: self_attn, value: [0, 1]}, {value: 0.5}]. Empty: the slider holds λ.")


log = logging.getLogger("studio")


def as_gr_error(exc: BaseException) -> gr.Error:
    """A user error's own message; anything else is our bug: logged with its traceback, shown with an id."""
    if isinstance(exc, UserError):
        return gr.Error(str(exc))
    incident = uuid.uuid4().hex[:8]
    log.error("internal error %s in a request", incident, exc_info=exc)
    return gr.Error(f"internal error (id {incident}): this is a bug in the studio, not something you did. It was "
                    "logged on the server; nothing you entered was lost, so you can try again or report the id.")


def user_errors(fn):
    """Turn the project's user errors into gr.Error messages; other exceptions become an internal error with an id."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - turned into a message, logged when it is a bug
                raise as_gr_error(exc) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            raise as_gr_error(exc) from None
    return call


def slider_updates(views):
    return [gr.update(visible=v.visible, label=v.label, value=v.value, interactive=v.interactive) for v in views]


def box_updates(views, typed=None):
    """The advanced box of each slider. ``typed`` None: each box shows its view's schedule ('' when the
    slider holds the value: defaults, Reset, a loaded config). Else the boxes' text as sent: a number
    typed there has moved onto the slider and its box empties; any other box keeps what it holds, so a
    refresh queued before the user typed never overwrites the typing."""
    if typed is None:
        return [gr.update(visible=v.visible, value=v.schedule) for v in views]
    return [gr.update(visible=v.visible, value="") if (t or "").strip() and not v.schedule else gr.update(visible=v.visible)
            for v, t in zip(views, typed)]


def auto_updates(views):
    """The "auto" box under each λ slider: ticked while the engine sets that λ (1/K)."""
    return [gr.update(visible=v.visible, value=bool(v.auto)) for v in views]


def param_control(method, param):
    """A method's hyper-parameter: a slider, or a whole-number box for a seed-like huge range."""
    label = f"{method.label}: {param.name}"
    if param.kind == "int" and param.maximum - param.minimum > 10_000:
        return gr.Number(value=param.default, precision=0, minimum=param.minimum, maximum=param.maximum, label=label, info=param.help)
    return gr.Slider(param.minimum, param.maximum, value=param.default, step=param.step, label=label, info=param.help)


def media_component(modality: str):
    """The upload box of a registered modality: a typed preview where gradio has one, else a file box."""
    spec = get_modality(modality)
    label = spec.label[:1].upper() + spec.label[1:]
    elem_id = f"media-{modality}"
    if modality == "image":
        return gr.Image(type="filepath", label=label, height=INPUT_HEIGHT, elem_id=elem_id)
    if modality == "audio":
        return gr.Audio(type="filepath", label=label, elem_id=elem_id)
    if modality == "video":
        return gr.Video(label=label, height=INPUT_HEIGHT, elem_id=elem_id)
    return gr.File(label=label, file_types=list(spec.extensions), height=INPUT_HEIGHT, elem_id=elem_id)


class Ui:
    """Every component, declared once and kept by name (studio/controls.py names them)."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.named: dict[str, gr.components.Component] = {}

    def add(self, name: str, component):
        self.named[name] = component
        return component

    def pick(self, names) -> dict:
        return {n: self.named[n] for n in names}

    @property
    def controls(self) -> dict:
        return self.pick(controls.control_names())

    @property
    def media(self) -> dict:
        return self.pick(controls.media_names())

    @property
    def lams(self) -> list:
        return [self.named[n] for n in controls.lambda_names_all()]

    @property
    def autos(self) -> list:
        return [self.named[n] for n in controls.lambda_auto_names_all()]

    @property
    def mus(self) -> list:
        return [self.named[n] for n in controls.mu_names_all()]

    @property
    def lambda_boxes(self) -> list:
        return [self.named[n] for n in controls.lambda_schedule_names_all()]

    @property
    def mu_boxes(self) -> list:
        return [self.named[n] for n in controls.mu_schedule_names_all()]

    @property
    def params(self) -> list:
        return [self.named[controls.param_name(m, p)] for m, p in controls.param_keys()]


# --- tabs -----------------------------------------------------------------------------
def experts_tab(ui: Ui) -> None:
    s = ui.studio
    gr.Markdown("Experts share one base LLM. Tick the ones that take part in the compositions.")
    ui.catalog = gr.Dataframe(value=s.catalog_rows() or None, headers=CATALOG_HEADERS, interactive=False,
                              label="Loaded experts", wrap=True)
    ui.catalog_msg = gr.Markdown(handlers.catalog_message(s))
    ui.selected = ui.add(controls.SELECTED, gr.CheckboxGroup(s.expert_names, value=s.expert_names, label="Experts taking part"))
    with gr.Row():
        ui.add_path = gr.Textbox(label="Add an expert", placeholder="/path/to/expert-folder (or a folder of experts, or a hub id when online)", scale=4)
        ui.add_btn = gr.Button("Add expert", scale=1)


def coefficients_block(ui: Ui) -> None:
    s = ui.studio
    lam_views, mu_views = handlers.slider_views(s, {controls.SELECTED: s.expert_names}, reset=True)
    with gr.Group():
        gr.Markdown("λ weighs each expert's **text** delta (DAMC text merge); while **auto** is ticked it is the "
                    "paper's 1/K over the experts that get an input, and follows the inputs. Moving a slider makes "
                    "that λ yours: it stays as you set it. μ scales each **modality** delta (default 1). Answers "
                    "recompose when you release a slider.")
        ui.lambda_advanced, ui.lambda_plots = [], []
        with gr.Row():
            for i, v in enumerate(lam_views):
                with gr.Column(min_width=160):
                    ui.add(controls.lambda_name(i), gr.Slider(-1, 2, value=v.value, step=0.01, label=v.label,
                                                              visible=v.visible))
                    ui.add(controls.lambda_auto_name(i), gr.Checkbox(bool(v.auto), label="auto (1/K)", visible=v.visible,
                                                                     container=False))
                    with gr.Accordion("advanced: over the layers", open=False, visible=v.visible) as advanced:
                        ui.add(controls.lambda_schedule_name(i), gr.Textbox(
                            v.schedule, label="λ schedule", placeholder="0, 0.5, 1", lines=1, info=SCHEDULE_INFO))
                        ui.lambda_plots.append(gr.LinePlot(x="layer", y="λ", color="modules", height=180,
                                                           label="λ per layer (as applied)"))
                    ui.lambda_advanced.append(advanced)
        with gr.Row():
            for name, v in zip(controls.mu_names_all(), mu_views):
                ui.add(name, gr.Slider(0, 2, value=v.value, step=0.01, label=v.label, visible=v.visible, min_width=160))
        with gr.Accordion("advanced: μ over the layers", open=False):
            with gr.Row():
                for name, v in zip(controls.mu_schedule_names_all(), mu_views):
                    ui.add(name, gr.Textbox(v.schedule, label=v.label.split(" (")[0] + " schedule", placeholder="1, 1, 0.5",
                                            visible=v.visible, min_width=160))
        ui.add(controls.MERGE_ALL, gr.Checkbox(s.defaults.merge_all_experts, label="merge every selected expert, even those "
                                               "with no input (the original's merged checkpoints; default: only experts with an input)"))
        with gr.Row():
            ui.reset = gr.Button("Reset to the defaults (the paper's λ = 1/K, μ = 1, or those the experts ship with)", size="sm")
            ui.compose_msg = gr.Markdown()
        with gr.Accordion("Add merge methods as comparison columns", open=True):
            gr.Markdown("Applied to the text deltas; modality deltas stay as in DAMC. *Core space* merges in the "
                        "experts' low-rank core space (routed online, no dense result); for element-wise methods it "
                        "is a different operation from the dense one.")
            for group, choices in controls.method_groups().items():
                info = "NaiveMC and DAMC always run when their experts are selected" if group == "paper" else None
                ui.add(controls.methods_name(group), gr.CheckboxGroup(choices, value=[], label=GROUPS[group], info=info))
        ui.param_groups = []
        for m in list_methods():
            with gr.Group(visible=False) as group:
                gr.Markdown(f"**{m.label}** — {m.help}" + (f"  \n`{m.formula}`" if m.formula else ""))
                with gr.Row():
                    for p in m.params:
                        ui.add(controls.param_name(m.name, p.name), param_control(m, p))
            ui.param_groups.append(group)


def compare_tab(ui: Ui) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            ui.question = ui.add(controls.QUESTION, gr.Textbox(label="Question", value="What do these inputs have in common?", lines=2))
            ui.world = gr.Markdown(handlers.world_banner(ui.studio), visible=bool(handlers.world_banner(ui.studio)))
            for pair in range(0, len(MODALITY_NAMES), 2):  # two upload boxes a row, from the modality registry
                with gr.Row():
                    for modality in MODALITY_NAMES[pair:pair + 2]:
                        ui.add(controls.media_name(modality), media_component(modality))
            with gr.Row():
                ui.point_plot = gr.Plot(label="Point cloud preview (drag to rotate)", visible=False)
                ui.point_3d = gr.Model3D(label="3-D view (drag to rotate, scroll to zoom)", visible=False,
                                         interactive=False, display_mode="point_cloud", height=320)
            with gr.Accordion("Generation settings", open=False):
                ui.add("max_new_tokens", gr.Slider(1, 256, value=48, step=1, label="max new tokens"))
                ui.add("temperature", gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)"))
                ui.add("top_p", gr.Slider(0.05, 1, value=1, step=0.05, label="top-p"))
                ui.add(controls.NO_INPUT, gr.Checkbox(False, label="also run selected experts that got no input of their modality"))
            with gr.Row():
                ui.go = gr.Button("Compare all variants", variant="primary", scale=3)
                ui.stop = gr.Button("Stop", variant="stop", scale=1)
        with gr.Column(scale=3, min_width=420):
            ui.cards = gr.HTML(handlers.empty_cards(), label="Answers")
            ui.answered_with = gr.State("")  # the coefficients of the answers on screen (see handlers.recompose)
    rows = example_rows()
    if rows:
        gr.Examples(rows, [ui.question, *ui.media.values()], label="Examples: each modality alone, mixed, and MCUB-synth items",
                    examples_per_page=12)


def chat_content(content):
    """A chat message's content as the Chatbot shows it: text, or a preview of a file (image, audio, video, 3-D)."""
    if not isinstance(content, dict):
        return content
    path, modality = content["path"], content.get("modality")
    preview = {"image": gr.Image, "audio": gr.Audio, "video": gr.Video, "point": gr.Model3D}.get(modality)
    if preview is None:
        return {"path": path}
    return preview(value=path, label=content.get("name"), **({"display_mode": "point_cloud"} if modality == "point" and
                                                              path.endswith(".ply") else {}))


def chatbot_updates(columns):
    return [gr.update(value=[{"role": m["role"], "content": chat_content(m["content"])} for m in c.messages],
                      label=c.label, visible=c.visible) for c in columns]


def chat_box(label: str, elem_id: str):
    """A message box for text and files of every registered modality (the handler refuses those no selected expert reads)."""
    extensions = [ext for m in MODALITY_NAMES for ext in get_modality(m).extensions]
    return gr.MultimodalTextbox(label=label, file_types=extensions, file_count="multiple", elem_id=elem_id,
                                placeholder="Ask something; attach files with the clip (image, audio, video, point cloud)")


def chat_tab(ui: Ui) -> None:
    gr.Markdown("Talk with every composition and expert at once: each column keeps its own conversation. Files may "
                "come in any turn; follow-up questions are answered in context. The experts, λ, μ and merge methods "
                "above apply from the next turn.")
    ui.chat_state = gr.State(None)
    ui.chatbots = []
    for start in range(0, chat.MAX_COLUMNS, 4):
        with gr.Row(equal_height=True):
            for i in range(start, min(start + 4, chat.MAX_COLUMNS)):
                ui.chatbots.append(gr.Chatbot(label=f"variant {i + 1}", visible=False, height=420, min_width=260,
                                              elem_id=f"chat-column-{i}", feedback_options=None))
    ui.chat_box = chat_box("Message", "chat-box")
    with gr.Row():
        ui.chat_regenerate = gr.Button("Regenerate", size="sm")
        ui.chat_undo = gr.Button("Undo", size="sm")
        ui.chat_clear = gr.Button("Clear", size="sm")
        ui.chat_stop = gr.Button("Stop", variant="stop", size="sm")


def arena_tab(ui: Ui) -> None:
    gr.Markdown("**Blind vote.** Two variants drawn at random from the current selection answer as **A** and **B**. "
                "Chat, then vote: the names are shown after the vote. " + votes_mod.PRIVACY_NOTE)
    ui.arena_state = gr.State(None)
    with gr.Row(equal_height=True):
        ui.arena_bots = [gr.Chatbot(label=label, height=380, elem_id=f"arena-{label}", feedback_options=None)
                         for label in arena.BLIND]
    ui.arena_box = chat_box("Message to A and B", "arena-box")
    with gr.Row():
        ui.arena_votes = [gr.Button(text, size="sm") for text in ("A is better", "B is better", "Tie", "Both bad")]
        ui.arena_new = gr.Button("New round", size="sm", variant="secondary")
    ui.arena_msg = gr.Markdown()
    gr.Markdown("### Leaderboard")
    ui.board = gr.Dataframe(headers=["variant", "rating", "95 % interval", "votes", "wins", "ties", "losses"],
                            interactive=False, label="Leaderboard")
    ui.board_msg = gr.Markdown()
    ui.board_refresh = gr.Button("Refresh the leaderboard", size="sm")


def mcub_accuracy_tab(ui: Ui) -> None:
    gr.Markdown("MCUB-synth: each item gives 3–4 modalities and asks which option they have in common; a single "
                "expert cannot beat ~50 %. **Slow on CPU**: every item runs every variant; keep the item count small.")
    with gr.Row():
        ui.b_source = gr.Radio(list(mcub_tab.SOURCES), value=mcub_tab.SOURCES[0], label="Items")
        ui.b_upload = gr.File(label="MCUB .json (for 'uploaded')", file_types=[".json"], height=100)
        ui.b_items = gr.Slider(1, 200, value=2, step=1, label="items")
    with gr.Row():
        ui.b_run = gr.Button("Run benchmark", variant="primary", scale=3)
        ui.b_retention = gr.Checkbox(False, label="also: what each variant keeps of the base's text skills "
                                     "(retention, ~100 text-only questions)", scale=2)
        ui.k_run = gr.Button("Retention only", scale=1)
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
    gr.Markdown("### Choose λ and μ as the paper does\nThe same grid, searched on **validation** items (MCUB-synth: "
                "seed 1; other sources: a seeded 30 % of the items); the best setting is then scored on the disjoint "
                "**test** items (MCUB-synth: seed 0) beside the paper's default, and put on the sliders.")
    with gr.Row():
        ui.t_run = gr.Button("Tune λ and μ on validation items")
        ui.u_run = gr.Button("Choose λ and μ without labels (AdaMMS), beside the labelled choice")
    ui.t_summary = gr.Markdown()
    ui.t_json = gr.JSON(label="Tuning result", open=False)


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
    interference_section(ui)


def interference_section(ui: Ui) -> None:
    gr.Markdown("### Why decoupling helps\nRaise every expert's λ to s·(1/K): the **shared** merge (NaiveMC over the "
                "`-shared` experts) adds every expert's delta to every token, the modality tokens included; **DAMC** "
                "gives a modality's tokens only their own delta, so a larger λ reaches its text tokens alone. The curve "
                "below is a stored run ([docs/interference.md](docs/interference.md)); rerun it on N items here.")
    runs = interference.stored_runs()
    with gr.Row():
        ui.i_run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Stored run", scale=2)
        ui.i_items = gr.Slider(1, interference.MAX_RERUN_ITEMS, value=8, step=1, label="items for a rerun", scale=2)
        ui.i_rerun = gr.Button("Rerun the curve (s = 1, 2, 4)", scale=1)
    ui.i_plot = gr.Plot(label="Accuracy against s")
    ui.i_summary = gr.Markdown()
    gr.Markdown("#### Items where the shared merge fails and DAMC does not (s = 2)")
    ui.i_examples = gr.Markdown()
    with gr.Row():
        ui.i_media = {"image": gr.Image(type="filepath", height=INPUT_HEIGHT, interactive=False, label="example 1: image"),
                      "audio": gr.Audio(type="filepath", interactive=False, label="example 1: audio"),
                      "video": gr.Video(height=INPUT_HEIGHT, interactive=False, label="example 1: video"),
                      "point": gr.Plot(label="example 1: point cloud")}


def export_tab(ui: Ui) -> None:
    gr.Markdown("### Composition config (YAML)\nExperts (by folder name), base, variants, λ, μ, method "
                "hyper-parameters and generation settings. Loading one restores the sliders.")
    with gr.Row():
        ui.cfg_save = gr.Button("Save config")
        ui.cfg_file = gr.File(label="Config to download", interactive=False, height=100)
        ui.cfg_upload = gr.File(label="Load a config (.yaml)", file_types=[".yaml", ".yml"], height=100)
    ui.cfg_msg = gr.Markdown()
    gr.Markdown("### The composition as a model\n**Full**: the variant's text merge written into the weights, a "
                "plain transformers checkpoint. **Adapter**: the merged text delta as a peft LoRA adapter on the base "
                "(exact at its own rank; a smaller rank is truncated by SVD and the card says how much each layer "
                "kept). Both carry one small expert per modality and a model card for the Hub.")
    with gr.Row():
        ui.x_variant = gr.Dropdown(["DAMC", "NaiveMC"] + [m.name for m in list_methods()], value="DAMC", label="Variant")
        ui.x_form = gr.Radio(["full", "adapter"], value="full", label="Form")
        ui.x_rank = gr.Number(value=0, precision=0, minimum=0, label="Adapter rank (0 = exact)")
        ui.x_btn = gr.Button("Export and zip")
    ui.x_file = gr.File(label="Exported composition (.zip)", interactive=False, height=100)
    ui.x_msg = gr.Markdown()
    with gr.Row(visible=exporting.can_push()):  # only with a Hugging Face token on this server
        ui.x_repo = gr.Textbox(label="Push to the Hub as", placeholder="owner/name", scale=3)
        ui.x_private = gr.Checkbox(True, label="private")
        ui.x_push = gr.Button("Push the last export", scale=1)
    ui.x_push_msg = gr.Markdown()


def api_block(ui: Ui) -> None:
    """The /compare endpoint: hidden components so its signature never follows the UI."""
    with gr.Group(visible=False):
        question = gr.Textbox(label="question")
        files = {m: gr.File(label=m) for m in MODALITY_NAMES}
        out = gr.JSON(label="variants")
        trigger = gr.Button("compare")

    @gpu
    @user_errors
    def compare(question: str, **media):
        return handlers.compare_api(ui.studio, question, **media)

    # The API signature clients see: (question, image=None, audio=None, ...), one optional file per
    # registered modality, so a client sends only the inputs it has.
    compare.__signature__ = inspect.Signature(
        [inspect.Parameter("question", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)]
        + [inspect.Parameter(m, inspect.Parameter.KEYWORD_ONLY, default=None) for m in MODALITY_NAMES])

    trigger.click(compare, outputs=out, inputs_kwargs={"question": question, **files}, api_name="compare")

    # /chat, /arena_round, /vote: stateless, JSON in and out (files inside messages with gradio_client.handle_file).
    with gr.Group(visible=False):
        messages, experts, variants = gr.JSON(label="messages"), gr.JSON(label="experts"), gr.JSON(label="variants")
        lambdas, mus = gr.JSON(label="lambdas"), gr.JSON(label="mus")
        max_new = gr.Number(label="max_new_tokens", precision=0)
        battle, choice = gr.Textbox(label="battle_id"), gr.Textbox(label="choice")
        chat_out, round_out, vote_out = gr.JSON(), gr.JSON(), gr.JSON()
        chat_trigger, round_trigger, vote_trigger = gr.Button("chat"), gr.Button("round"), gr.Button("vote")
    uploads = [Path(gr.utils.get_upload_folder()).resolve()]

    def settings(experts=None, variants=None, lambdas=None, mus=None, max_new_tokens=None):
        chosen = handlers.default_settings(ui.studio)
        changes = {k: v for k, v in dict(experts=experts, variants=variants, lambdas=lambdas, mus=mus).items() if v}
        if max_new_tokens:
            changes["max_new_tokens"] = int(max_new_tokens)
        return chosen.replace(**changes)

    @gpu
    @user_errors
    def chat_api(messages, experts=None, variants=None, lambdas=None, mus=None, max_new_tokens=None):
        return chat.chat_api(ui.studio, messages, settings(experts, variants, lambdas, mus, max_new_tokens), allowed=uploads)

    @gpu
    @user_errors
    def round_api(messages, experts=None, max_new_tokens=None):
        session = chat.session_from_messages(ui.studio, messages, uploads)
        if len(session.turns) != 1:
            raise StudioError("a blind round over the API is one user message (text and files); vote with /vote.")
        turn = session.turns[0]
        return arena.round_api(ui.studio, ui.studio.vote_store(), {"text": turn.text, "files": [p for _, p in turn.files]},
                               settings(experts, None, None, None, max_new_tokens))

    @user_errors
    def vote_api(battle_id, choice):
        return arena.vote_api(ui.studio.vote_store(), battle_id, choice)

    chat_trigger.click(chat_api, outputs=chat_out, inputs_kwargs={"messages": messages, "experts": experts, "variants": variants,
                                                                 "lambdas": lambdas, "mus": mus, "max_new_tokens": max_new},
                       api_name="chat")
    round_trigger.click(round_api, outputs=round_out, inputs_kwargs={"messages": messages, "experts": experts,
                                                                   "max_new_tokens": max_new}, api_name="arena_round")
    vote_trigger.click(vote_api, outputs=vote_out, inputs_kwargs={"battle_id": battle, "choice": choice}, api_name="vote")


def wire_interference(ui: Ui) -> None:
    s = ui.studio
    media = list(ui.i_media.values())

    def shown(run):
        examples = interference.failure_examples(run)
        inputs = interference.example_media(examples[0]) if examples else {}
        return [interference.failure_examples_markdown(examples)] + [inputs.get(m) for m in ui.i_media]

    def on_stored(name):
        run = interference.load_run(name)
        return [interference.curves_figure(run), interference.summary_markdown(run), *shown(run)]

    def on_rerun(n, progress=gr.Progress(), **values):
        fig, summary, run = interference.rerun_curves(s, n, progress, settings=handlers.settings_of(s, values))
        return [fig, summary, *shown(run)]

    out = [ui.i_plot, ui.i_summary, ui.i_examples, *media]
    ui.i_run.change(user_errors(on_stored), ui.i_run, out, api_name="interference_stored")
    ui.i_rerun.click(gpu(user_errors(on_rerun)), [ui.i_items], out, inputs_kwargs=ui.controls, api_name="interference_rerun")
    if ui.i_run.value:
        ui.demo.load(user_errors(on_stored), ui.i_run, out, api_name="interference_on_load")


# --- wiring ---------------------------------------------------------------------------
def wire(ui: Ui) -> None:
    s = ui.studio
    composition = {**ui.controls, **ui.media}  # every event below passes these by name
    sliders = [*ui.lams, *ui.autos, *ui.mus]

    advanced = [*ui.lambda_advanced, *ui.lambda_boxes, *ui.mu_boxes]
    sliders_and_advanced = sliders + advanced

    def refresh_sliders(reset: bool = False, **values):
        lams, mus = handlers.slider_views(s, values, reset=reset)
        # A new selection or Reset shows the defaults' schedules (the slots now belong to other experts).
        typed = (None, None) if reset else ([values.get(n) for n in controls.lambda_schedule_names_all()],
                                            [values.get(n) for n in controls.mu_schedule_names_all()])
        return (slider_updates(lams) + auto_updates(lams) + slider_updates(mus) + [gr.update(visible=v.visible) for v in lams]
                + box_updates(lams, typed[0]) + box_updates(mus, typed[1]))

    # Moving a λ slider makes that λ the user's: its "auto" box is unticked in the browser at once,
    # before the release that recomposes reads it.
    for lam, auto in zip(ui.lams, ui.autos):
        lam.input(None, None, auto, js="() => false", queue=False)

    def recompose(answered_with="", **values):
        return (*handlers.recompose(s, values, answered_with), *handlers.lambda_curves(s, values))

    compose_out = [ui.compose_msg, ui.formulas, *ui.lambda_plots]
    compose_kw = {**composition, "answered_with": ui.answered_with}
    recompose = user_errors(recompose)
    # .input, not .change: a config load sets the selection and must not reset λ to 1/K.
    ui.selected.input(user_errors(functools.partial(refresh_sliders, True)), outputs=sliders_and_advanced, inputs_kwargs=composition,
                      api_name="select_experts").then(recompose, outputs=compose_out, inputs_kwargs=compose_kw,
                                                      api_name="recompose_after_select")
    # New inputs change who takes part (λ = 1/K over the experts with an input): the sliders show it.
    gr.on([c.change for c in ui.media.values()], user_errors(refresh_sliders), outputs=sliders_and_advanced, inputs_kwargs=composition,
          api_name="inputs_changed").then(recompose, outputs=compose_out, inputs_kwargs=compose_kw, api_name="recompose_after_inputs")

    def on_add(path, selected):
        rows, names, selection, msg = handlers.add_experts(s, path, selected)
        return rows, gr.update(choices=names, value=selection), msg, s.header()

    ui.add_btn.click(user_errors(on_add), [ui.add_path, ui.selected], [ui.catalog, ui.selected, ui.catalog_msg, ui.header],
                     api_name="add_expert")

    pickers = [ui.named[n] for n in controls.method_names_all()]
    released = [c.release if isinstance(c, gr.Slider) else c.change for c in (*ui.lams, *ui.mus, *ui.params)]
    gr.on(released + [p.change for p in pickers], recompose, outputs=compose_out, inputs_kwargs=compose_kw, api_name="recompose")
    # Ticking "auto" again hands that λ back to the engine: the sliders show 1/K, then the answers recompose.
    gr.on([a.input for a in ui.autos] + [ui.named[controls.MERGE_ALL].input], user_errors(refresh_sliders),
          outputs=sliders_and_advanced, inputs_kwargs=composition, api_name="lambda_auto").then(recompose, outputs=compose_out, inputs_kwargs=compose_kw,
                                                                 api_name="recompose_after_auto")
    # A schedule typed (Enter or leaving the box) locks its slider, then the answers recompose.
    gr.on([b.submit for b in (*ui.lambda_boxes, *ui.mu_boxes)] + [b.blur for b in (*ui.lambda_boxes, *ui.mu_boxes)],
          user_errors(refresh_sliders), outputs=sliders_and_advanced, inputs_kwargs=composition,
          api_name="schedule_typed").then(recompose, outputs=compose_out, inputs_kwargs=compose_kw,
                                          api_name="recompose_after_schedule")
    ui.reset.click(user_errors(functools.partial(refresh_sliders, True)), outputs=sliders_and_advanced, inputs_kwargs=composition,
                   api_name="reset_coefficients").then(recompose, outputs=compose_out, inputs_kwargs=compose_kw,
                                                       api_name="recompose_after_reset")
    def show_params(**chosen):
        picked = {m.partition("@")[0] for names in chosen.values() for m in (names or [])}
        return [gr.update(visible=m.name in picked) for m in list_methods()]

    gr.on([p.change for p in pickers], show_params, outputs=ui.param_groups, inputs_kwargs=ui.pick(controls.method_names_all()),
          api_name="choose_methods")

    def on_point(path):
        views = point_views(path)
        if views is None:
            return gr.update(value=None, visible=False), gr.update(value=None, visible=False)
        return (gr.update(value=views.figure, visible=True),
                gr.update(value=views.model_path, display_mode=views.display_mode, visible=True))

    point_box = ui.named[controls.media_name("point")]
    point_box.change(user_errors(on_point), point_box, [ui.point_plot, ui.point_3d], api_name="point_preview")

    def on_compare(**values):
        used = handlers.answered_with(s, values)
        for page in handlers.compare_stream(s, values):
            yield page, used

    stream = gpu(user_errors(on_compare))
    compare_kw = {**composition, controls.QUESTION: ui.question, controls.NO_INPUT: ui.named[controls.NO_INPUT]}
    compare_out = [ui.cards, ui.answered_with]
    runs = [ui.go.click(stream, outputs=compare_out, inputs_kwargs=compare_kw, api_name="compare_ui"),
            ui.question.submit(stream, outputs=compare_out, inputs_kwargs=compare_kw, api_name="compare_ui_submit")]
    # Cancelling closes the stream's generator; studio.run stops the generation thread at its next token.
    ui.stop.click(handlers.stopped_cards, ui.cards, ui.cards, cancels=runs, queue=False, api_name="stop_compare")

    def on_bench(source, upload, n, retention, progress=gr.Progress(), **values):
        items = mcub_tab.load_items(source, upload, n, progress)
        return mcub_tab.run_mcub(s, handlers.settings_of(s, values), items, progress, retention=bool(retention))

    ui.b_run.click(gpu(user_errors(on_bench)), [ui.b_source, ui.b_upload, ui.b_items, ui.b_retention],
                   [ui.b_plot, ui.b_summary, ui.b_json], inputs_kwargs=ui.controls, api_name="benchmark")

    def on_retention(progress=gr.Progress(), **values):
        return mcub_tab.run_retention(s, handlers.settings_of(s, values), progress)

    ui.k_run.click(gpu(user_errors(on_retention)), outputs=[ui.b_summary, ui.b_json], inputs_kwargs=ui.controls,
                   api_name="retention")

    def on_sweep(source, upload, n, scales, mus, progress=gr.Progress(), **values):
        items = mcub_tab.load_items(source, upload, n, progress)
        return mcub_tab.run_sweep(s, handlers.settings_of(s, values), items, mcub_tab.parse_grid(scales, "λ scales"),
                               mcub_tab.parse_grid(mus, "μ values"), progress)

    ui.s_run.click(gpu(user_errors(on_sweep)), [ui.b_source, ui.b_upload, ui.s_items, ui.s_scales, ui.s_mus], ui.s_plot,
                   inputs_kwargs=ui.controls, api_name="sweep")

    def chosen(summary, result, applied, values):
        """A search's result, and its choice on the sliders (the schedule boxes emptied: a number is chosen)."""
        shown = controls.values_from_settings(s.cm.experts, applied, handlers.present_modalities(values))
        lams, mus = [shown[n] for n in controls.lambda_names_all()], [shown[n] for n in controls.mu_names_all()]
        return [summary, result] + slider_updates(lams) + auto_updates(lams) + slider_updates(mus) + box_updates(lams + mus)

    def on_tune(source, upload, n, scales, mus, progress=gr.Progress(), **values):
        validation, test = mcub_tab.tune_items(source, upload, n)
        return chosen(*mcub_tab.run_tune(s, handlers.settings_of(s, values), validation, test,
                                         mcub_tab.parse_grid(scales, "λ scales"), mcub_tab.parse_grid(mus, "μ values"),
                                         progress), values)

    def on_search(source, upload, n, scales, mus, progress=gr.Progress(), **values):
        validation, test = mcub_tab.tune_items(source, upload, n)
        return chosen(*mcub_tab.run_search(s, handlers.settings_of(s, values), validation, test,
                                           mcub_tab.parse_grid(scales, "λ scales"), mcub_tab.parse_grid(mus, "μ values"),
                                           progress), values)

    searched = [ui.t_summary, ui.t_json, *sliders, *ui.lambda_boxes, *ui.mu_boxes]
    ui.t_run.click(gpu(user_errors(on_tune)), [ui.b_source, ui.b_upload, ui.s_items, ui.s_scales, ui.s_mus], searched,
                   inputs_kwargs=composition, api_name="tune")
    ui.u_run.click(gpu(user_errors(on_search)), [ui.b_source, ui.b_upload, ui.s_items, ui.s_scales, ui.s_mus], searched,
                   inputs_kwargs=composition, api_name="tune_without_labels")

    def on_routing(variant, **values):
        return handlers.token_routing(s, variant, values)

    ui.r_btn.click(user_errors(on_routing), [ui.r_variant], ui.routing, inputs_kwargs=compare_kw, api_name="token_routing")

    def on_save(**values):
        return handlers.save_config(s, values)

    ui.cfg_save.click(user_errors(on_save), outputs=ui.cfg_file, inputs_kwargs=ui.controls, api_name="save_config")

    restored = [*ui.controls.values(), *ui.lambda_advanced, ui.cfg_msg]

    def on_load_config(path, **values):
        shown, msg = handlers.load_config(s, path, values)
        lams = [shown[n] for n in controls.lambda_names_all()]
        boxes = dict(zip([*controls.lambda_schedule_names_all(), *controls.mu_schedule_names_all()],
                         box_updates(lams + [shown[n] for n in controls.mu_names_all()])))
        updates = []
        for name in ui.controls:
            value = shown[name]
            updates += (slider_updates([value]) if isinstance(value, controls.SliderView)
                        else [boxes[name]] if name in boxes else [gr.update(value=value)])
        return updates + [gr.update(visible=v.visible) for v in lams] + [msg]

    ui.cfg_upload.upload(user_errors(on_load_config), ui.cfg_upload, restored, inputs_kwargs=ui.media,
                         api_name="load_config").then(recompose, outputs=compose_out, inputs_kwargs=compose_kw,
                                                      api_name="recompose_after_load")

    def on_export(variant, form, rank, **values):
        return exporting.export_zip(s, handlers.settings_of(s, values), variant, form, int(rank or 0) or None)

    ui.x_btn.click(gpu(user_errors(on_export)), [ui.x_variant, ui.x_form, ui.x_rank], [ui.x_file, ui.x_msg],
                   inputs_kwargs=ui.controls, api_name="export_model")
    ui.x_push.click(user_errors(exporting.push_zip), [ui.x_file, ui.x_repo, ui.x_private], ui.x_push_msg, api_name="push_export")
    wire_chat(ui, composition)
    wire_arena(ui, composition)
    wire_interference(ui)
    ui.demo.load(recompose, outputs=compose_out, inputs_kwargs=compose_kw, api_name="initial_compose")
    # A page load shows the catalog as it is now (an expert folder removed since startup is flagged).
    ui.demo.load(lambda: handlers.catalog_status(s), None, [ui.catalog, ui.catalog_msg], api_name="catalog_status")


def wire_chat(ui: Ui, composition: dict) -> None:
    s = ui.studio
    outputs = [ui.chat_state, *ui.chatbots, ui.chat_box]

    def answer(turns, session, **values):
        """Stream the columns; the box is emptied once the answer is complete (on an error the message stays)."""
        session = session or chat.ChatSession()
        for cols in turns(session, handlers.settings_of(s, values)):
            yield [session, *chatbot_updates(cols), gr.update()]
        yield [session, *chatbot_updates(chat.columns(session)), gr.update(value=None)]

    def on_send(message, session, **values):
        yield from answer(lambda sess, settings: chat.send(s, sess, message, settings), session, **values)

    def on_regenerate(session, **values):
        yield from answer(lambda sess, settings: chat.regenerate(s, sess, settings), session, **values)

    def on_undo(session):
        session = session or chat.ChatSession()
        cols, message = chat.undo(session)
        return [session, *chatbot_updates(cols), gr.update(value=message)]

    def on_clear(session):
        session = chat.clear(s, session)
        return [session, *chatbot_updates(chat.columns(session)), gr.update(value=None)]

    ui.chat_box.submit(gpu(user_errors(on_send)), [ui.chat_box, ui.chat_state], outputs, inputs_kwargs=composition,
                       api_name="chat_send")
    ui.chat_regenerate.click(gpu(user_errors(on_regenerate)), [ui.chat_state], outputs, inputs_kwargs=composition,
                             api_name="chat_regenerate")
    ui.chat_undo.click(user_errors(on_undo), [ui.chat_state], outputs, api_name="chat_undo")
    ui.chat_clear.click(user_errors(on_clear), [ui.chat_state], outputs, api_name="chat_clear")
    # Stop ends the answer at its next token (the turn keeps what was said); it runs at once, outside the queue.
    ui.chat_stop.click(chat.request_stop, [ui.chat_state], None, queue=False, api_name="chat_stop")


def wire_arena(ui: Ui, composition: dict) -> None:
    s = ui.studio
    outputs = [ui.arena_state, *ui.arena_bots, ui.arena_box, ui.arena_msg]

    def two(cols):
        return chatbot_updates(cols[:2])

    def on_send(message, round_, **values):
        round_ = round_ or arena.ArenaRound()
        for cols in arena.send(s, s.vote_store(), round_, message, handlers.settings_of(s, values)):
            yield [round_, *two(cols), gr.update(), gr.update()]
        yield [round_, *two(chat.columns(round_.session)), gr.update(value=None),
               "Vote for the better answer, or keep chatting first."]

    def on_vote(choice):
        def vote(round_):
            if round_ is None:
                raise StudioError("ask something first: the vote is about the two answers.")
            cols, message = arena.vote(s.vote_store(), round_, choice)
            return [round_, *two(cols), gr.update(), message]
        return vote

    def on_new(round_):
        round_ = arena.new_round(s, round_)
        return [round_, *two(chat.columns(round_.session)), gr.update(value=None), "A new round: two variants drawn anew."]

    ui.arena_box.submit(gpu(user_errors(on_send)), [ui.arena_box, ui.arena_state], outputs, inputs_kwargs=composition,
                        api_name="arena_send")
    for button, choice in zip(ui.arena_votes, votes_mod.CHOICES):
        button.click(user_errors(on_vote(choice)), [ui.arena_state], outputs, api_name=f"arena_vote_{choice.replace(' ', '_')}")
    ui.arena_new.click(user_errors(on_new), [ui.arena_state], outputs, api_name="arena_new_round")
    ui.board_refresh.click(lambda: arena.leaderboard_rows(s.vote_store()), None, [ui.board, ui.board_msg],
                           api_name="leaderboard")
    ui.demo.load(lambda: arena.leaderboard_rows(s.vote_store()), None, [ui.board, ui.board_msg], api_name="leaderboard_on_load")


def build_demo(studio: Studio) -> gr.Blocks:
    ui = Ui(studio)
    with gr.Blocks(title="MLLM Composition Studio") as demo:
        ui.demo = demo
        gr.Markdown("# MLLM Composition Studio\nCompose single-modality experts that share one base LLM with "
                    "**NaiveMC** and **DAMC** (Chen et al., ACL 2024) and other merge methods, and compare every "
                    "variant's answer side by side.")
        ui.header = gr.Markdown(studio.header())
        with gr.Accordion("Composition: λ, μ and merge methods (for Chat, Compare and Blind vote)", open=False):
            coefficients_block(ui)
        with gr.Tabs():
            with gr.Tab("Chat"):
                chat_tab(ui)
            with gr.Tab("Compare"):
                compare_tab(ui)
            with gr.Tab("Blind vote"):
                arena_tab(ui)
            with gr.Tab("Experts"):
                experts_tab(ui)
            with gr.Tab("Benchmark"):
                mcub_accuracy_tab(ui)
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
    parser.add_argument("--preset", default=None, choices=presets.PRESETS,
                        help="modelcompose: the paper's own experts on Vicuna-7B (needs a GPU and the hub; also $STUDIO_PRESET)")
    args = parser.parse_args(argv)
    studio = None
    try:
        name = presets.preset_name(args.preset)
        if name:
            studio = presets.load_preset_studio(presets.resolve_preset(name), Path(__file__).resolve().parent)
    except presets.PresetError as exc:  # offline, no GPU: say why, and serve the bundled set
        print(f"note: {exc}", flush=True)
    studio = studio or load_studio(expert_dirs_from(args.experts), base=args.base)
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
