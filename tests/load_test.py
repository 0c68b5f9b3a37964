"""A bounded load test of the running app on loopback; it stops by itself.

    python tests/load_test.py --clients N [--requests-per-client K] [--rounds R] [--experts DIR] [--json]
                              [--max-new-tokens T] [--timeout S]

It starts the app (``app.build_demo`` and ``app.launch``, as ``python app.py`` does) in a
child process on a free loopback port, with untrained random experts for image, audio,
video and point on the real offline base (or the experts under ``--experts``). Then:

1. alone: one session sends every distinct request once, one at a time, and keeps the
   answers (greedy decoding: the same request always gives the same answer);
2. load: N gradio_client sessions, each with its own selection, λ, μ, merge methods and
   question, send K requests each, a mix of valid and invalid ones (``/compare``, the
   fixed API; ``/compare_ui``, the UI's streamed compare with that session's settings),
   while one more session keeps moving sliders (``/recompose`` with other coefficients).

Every valid answer must equal the one its request got alone (variant names, answers, and
the coefficient caption naming that session's own λ and μ), so an answer that came from
another session's composition is caught; every invalid request must be refused with the
message it got alone. It reports p50/p95 latency, errors, the waiting-queue length seen
(polled from /gradio_api/queue/status) against the queue's max_size, and the server's
peak RSS (VmHWM from /proc) and RSS after warm-up and at the end. Exit status 0 when
everything was correct and nothing timed out.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tests`, `studio`, `composition` importable
    sys.path.insert(0, str(ROOT))

READY = "LOAD-TEST-SERVER-READY "
HTTPX = {"timeout": 300}  # per HTTP call; a busy CPU answers slowly, the global --timeout bounds the run
EXAMPLES = ROOT / "examples"
MEDIA = {"image": EXAMPLES / "image-example.png", "audio": EXAMPLES / "audio-example.wav",
         "video": EXAMPLES / "video-example.mp4", "point": EXAMPLES / "point-example.npy"}
RANDOM_MODALITIES = ("image", "audio", "video", "point")


# --- the server (child process) -----------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    """Load the studio, launch the app, print one READY line, serve until stdin closes or the deadline."""
    import app
    from composition.base_llm import load_base_llm
    from composition.composer import ComposedModel
    from studio.session import Studio, load_studio
    from composition.random_models import save_random_experts

    # Stops by itself even if the parent dies without closing our stdin.
    killer = threading.Timer(args.deadline, lambda: os._exit(3))
    killer.daemon = True
    killer.start()
    if args.experts:
        studio = load_studio([Path(args.experts)], device="cpu")
    else:
        start = time.perf_counter()
        base = load_base_llm(device="cpu")
        folder = Path(tempfile.mkdtemp(prefix="load-test-experts-"))
        save_random_experts(base, folder, RANDOM_MODALITIES)  # before the base's layers are routed
        studio = Studio(ComposedModel(base), "cpu", time.perf_counter() - start)
        studio.add_expert_folder(str(folder))
    demo = app.build_demo(studio)
    app.launch(demo, server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True)
    info = {"experts": [{"name": e.name, "modality": e.modality, "training": e.training} for e in studio.cm.experts.values()],
            "max_size": demo._queue.max_size, "concurrency": demo._queue.default_concurrency_limit,
            "problems": studio.load_problems}
    print(READY + json.dumps(info), flush=True)
    sys.stdin.read()  # returns when the parent closes the pipe (or exits)
    os._exit(0)


# --- requests -----------------------------------------------------------------------------
@dataclass
class Req:
    """One request a session sends: endpoint, arguments, and its key for the expected answer."""

    key: str
    kind: str  # "ui" | "api" | "bad"
    api_name: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)


@dataclass
class Outcome:
    ok: bool  # answered (True) or refused with an error (False)
    value: object  # the normalised answer, or the error message
    seconds: float


def controls_for(experts: dict, selected: list[str], lambdas: dict, mus: dict, methods: list[str],
                 params: dict, max_new_tokens: int) -> dict:
    """The named control values the UI sends (studio/controls.py names them)."""
    from composition.config import CompositionConfig
    from studio.controls import SliderView, values_from_settings

    settings = CompositionConfig(experts=selected, lambdas=lambdas, mus=mus, methods=methods, method_params=params,
                                 max_new_tokens=max_new_tokens)
    shown = values_from_settings(experts, settings)
    return {name: v.value if isinstance(v, SliderView) else v for name, v in shown.items()}


def ui_kwargs(question: str, media: list, controls: dict) -> dict:
    """/compare_ui's named inputs: the question, one file per modality, 'also run experts without input', the controls."""
    from studio.controls import NO_INPUT, QUESTION, media_name

    return {QUESTION: question, **{media_name(m): file_arg(p) for m, p in zip(RANDOM_MODALITIES, media)}, NO_INPUT: False,
            **controls}


