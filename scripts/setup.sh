#!/usr/bin/env bash
# Create (or reuse) the repo's virtual environment in .venv and install finessl_lab with its test extras.
# Idempotent: re-installs only when pyproject.toml changed. torch/torchvision are pinned in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.finessl_lab-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
# Optional offline dataset: Debian's dataset-fashion-mnist (70,000 real Fashion-MNIST images, used by the
# fashion_mnist dataset). Installed when we are root on a Debian/Ubuntu system and it is missing; otherwise a note.
# Tests do not depend on it (they build tiny IDX files); tests/test_settings.py checks the Debian files when
# FINESSL_LAB_REQUIRE_FASHION_MNIST=1 (then a missing package fails instead of skipping).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "note: could not apt-get install dataset-fashion-mnist; fashion_mnist needs data.root" >&2
  else
    echo "note: fashion_mnist offline data missing: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
# The browser test (tests/test_browser.py, pytest -m browser): Playwright drives Debian's Chromium (never a browser
# download). Installed when we are root on Debian/Ubuntu and it is missing; otherwise a note. The test skips without
# it unless FINESSL_LAB_REQUIRE_BROWSER=1 (CI), which makes a missing browser a failure.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "note: could not apt-get install chromium; the browser test (pytest -m browser) will skip" >&2
  else
    echo "note: the browser test needs Chromium: sudo apt-get install chromium" >&2
  fi
fi
