"""``pip install .`` gives a library that imports and a ``mcstudio`` command, in a fresh virtual environment.

The fresh venv sees this environment's installed dependencies through a ``.pth`` file (so the
test needs no network and no 2-GB torch download) but not the repository: the library it runs
is the copy pip installed, with the bundled experts and examples it carries.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, its site-packages) with ``pip install .`` done."""
    root = tmp_path_factory.mktemp("fresh-venv")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    packages = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                            text=True).strip())
    # The dependencies, from this environment; nothing of the repository is on that path. The build backend
    # too (the venv's own setuptools predates PEP 639 wheels): offline, no build isolation.
    (packages / "deps-from-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True, capture_output=True, timeout=120)
    result = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "-q", str(REPO)],
                            capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return env_dir, packages


def run(env_dir: Path, *args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(env_dir / "bin" / args[0]), *map(str, args[1:])], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def test_only_the_library_reaches_site_packages(installed):
    _, packages = installed
    tops = {p.name for p in packages.iterdir()}
    assert {"composition", "modalities"} <= tops
    assert not tops & {"checks.py", "checks", "training", "studio", "app.py", "tests", "assets", "examples"}
    assert (packages / "composition" / "bundled" / "experts" / "image" / "expert.json").is_file()
    tasks = packages / "composition" / "evaluation" / "lmms_bridge" / "tasks" / "mcub"  # lmms-eval reads these files
    assert {"mcub.yaml", "mcub_synth.yaml", "_default_template_yaml", "utils.py"} <= {p.name for p in tasks.iterdir()}


def test_mcstudio_lists_and_composes_the_bundled_experts(installed, tmp_path):
    env_dir, packages = installed
    where = run(env_dir, "python", "-c", "import composition, modalities; print(composition.__file__, modalities.__file__)",
                cwd=tmp_path)
    assert where.returncode == 0 and all(str(packages) in p for p in where.stdout.split()), where.stdout + where.stderr
    listed = run(env_dir, "mcstudio", "experts", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {e["name"] for e in json.loads(listed.stdout)["experts"]}
    assert {"image", "audio", "video", "point", "image-shared"} <= names
    image = packages / "composition" / "examples" / "image-example.png"
    answered = run(env_dir, "mcstudio", "compare", "--question", "What colour is the object?", "--image", image,
                   "--variants", "expert:image", "DAMC", "--max-new-tokens", "6", "--json", cwd=tmp_path)
    assert answered.returncode == 0, answered.stderr[-2000:]
    variants = json.loads(answered.stdout)["variants"]
    assert [v["name"] for v in variants] == ["expert:image", "DAMC"] and all(v["answer"] for v in variants)
    assert not any("not one of its examples" in n for v in variants for n in v["notes"])  # its own examples, recognised
    usage = run(env_dir, "mcstudio", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: mcstudio")