def session_profile(i: int, experts: dict, max_new_tokens: int) -> dict:
    """Client i's own composition: a selection, λ, μ, maybe a merge method, a question, and its inputs."""
    from studio.controls import lambda_names

    names = list(experts)
    subsets = (1 << len(names)) - 1
    mask = (i % subsets) + 1
    selected = [n for j, n in enumerate(names) if mask >> j & 1]
    modalities = []
    for n in selected:
        if experts[n].modality not in modalities:
            modalities.append(experts[n].modality)
    merged = lambda_names(experts, selected)
    lambdas = {n: round(0.1 + 0.15 * ((i + j) % 9), 2) for j, n in enumerate(merged)}
    mus = {m: round(0.5 + 0.25 * ((i + j) % 5), 2) for j, m in enumerate(modalities)
           if any(experts[n].modality == m and experts[n].training == "decoupled" for n in selected)}
    methods, params = ([], {})
    if i % 4 == 3:
        methods, params = ["ties"], {"ties": {"density": round(0.3 + 0.1 * (i % 5), 2)}}
    question = f"[session {i}] In a few words, what do these inputs show?"
    media = [str(MEDIA[m]) if m in modalities else None for m in RANDOM_MODALITIES]
    controls = controls_for(experts, selected, lambdas, mus, methods, params, max_new_tokens)
    return {"selected": selected, "modalities": modalities, "question": question, "media": media, "controls": controls,
            "lambdas": lambdas}


def file_arg(path):
    from gradio_client import handle_file

    return handle_file(path) if path else None


def requests_for(i: int, profile: dict, k: int, bad_file: str, mismatch: list | None) -> list[Req]:
    """K requests of session i, a rotating mix: its UI compare, its API compare, and invalid ones."""
    ui = Req(f"ui:{i}", "ui", "/compare_ui", kwargs=ui_kwargs(profile["question"], profile["media"], profile["controls"]))
    names = ("image", "audio", "video", "point")
    api = Req(f"api:{i}", "api", "/compare", kwargs={"question": profile["question"],
                                                     **{m: file_arg(p) for m, p in zip(names, profile["media"]) if p}})
    bads = [Req("bad:empty-question", "bad", "/compare", kwargs={"question": "   ", "image": file_arg(str(MEDIA["image"]))}),
            Req("bad:broken-image", "bad", "/compare", kwargs={"question": "What is it?", "image": file_arg(bad_file)})]
    if mismatch is not None:
        bads.append(Req("bad:no-expert-for-input", "bad", "/compare_ui", kwargs=mismatch))
    cycle = [ui, api, ui, None]  # None: the next invalid request, each session starting at another kind
    out, n_bad = [], 0
    for r in range(k):
        req = cycle[(i + r) % len(cycle)]
        if req is None:
            req, n_bad = bads[(i + 1 + n_bad) % len(bads)], n_bad + 1
        out.append(req)
    return out


CARD = re.compile(r'<span class="mc-name"[^>]*>(.*?)</span>.*?<div class="mc-(answer|wait|skip)">(.*?)</div>', re.S)
CAPTION = re.compile(r'<div class="mc-caption">(.*?)</div>', re.S)
NOTICE = re.compile(r'<div class="mc-notice[^"]*">(.*?)</div>', re.S)


def normalise(kind: str, result) -> object:
    """What must be equal between a request alone and under load (timings left out)."""
    if kind == "ui":
        page = result[0] if isinstance(result, (list, tuple)) else result
        caption = CAPTION.search(page)
        return {"caption": html.unescape(caption.group(1)) if caption else None,
                "cards": [[html.unescape(n), k, html.unescape(a)] for n, k, a in CARD.findall(page)],
                "notices": [html.unescape(n) for n in NOTICE.findall(page)]}
    return {"variants": [[v["name"], v["answer"], v["new_tokens"]] for v in result["variants"]],
            "skipped": [[s["name"], s["reason"]] for s in result["skipped"]], "warnings": result.get("warnings", [])}


