"""The app's cold start and memory: ``python -m studio.cold_start [--experts DIR] [--json]``.

Launches ``python app.py`` on a free loopback port and reports the seconds until its page
answers and the peak resident memory then. Without bundled experts, untrained experts
shaped like them are saved for the run (``composition.benchmark.random_real_experts``).
These are the app's figures; the engine's are ``python -m composition bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import StudioError

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"app_cold_start_s": 20.0, "app_peak_rss_gb": 2.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def app_cold_start(expert_dir: Path | None, timeout_s: float = 300.0) -> dict:
    """Launch ``python app.py`` on a free port; seconds until its page answers, and its peak RSS then."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    command = [sys.executable, "app.py"] + (["--experts", str(expert_dir)] if expert_dir else [])
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        ready, peak = None, 0
        try:
            while time.perf_counter() - start < timeout_s and proc.poll() is None:
                peak = max(peak, peak_rss_bytes(proc.pid) or 0)
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            ready = time.perf_counter() - start
                            break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.2)
            peak = max(peak, peak_rss_bytes(proc.pid) or 0)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if ready is None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise StudioError(f"app.py did not answer on {url} within {timeout_s:.0f} s "
                              f"(exit code {proc.returncode}): {' | '.join(tail)}")
    return {"cold_start_s": ready, "peak_rss_gb": peak / 1e9, "targets": TARGETS,
            "experts": "bundled" if expert_dir is None else str(expert_dir)}


def measure(expert_dir: Path | None = None, timeout_s: float = 300.0) -> dict:
    """Cold start with ``expert_dir``, else the bundled experts, else random experts shaped like them."""
    import torch

    from composition.benchmarks.speed import bundled_expert_folders, random_real_experts
    from composition.expert import save_expert

    if expert_dir is not None or bundled_expert_folders():
        return app_cold_start(expert_dir, timeout_s)
    from composition.base_llm import load_base_llm

    with tempfile.TemporaryDirectory(prefix="cold-start-experts-") as folder:
        for expert in random_real_experts(load_base_llm()):
            save_expert(expert, Path(folder) / expert.name, dtype=torch.float16)
        result = app_cold_start(Path(folder), timeout_s)
        result["experts"] = "random (saved for the run)"
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.cold_start", description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default=None, help="expert folder(s) for the app (default: the bundled experts)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the page (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = measure(Path(args.experts) if args.experts else None, args.timeout)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"app cold start ({result['experts']} experts): page answered after {result['cold_start_s']:.1f} s "
              f"(target ≤ {TARGETS['app_cold_start_s']:.0f} s); peak RSS {result['peak_rss_gb']:.2f} GB "
              f"(target ≤ {TARGETS['app_peak_rss_gb']} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
