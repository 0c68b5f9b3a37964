"""Blind votes under load, across a server crash: every vote stored exactly once, none lost.

    python tests/vote_load_test.py [--voters 32] [--json] [--timeout S]

It saves untrained random experts for image and audio on the real offline base, starts the
app (``tests/load_test.py --serve``, as ``python app.py`` builds and launches it) with the
votes in a fresh SQLite file, and starts N gradio_client voters at once. Each asks for a
blind round (``/arena_round``: two random variants answer its own question) and votes for
it (``/vote``), retrying any call that fails with the same battle id. When half of the votes
are in, the server is killed (SIGKILL, no goodbye) and started again on the same port and
file; the voters carry on. At the end the file must hold exactly one vote per voter, each
for that voter's battle with that voter's choice, and every vote acknowledged before the
crash must still be there.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.load_test import free_port, start_server  # noqa: E402

CHOICES = ("A", "B", "tie", "both bad")


def start(port: int, experts: str, votes: Path, timeout: float, log):
    """The app in a child process on ``port``, its votes in ``votes``; returns it once it is ready."""
    options = argparse.Namespace(timeout=timeout, experts=experts)
    proc, _, _ = start_server(options, log, port=port, env=dict(os.environ, STUDIO_VOTES_DB=str(votes)))
    return proc


def run(args: argparse.Namespace) -> dict:
    from gradio_client import Client

    from composition.base_llm import load_base_llm
    from composition.random_models import save_random_experts

    work = Path(tempfile.mkdtemp(prefix="vote-load-"))
    experts = str(save_random_experts(load_base_llm(device="cpu"), work / "experts", ("image", "audio")))
    votes = work / "votes.sqlite3"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w")
    deadline = time.monotonic() + args.timeout
    server = {"proc": start(port, experts, votes, args.timeout, log)}
    acknowledged: dict[int, tuple[str, str]] = {}  # voter -> (battle id, choice) the server confirmed
    lock = threading.Lock()
    half = threading.Event()
    stats = {"retries": 0, "repeats_seen": 0}

    from gradio_client.exceptions import AppError

    def call(client_box: list, api_name: str, **kwargs):
        """One API call, retried (with a new client) until it succeeds or the run's time is up; an error the app
        answered with (a refused request) is not retried: it is a failure of the run."""
        wait = 0.5
        while time.monotonic() < deadline:
            try:
                if client_box[0] is None:
                    client_box[0] = Client(url, verbose=False)
                return client_box[0].predict(api_name=api_name, **kwargs)
            except AppError:
                raise
            except Exception:  # noqa: BLE001 - the server is down or restarting: try again, backing off as a client should
                with lock:
                    stats["retries"] += 1
                client_box[0] = None
                time.sleep(wait * (0.5 + random.random()))
                wait = min(2 * wait, 8.0)
        raise TimeoutError(f"{api_name} did not succeed before the deadline")

    failures: list[str] = []

    def voter(i: int) -> None:
        try:
            vote_once(i)
        except Exception as exc:  # noqa: BLE001 - reported, and the run fails
            with lock:
                failures.append(f"voter {i}: {type(exc).__name__}: {exc}")
            half.set()

    def vote_once(i: int) -> None:
        box = [None]
        choice = CHOICES[i % len(CHOICES)]
        messages = [{"role": "user", "content": f"Voter {i}: what is the best shape?"}]
        battle = call(box, "/arena_round", messages=messages, experts=None, max_new_tokens=args.max_new_tokens)["battle_id"]
        result = call(box, "/vote", battle_id=battle, choice=choice)
        again = call(box, "/vote", battle_id=battle, choice="tie")  # a repeat: must not count twice
        with lock:
            stats["repeats_seen"] += int(not again["stored"])
            acknowledged[i] = (battle, choice)
            if len(acknowledged) >= args.voters // 2:
                half.set()
        assert result["A"] and result["B"]

    threads = [threading.Thread(target=voter, args=(i,), daemon=True) for i in range(args.voters)]
    for t in threads:
        t.start()
    half.wait(timeout=max(0.0, deadline - time.monotonic()))
    with lock:
        before_crash = dict(acknowledged)
    os.kill(server["proc"].pid, signal.SIGKILL)  # no shutdown, no flush: a crash
    server["proc"].wait()
    server["proc"] = start(port, experts, votes, args.timeout, log)
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    timed_out = any(t.is_alive() for t in threads)
    server["proc"].stdin.close()
    server["proc"].wait(timeout=60)
    db = sqlite3.connect(votes)
    stored = {battle: choice for battle, choice in db.execute("SELECT battle_id, choice FROM votes")}
    battles = db.execute("SELECT count(*) FROM battles").fetchone()[0]
    expected = {battle: choice for battle, choice in acknowledged.values()}
    lost = [i for i, (battle, choice) in before_crash.items() if stored.get(battle) != choice]
    report = {"voters": args.voters, "acknowledged": len(acknowledged), "votes_stored": len(stored), "battles": battles,
              "acknowledged_before_crash": len(before_crash), "lost_after_crash": lost, "retries": stats["retries"],
              "repeat_votes_refused": stats["repeats_seen"], "timed_out": timed_out, "failures": failures[:5],
              "exactly_once": stored == expected and len(stored) == args.voters}
    report["ok"] = (report["exactly_once"] and not lost and not timed_out and not failures
                    and stats["repeats_seen"] == args.voters)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voters", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1500.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