class Deadline(Exception):
    pass


def send(client, req: Req, deadline: float, stats: dict) -> Outcome:
    """Submit and wait (bounded by the global deadline); a full queue is retried and counted."""
    from gradio_client.exceptions import AppError

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Deadline()
        start = time.perf_counter()
        job = client.submit(*req.args, api_name=req.api_name, **req.kwargs)
        try:
            value = job.result(timeout=left)
            return Outcome(True, normalise(req.kind, value), time.perf_counter() - start)
        except AppError as exc:
            return Outcome(False, str(exc), time.perf_counter() - start)
        except TimeoutError:
            job.cancel()
            raise Deadline() from None
        except Exception as exc:  # noqa: BLE001 - the client's own errors: a full queue is expected under load
            if "queue is full" in str(exc).lower():
                stats["rejected_full"] += 1
                time.sleep(0.5)
                continue
            return Outcome(False, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)


# --- monitoring ---------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (empty once it has gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class Monitor(threading.Thread):
    """Samples the server's memory and the queue length every ``every`` seconds."""

    def __init__(self, pid: int, url: str, every: float = 0.25):
        super().__init__(name="load-monitor", daemon=True)
        self.pid, self.url, self.every = pid, url, every
        self.stop_event = threading.Event()
        self.rss_kb: list[int] = []
        self.hwm_kb = 0
        self.max_queue = 0
        self.queue_polls = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            status = proc_status(self.pid)
            if "VmRSS" in status:
                self.rss_kb.append(status["VmRSS"])
                self.hwm_kb = max(self.hwm_kb, status.get("VmHWM", 0))
            try:
                with urllib.request.urlopen(f"{self.url}/gradio_api/queue/status", timeout=5) as r:
                    self.max_queue = max(self.max_queue, int(json.load(r).get("queue_size") or 0))
                    self.queue_polls += 1
            except (OSError, ValueError):
                pass
            self.stop_event.wait(self.every)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 3)


def latency(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
            "max": round(max(values), 3) if values else None}


# --- the run ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, log, port: int | None = None, env: dict | None = None) -> tuple[subprocess.Popen, str, dict]:
    """The app in a child process (``--serve``) on ``port`` (default: a free one); returns it once it is ready."""
    port = port or free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(port), "--deadline", str(args.timeout + 60)]
    if args.experts:
        cmd += ["--experts", args.experts]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                            env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
    limit = time.monotonic() + min(args.timeout, 600)
    while time.monotonic() < limit:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        if line.startswith(READY):
            return proc, f"http://127.0.0.1:{port}", json.loads(line[len(READY):])
    proc.kill()
    raise SystemExit("the app did not start (see the server log above)")


