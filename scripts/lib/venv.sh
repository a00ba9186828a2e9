# shellcheck shell=bash
# Prepares ./.venv with the project and the extras asked for; sourced by scripts/demo and scripts/test.
# Re-installs only when pyproject.toml changed or more extras are wanted.

ensure_venv() {
    local extras="$1"
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: Python 3.11 or newer is needed (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv with $("$python" --version)" >&2
        "$python" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    local stamp=".venv/.installed"
    local want
    want="$(sha256sum pyproject.toml | cut -c1-16) $extras"
    if [ -f "$stamp" ] && { grep -qxF "$want" "$stamp" || grep -qxF "$(sha256sum pyproject.toml | cut -c1-16) all" "$stamp"; }; then
        return 0
    fi
    echo "==> installing the project with extras [$extras] into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install --quiet --progress-bar off -e ".[$extras]"
    echo "$want" >> "$stamp"
}
