"""``python -m composition lmms-eval``: lmms-eval's own command line, with the studio's model class and MCUB tasks.

    python -m composition lmms-eval --model_args experts=assets/experts,variant=DAMC --tasks mcub_synth
    python -m composition lmms-eval --model_args variant=expert:image --tasks mcub_synth_mc --limit 8
    python -m composition lmms-eval --mcub_data data/test/MCUB-4.json --mcub_answers data/test/MCUB-answer.json \\
        --mcub_data_root data --model_args prompt=paper --tasks mcub --log_samples --output_path out/

Everything but the options below goes to lmms-eval's entry point unchanged (``lmms_eval.__main__``'s
``cli_evaluate``: ``--tasks``, ``--limit``, ``--log_samples``, ``--output_path``, ...). This command adds
``--model mcstudio`` when no ``--model`` is given (and then ``--batch_size 8`` when none is given:
lmms-eval's default of 1 would answer one request per batch), registers the class (``register_model`` and lmms-eval
0.7's manifest registry), and adds the studio's task folder as ``--include_path`` when none is given.
Its own options (lmms-eval spelling): ``--mcub_data FILE``, ``--mcub_answers FILE``, ``--mcub_data_root DIR``
(the released MCUB files, for ``--tasks mcub``) and ``--mcub_synth_data FILE`` (for ``mcub_synth``,
``mcub_synth_mc``); they set the environment variables the task folder reads. Needs the optional
dependency: ``pip install .[lmms-eval]``.
"""
from __future__ import annotations

import argparse
import os
import sys

from .registry import command

DEFAULT_BATCH = 8  # requests per call of the engine's batch entry, unless --batch_size says otherwise
OWN_OPTIONS = {"--mcub_data": "MCUB_DATA", "--mcub_answers": "MCUB_ANSWERS", "--mcub_data_root": "MCUB_DATA_ROOT",
               "--mcub_synth_data": "MCUB_SYNTH_DATA"}


@command("lmms-eval", "run lmms-eval (optional extra) with a composition as its model (mcstudio) and the MCUB tasks")
def build_lmms_eval(p: argparse.ArgumentParser):
    # Every argument is lmms-eval's (or one of OWN_OPTIONS, read by the handler): this parser takes them all as
    # they are, so lmms-eval's options need no copy here and stay lmms-eval's to check.
    def take_all(args=None, namespace=None):
        namespace = namespace if namespace is not None else argparse.Namespace()
        namespace.lmms_args = list(args or [])
        return namespace, []

    p.parse_known_args = take_all
    return run_lmms_eval


def split_own(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(environment from this command's own options, the arguments left for lmms-eval)."""
    from ..errors import CompositionError

    env, rest, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in OWN_OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    raise CompositionError(f"{name} needs a value (a file or folder).")
                value, i = argv[i + 1], i + 1
            env[OWN_OPTIONS[name]] = os.path.abspath(value)
        else:
            rest.append(arg)
        i += 1
    return env, rest


def lmms_eval_argv(rest: list[str], tasks_dir: str) -> list[str]:
    """lmms-eval's arguments: the user's, with ``--model mcstudio`` and the task folder unless given."""
    from ..errors import CompositionError

    names = {a.partition("=")[0] for a in rest}
    for i, a in enumerate(rest):  # lmms-eval passes its own --batch_size and --device to the class as well
        value = a.partition("=")[2] if a.startswith("--model_args=") else rest[i + 1] if a == "--model_args" and i + 1 < len(rest) else ""
        keys = {part.partition("=")[0].strip() for part in value.split(",")}
        for key in sorted({"batch_size", "device"} & keys):
            raise CompositionError(f"--model_args {key}=...: lmms-eval gives the model its own --{key}; "
                                   f"write --{key} VALUE instead.")
    if "-b" in names:
        names.add("--batch_size")
    argv = list(rest)
    if "--model" not in names:
        argv = ["--model", "mcstudio", *argv]
    if "--include_path" not in names:
        argv += ["--include_path", tasks_dir]
    if "--batch_size" not in names and "--model" not in names:  # lmms-eval's default is 1: one request per batch
        argv += ["--batch_size", str(DEFAULT_BATCH)]
    return argv


def run_lmms_eval(args: argparse.Namespace) -> int:
    from ..errors import CompositionError

    argv = list(getattr(args, "lmms_args", []))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nlmms-eval's own options: python -m lmms_eval eval --help")
        return 0
    env, rest = split_own(argv)
    for key, value in env.items():
        if not os.path.exists(value):
            raise CompositionError(f"{key.lower().replace('_', '-')}: {value} does not exist.")
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        raise CompositionError("lmms-eval is not installed: pip install '.[lmms-eval]' (lmms-eval 0.7.x).") from None
    from ..evaluation.lmms_bridge import TASKS_DIR, register

    if "--include_path" in {a.partition("=")[0] for a in rest}:
        print(f"note: --include_path given; the studio's MCUB tasks are in {TASKS_DIR}", file=sys.stderr)
    os.environ.update(env)
    register()
    from lmms_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lmms-eval", *lmms_eval_argv(rest, str(TASKS_DIR))]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