def run_load(args: argparse.Namespace) -> dict:
    from gradio_client import Client

    began = time.monotonic()
    deadline = began + args.timeout
    log = tempfile.NamedTemporaryFile("w+", prefix="load-test-server-", suffix=".log", delete=False)
    proc, url, info = start_server(args, log)
    monitor = Monitor(proc.pid, url)
    monitor.start()
    report: dict = {"clients": args.clients, "requests_per_client": args.requests_per_client, "rounds": args.rounds,
                    "max_new_tokens": args.max_new_tokens, "server": {"pid": proc.pid, "url": url, "log": log.name,
                                                                      "concurrency": info["concurrency"],
                                                                      "queue_max_size": info["max_size"],
                                                                      "experts": [e["name"] for e in info["experts"]]}}
    expected: dict[str, Outcome] = {}
    planned = 0
    try:
        experts = {e["name"]: SimpleNamespace(**e) for e in info["experts"]}
        workdir = Path(tempfile.mkdtemp(prefix="load-test-"))
        bad_file = workdir / "holiday.png"
        bad_file.write_text("definitely not a picture")
        profiles = [session_profile(i, experts, args.max_new_tokens) for i in range(args.clients)]
        mismatch = mismatch_request(experts, args.max_new_tokens)
        plans = [requests_for(i, p, args.requests_per_client, str(bad_file), mismatch) for i, p in enumerate(profiles)]
        stats = {"rejected_full": 0}

        # 1. alone: each distinct request once, one at a time.
        solo = Client(url, verbose=False, httpx_kwargs=HTTPX)
        planned = len({r.key for plan in plans for r in plan})
        for req in [r for plan in plans for r in plan]:
            if req.key not in expected:
                expected[req.key] = send(solo, req, deadline, stats)
        report["alone"] = alone_summary(expected)
        rss_warm = proc_status(proc.pid).get("VmRSS", 0)

        # 2. load: N sessions + one moving sliders; with --rounds, N fresh sessions again and
        # again (new users arriving), so memory can be seen to level off rather than creep.
        results: list[tuple[Req, Outcome | None, str | None]] = []
        lock = threading.Lock()
        done = threading.Event()
        clients: list = []

        def session(i: int) -> None:
            for req in plans[i]:
                try:
                    outcome, problem = send(clients[i], req, deadline, stats), None
                except Deadline:
                    outcome, problem = None, "timed out (global deadline)"
                with lock:
                    results.append((req, outcome, problem))
                if outcome is None:
                    return

        slider = SliderSession(Client(url, verbose=False, httpx_kwargs=HTTPX), experts, args.max_new_tokens, deadline, stats)
        slider_thread = threading.Thread(target=slider.run, args=(done,), name="load-sliders")
        load_start = time.monotonic()
        slider_thread.start()
        rss_rounds = []
        for _ in range(args.rounds):
            clients[:] = [Client(url, verbose=False, httpx_kwargs=HTTPX) for _ in range(args.clients)]
            threads = [threading.Thread(target=session, args=(i,), name=f"load-session-{i}") for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()) + 5)
            rss_rounds.append(round(proc_status(proc.pid).get("VmRSS", 0) / 1024, 1))
            if time.monotonic() > deadline:
                break
        done.set()
        slider_thread.join(60)
        report["load_seconds"] = round(time.monotonic() - load_start, 2)
        report.update(judge(results, expected))
        report["sliders"] = slider.summary()
        report["queue"] = {"max_size": info["max_size"], "max_waiting_observed": monitor.max_queue,
                           "polls": monitor.queue_polls, "rejected_queue_full_then_retried": stats["rejected_full"],
                           "bounded": monitor.max_queue <= (info["max_size"] or 10**9)}
        rss_end = proc_status(proc.pid).get("VmRSS", 0)
        monitor.stop_event.set()
        monitor.join(5)
        hwm = max(monitor.hwm_kb, proc_status(proc.pid).get("VmHWM", 0))
        report["memory_mb"] = {"peak_rss_vmhwm": round(hwm / 1024, 1), "rss_after_warmup": round(rss_warm / 1024, 1),
                               "rss_end": round(rss_end / 1024, 1), "rss_max_during_load": round(max(monitor.rss_kb or [0]) / 1024, 1),
                               "growth_during_load": round((rss_end - rss_warm) / 1024, 1),
                               "rss_after_each_round": rss_rounds}
        report["distinct_expected_ui_answers"] = len({json.dumps(expected[f"ui:{i}"].value, sort_keys=True)
                                                      for i in range(args.clients) if f"ui:{i}" in expected})
        report["timed_out"] = any(p for _, _, p in results) or slider.timed_out or any(t.is_alive() for t in threads)
    except Deadline:
        report["timed_out"] = True
        report["alone"] = alone_summary(expected)
        report["alone"]["problems"].append(f"the global deadline passed during the 'alone' phase, after {len(expected)} "
                                           f"of {planned} requests (a busy machine: raise --timeout)")
    finally:
        monitor.stop_event.set()
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    report["seconds"] = round(time.monotonic() - began, 2)
    report["ok"] = bool(not report.get("timed_out") and not report.get("alone", {}).get("problems", [""])
                        and report.get("valid", {}).get("wrong", 1) == 0
                        and report.get("invalid", {}).get("wrong", 1) == 0 and report.get("sliders", {}).get("wrong", 1) == 0
                        and report.get("queue", {}).get("bounded", False))
    return report


