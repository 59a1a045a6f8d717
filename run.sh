#!/usr/bin/env bash
# The project's set-up commands. `./run.sh test` is what CI runs (.ci/run); see README.md.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  # A private virtual environment with the project and its test tools; torch comes from this machine's disk.
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # Re-install only when pyproject.toml changed since the last successful install.
  stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]' 2>"$VENV/install.log" \
      || { cat "$VENV/install.log" >&2; echo "set-up failed: pip install" >&2; exit 1; }
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
  "$VENV/bin/python" -c "import torch, torchvision, onnxruntime, personsearch" \
    || { echo "set-up failed: the project's packages do not import" >&2; exit 1; }
}

# Debian packages for the real RTSP server that the ingest tests start: tests/support/rtsp_server.py runs under
# /usr/bin/python3 with gst-rtsp-server through gi (no wheel provides it); qtdemux, h264parse, rtph264pay and the test
# pattern's openh264enc come from the plug-in packages.
RTSP_PACKAGES=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad)

system_packages() {
  # Silent when the RTSP server can already run; installs what is missing as root (as CI runs), else says what skips.
  local check=(/usr/bin/python3 -I tests/support/rtsp_server.py --check)
  if [ -x /usr/bin/python3 ] && "${check[@]}" >/dev/null 2>&1; then
    return 0
  fi
  local missing=() package log
  for package in "${RTSP_PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" == *"ok installed" ]] || missing+=("$package")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "warning: the RTSP tests will be skipped: $("${check[@]}" 2>&1 | tail -n 1)" >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: the RTSP tests will be skipped: missing Debian packages ${missing[*]};" \
      "install them as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
    return 0
  fi
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "set-up failed: apt-get could not install ${missing[*]}" >&2
    exit 1
  elif ! "${check[@]}" >/dev/null 2>&1; then
    echo "warning: the RTSP tests will be skipped: $("${check[@]}" 2>&1 | tail -n 1)" >&2
  fi
  rm -f "$log"
}

case "${1:-}" in
  setup)
    setup
    ;;
  test)
    shift
    setup
    system_packages
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    exec "$VENV/bin/pytest" -q "$@"
    ;;
  demo)
    # The product's main job on embedded defaults: private Redis, the bundled model, two generated cameras, a
    # watchlist person, every worker and the API; alerts print live and a summary against the ground truth ends it.
    shift
    setup
    exec "$VENV/bin/personsearch" demo "$@"
    ;;
  *)
    echo "usage: ./run.sh setup | demo [personsearch demo options] | test [pytest args]" >&2
    exit 2
    ;;
esac