def mismatch_request(experts: dict, max_new_tokens: int) -> dict | None:
    """/compare_ui with one expert selected and an input only another modality's expert reads (refused)."""
    names = list(experts)
    for n in names:
        other = next((experts[o].modality for o in names if experts[o].modality != experts[n].modality), None)
        if other:
            media = [str(MEDIA[m]) if m == other else None for m in RANDOM_MODALITIES]
            controls = controls_for(experts, [n], {}, {}, [], {}, max_new_tokens)
            return ui_kwargs("What is it?", media, controls)
    return None


def alone_summary(expected: dict[str, Outcome]) -> dict:
    """The 'alone' answers: valid ones must be answers, invalid ones readable refusals."""
    problems = []
    for key, out in expected.items():
        bad = key.startswith("bad:")
        if bad and out.ok:
            problems.append(f"{key} was answered alone; expected a refusal")
        if not bad and not out.ok:
            problems.append(f"{key} failed alone: {out.value}")
        if bad and not out.ok and (not out.value or out.value.strip() in ("Error", "None")):
            problems.append(f"{key} was refused without a message")
    return {"requests": len(expected), "latency_s": latency([o.seconds for o in expected.values()]), "problems": problems,
            "refusals": {k: o.value for k, o in expected.items() if k.startswith("bad:")}}


def judge(results, expected: dict[str, Outcome]) -> dict:
    valid = {"sent": 0, "answered": 0, "correct": 0, "wrong": 0, "problems": []}
    invalid = {"sent": 0, "refused_as_alone": 0, "wrong": 0, "problems": []}
    lat: dict[str, list[float]] = {"ui": [], "api": []}
    for req, outcome, problem in results:
        box = invalid if req.kind == "bad" else valid
        box["sent"] += 1
        want = expected.get(req.key)
        if outcome is None or want is None:
            box["wrong"] += 1
            box["problems"].append(f"{req.key}: {problem or 'no expected answer'}")
            continue
        if req.kind == "bad":
            if not outcome.ok and outcome.value == want.value:
                invalid["refused_as_alone"] += 1
            else:
                invalid["wrong"] += 1
                invalid["problems"].append(f"{req.key}: got {str(outcome.value)[:300]!r}, alone {str(want.value)[:300]!r}")
            continue
        lat[req.kind].append(outcome.seconds)
        if not outcome.ok:
            valid["wrong"] += 1
            valid["problems"].append(f"{req.key}: error under load: {str(outcome.value)[:300]}")
            continue
        valid["answered"] += 1
        if outcome.value == want.value:
            valid["correct"] += 1
        else:
            valid["wrong"] += 1
            valid["problems"].append(f"{req.key}: answer differs from the same request alone: "
                                     f"{json.dumps(outcome.value)[:400]} vs {json.dumps(want.value)[:400]}")
    valid["latency_s"] = latency(lat["ui"] + lat["api"])
    valid["latency_by_endpoint_s"] = {"/compare_ui": latency(lat["ui"]), "/compare": latency(lat["api"])}
    return {"valid": valid, "invalid": invalid}


class SliderSession:
    """One more session that keeps moving sliders: /recompose with its own coefficients (sometimes TIES),
    checking that the formulas it gets back carry its own λ."""

    def __init__(self, client, experts: dict, max_new_tokens: int, deadline: float, stats: dict):
        self.client, self.experts, self.max_new, self.deadline, self.stats = client, experts, max_new_tokens, deadline, stats
        self.latencies: list[float] = []
        self.right = self.wrong = 0
        self.problems: list[str] = []
        self.timed_out = False

    def run(self, done: threading.Event) -> None:
        from studio.controls import lambda_names

        names = list(self.experts)
        merged = lambda_names(self.experts, names)
        step = 0
        while not done.is_set():
            lam = round(-0.5 + 0.07 * (step % 30), 2)
            lambdas = {n: (lam if j == 0 else 0.5) for j, n in enumerate(merged)}
            mus = {e.modality: round(0.2 + 0.09 * (step % 20), 2) for e in self.experts.values() if e.training == "decoupled"}
            methods, params = (["ties"], {"ties": {"density": 0.5}}) if step % 3 == 2 else ([], {})
            controls = controls_for(self.experts, names, lambdas, mus, methods, params, self.max_new)
            from studio.controls import media_name

            req = Req("recompose", "recompose", "/recompose", kwargs={**controls, **{media_name(m): None for m in RANDOM_MODALITIES}})
            try:
                start = time.perf_counter()
                job = self.client.submit(*req.args, api_name=req.api_name, **req.kwargs)
                timing, formulas, *_plots = job.result(timeout=max(1.0, self.deadline - time.monotonic()))  # then a λ plot per slot
                self.latencies.append(time.perf_counter() - start)
            except TimeoutError:
                self.timed_out = True
                return
            except Exception as exc:  # noqa: BLE001
                if "queue is full" in str(exc).lower():
                    self.stats["rejected_full"] += 1
                    time.sleep(0.5)
                    continue
                self.wrong += 1
                self.problems.append(f"recompose failed: {exc}")
                step += 1
                continue
            mine = f"{lam:.3g}\\,T_{{\\text{{{merged[0].replace('_', chr(92) + '_')}}}}}" if merged else ""
            if timing.startswith("composed ") and mine in formulas:
                self.right += 1
            else:
                self.wrong += 1
                self.problems.append(f"recompose with λ {merged[0] if merged else '-'}={lam}: {timing[:120]!r}, "
                                     f"formulas lack {mine!r}")
            step += 1
            time.sleep(0.2)  # a person releases a slider every so often

    def summary(self) -> dict:
        return {"recomposes": self.right + self.wrong, "correct": self.right, "wrong": self.wrong,
                "latency_s": latency(self.latencies), "problems": self.problems[:10], "timed_out": self.timed_out}


def print_report(r: dict) -> None:
    v, b, s, q, m = (r.get(k, {}) for k in ("valid", "invalid", "sliders", "queue", "memory_mb"))
    lat = v.get("latency_s", {})
    print(f"load test: {r['rounds']} × {r['clients']} sessions × {r['requests_per_client']} requests (+1 moving sliders), "
          f"max_new_tokens {r['max_new_tokens']}, server concurrency {r['server']['concurrency']}")
    print(f"  valid:   {v.get('correct', 0)}/{v.get('sent', 0)} answered exactly as alone; "
          f"latency p50 {lat.get('p50')} s, p95 {lat.get('p95')} s, max {lat.get('max')} s")
    for name, l in v.get("latency_by_endpoint_s", {}).items():
        print(f"           {name}: n {l['n']}, p50 {l['p50']} s, p95 {l['p95']} s")
    print(f"  invalid: {b.get('refused_as_alone', 0)}/{b.get('sent', 0)} refused with the same message as alone")
    print(f"  sliders: {s.get('correct', 0)}/{s.get('recomposes', 0)} recomposes correct; "
          f"latency p50 {s.get('latency_s', {}).get('p50')} s, p95 {s.get('latency_s', {}).get('p95')} s")
    print(f"  queue:   at most {q.get('max_waiting_observed')} waiting (max_size {q.get('max_size')}), "
          f"{q.get('rejected_queue_full_then_retried', 0)} 'queue full' refusals retried")
    print(f"  memory:  peak RSS (VmHWM) {m.get('peak_rss_vmhwm')} MB; RSS after warm-up {m.get('rss_after_warmup')} MB, "
          f"at the end {m.get('rss_end')} MB (growth {m.get('growth_during_load')} MB); "
          f"after each round {m.get('rss_after_each_round')} MB")
    print(f"  distinct expected UI answers: {r.get('distinct_expected_ui_answers')}/{r['clients']}; "
          f"took {r['seconds']} s; timed out: {r.get('timed_out')}")
    for p in (v.get("problems", []) + b.get("problems", []) + s.get("problems", []) + r.get("alone", {}).get("problems", []))[:20]:
        print("  PROBLEM:", p)
    print("OK" if r["ok"] else "FAILED")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent gradio_client sessions (N)")
    parser.add_argument("--requests-per-client", type=int, default=4, help="requests each session sends (K)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the load phase with N fresh sessions R times")
    parser.add_argument("--experts", default=None, help="expert folder(s) parent (default: random experts on the real base)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="max new tokens of the /compare_ui requests")
    parser.add_argument("--timeout", type=float, default=1800.0, help="global limit in seconds; the run stops by itself")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=1860.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    if args.clients < 1 or args.requests_per_client < 1 or args.rounds < 1:
        parser.error("--clients, --requests-per-client and --rounds must be at least 1")
    report = run_load(args)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
