#!/usr/bin/env bash
# Installs the edge agent (and optionally the fleet manager) as systemd services.
#
#   sudo deploy/install.sh                    # agent: venv, user, directories, config, unit
#   sudo deploy/install.sh --extras tflite    # also the LiteRT runner
#   sudo deploy/install.sh --fleet            # also the fleet manager (on the plant server)
#   sudo deploy/install.sh --uninstall        # remove ours; keep config and state
#   sudo deploy/install.sh --uninstall --purge  # remove config and state (the outbox!) too
#
# Running it again is safe: it brings the machine to the same state and never overwrites an
# existing /etc/edge-agent/agent.toml. --root DIR installs into DIR instead of / (tests and
# image staging): paths are prefixed, and no systemctl command runs. See docs/deploy.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [--root DIR] [--source PATH] [--extras LIST] [--python PYTHON]
                  [--pip-args ARGS] [--config FILE] [--fleet] [--start]
       install.sh --uninstall [--purge] [--root DIR] [--fleet]

  --root DIR      install under DIR instead of / (no systemctl calls unless DIR is /)
  --source PATH   what pip installs: a checkout or a wheel (default: this script's checkout)
  --extras LIST   comma-separated extras, e.g. tflite (default: none; the agent's base install)
  --python PY     the Python 3.11+ that creates the venv (default: python3)
  --pip-args ARGS extra arguments for pip (e.g. "--index-url URL" for a local mirror)
  --config FILE   the agent config to put in place when none exists (default: deploy/agent.toml)
  --fleet         also install the fleet manager (fleet extra, user, unit, /etc/fleet-manager)
  --start         (re)start the services after installing (default: enable only)
  --uninstall     remove the venv, units, users; keep /etc and /var/lib data unless --purge
  --purge         with --uninstall: also remove config and state (outbox, model store)
EOF
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
checkout="$(dirname "$here")"

root="/"
source_path="$checkout"
extras=""
python="python3"
pip_args=""
config_file="$here/agent.toml"
with_fleet=0
start=0
uninstall=0
purge=0

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --source) source_path="${2:?--source needs a path}"; shift 2 ;;
        --extras) extras="${2?--extras needs a list}"; shift 2 ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --pip-args) pip_args="${2?--pip-args needs arguments}"; shift 2 ;;
        --config) config_file="${2:?--config needs a file}"; shift 2 ;;
        --fleet) with_fleet=1; shift ;;
        --start) start=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
    echo "install.sh: --purge goes with --uninstall" >&2
    exit 2
fi

root="$(cd "$root" && pwd)" || { echo "install.sh: --root $root does not exist" >&2; exit 2; }
# $r prefixes every path; empty for the real root.
r="${root%/}"
live=0
[ "$root" = "/" ] && live=1

prefix="/opt/edge-agent"
venv="$prefix/venv"

say() { echo "==> $*" >&2; }

if [ "$live" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or use --root DIR for a scratch install" >&2
    exit 1
fi

# ---------------------------------------------------------------------------- users

sysusers_conf() { echo "$r/etc/sysusers.d/$1.conf"; }

ensure_user() {
    local name="$1" description="$2"
    local conf
    conf="$(sysusers_conf "$name")"
    mkdir -p "$(dirname "$conf")"
    printf 'u %s - "%s" /var/lib/%s\n' "$name" "$description" "$name" >"$conf"
    chmod 0644 "$conf"
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers --root="$root" "$conf" >/dev/null
    elif ! grep -q "^$name:" "$r/etc/passwd" 2>/dev/null; then
        local where=()
        [ "$live" = 1 ] || where=(--prefix "$root")
        useradd "${where[@]}" --system --user-group --no-create-home \
            --home-dir "/var/lib/$name" --shell /usr/sbin/nologin --comment "$description" "$name"
    fi
}

remove_user() {
    local name="$1"
    local where=()
    [ "$live" = 1 ] || where=(--prefix "$root")
    if grep -q "^$name:" "$r/etc/passwd" 2>/dev/null; then
        userdel "${where[@]}" "$name"
    fi
    if grep -q "^$name:" "$r/etc/group" 2>/dev/null; then
        groupdel "${where[@]}" "$name"
    fi
    rm -f "$(sysusers_conf "$name")"
}

# The numeric group id in the target root (names only resolve on the real root).
group_id() { awk -F: -v name="$1" '$1 == name { print $3 }' "$r/etc/group"; }

# ---------------------------------------------------------------------------- units

install_unit() {
    local unit="$1"
    install -D -m 0644 "$here/systemd/$unit" "$r/etc/systemd/system/$unit"
    if [ "$live" = 1 ]; then
        systemctl daemon-reload
        systemctl enable "$unit" >/dev/null
        if [ "$start" = 1 ]; then
            systemctl restart "$unit"
        fi
    else
        # What `systemctl enable` does, for a root that is not running systemd.
        mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
        ln -sfn "/etc/systemd/system/$unit" "$r/etc/systemd/system/multi-user.target.wants/$unit"
    fi
}

remove_unit() {
    local unit="$1"
    if [ "$live" = 1 ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
    rm -f "$r/etc/systemd/system/multi-user.target.wants/$unit" "$r/etc/systemd/system/$unit"
    rmdir "$r/etc/systemd/system/multi-user.target.wants" 2>/dev/null || true
    if [ "$live" = 1 ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
    fi
}

# ---------------------------------------------------------------------------- install

check_platform() {
    local arch
    arch="$(uname -m)"
    case "$arch" in
        x86_64 | aarch64) ;;
        armv7l | armv6l)
            echo "install.sh: $arch (a 32-bit OS) has no onnxruntime wheels; install a 64-bit OS" \
                "(Raspberry Pi OS 64-bit, Ubuntu for Jetson)" >&2
            exit 1
            ;;
        *) say "warning: untested architecture $arch; onnxruntime may have no wheel for it" ;;
    esac
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "install.sh: Python 3.11 or newer is needed (--python PATH); found:" \
            "$("$python" --version 2>&1 || echo none)" >&2
        exit 1
    fi
}

install_venv() {
    local spec="$source_path"
    local want="$extras"
    if [ "$with_fleet" = 1 ]; then
        want="${want:+$want,}fleet"
    fi
    [ -n "$want" ] && spec="${source_path}[$want]"
    if [ ! -x "$r$venv/bin/python" ]; then
        say "creating $r$venv"
        "$python" -m venv "$r$venv"
    fi
    say "installing $spec into $r$venv"
    # shellcheck disable=SC2086  # pip_args is a list of words on purpose
    "$r$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pip_args "$spec"
}

install_agent() {
    ensure_user edge-agent "Edge inference agent"
    local gid
    gid="$(group_id edge-agent)"
    install -d -m 0755 "$r/etc/edge-agent"
    install -d -m 0750 "$r/var/lib/edge-agent" "$r/var/lib/edge-agent/models"
    if [ ! -e "$r/etc/edge-agent/agent.toml" ]; then
        say "putting $config_file in place as $r/etc/edge-agent/agent.toml"
        install -m 0640 "$config_file" "$r/etc/edge-agent/agent.toml"
    else
        say "keeping the existing $r/etc/edge-agent/agent.toml"
    fi
    if [ "$(id -u)" = 0 ]; then
        chown "root:$gid" "$r/etc/edge-agent/agent.toml"
        chown -R "$(awk -F: '$1 == "edge-agent" { print $3 }' "$r/etc/passwd"):$gid" \
            "$r/var/lib/edge-agent"
    fi
    install_unit edge-agent.service
}

install_fleet() {
    ensure_user fleet-manager "Edge inference fleet manager"
    install -d -m 0755 "$r/etc/fleet-manager"
    install -d -m 0750 "$r/var/lib/fleet-manager"
    if [ ! -e "$r/etc/fleet-manager/fleet.env" ]; then
        printf '%s\n' "# Settings for fleet-manager.service (see fleet --help)." \
            "FLEET_BROKER=127.0.0.1:1883" "FLEET_PREFIX=edge" \
            "# FLEET_REGISTRY=postgresql://fleet@db-host/fleet" \
            "# A broker with passwords: the password in /etc/credstore/fleet-manager.mqtt-password" \
            "# FLEET_USERNAME=fleet" "# FLEET_PASSWORD_CREDENTIAL=mqtt-password" \
            >"$r/etc/fleet-manager/fleet.env"
        chmod 0640 "$r/etc/fleet-manager/fleet.env"
    fi
    if [ "$(id -u)" = 0 ]; then
        chown "root:$(group_id fleet-manager)" "$r/etc/fleet-manager/fleet.env"
        chown "$(awk -F: '$1 == "fleet-manager" { print $3 }' "$r/etc/passwd"):$(group_id fleet-manager)" \
            "$r/var/lib/fleet-manager"
    fi
    install_unit fleet-manager.service
}

# ---------------------------------------------------------------------------- uninstall

uninstall_all() {
    local names=(edge-agent)
    # Remove the fleet manager too when asked, or when it is installed beside the agent.
    if [ "$with_fleet" = 1 ] || [ -e "$r/etc/systemd/system/fleet-manager.service" ]; then
        names+=(fleet-manager)
    fi
    for name in "${names[@]}"; do
        remove_unit "$name.service"
        remove_user "$name"
        if [ "$purge" = 1 ]; then
            rm -rf "${r:?}/etc/$name" "${r:?}/var/lib/$name"
        fi
    done
    rm -rf "${r:?}$prefix"
    if [ "$live" = 0 ]; then
        # In a scratch root, the directories the install created and that are now empty.
        for dir in etc/sysusers.d etc/systemd/system etc/systemd var/lib var opt; do
            rmdir "$r/$dir" 2>/dev/null || true
        done
    fi
    if [ "$purge" = 0 ]; then
        say "kept /etc/edge-agent and /var/lib/edge-agent (config, outbox, models): --purge removes them"
    fi
}

if [ "$uninstall" = 1 ]; then
    uninstall_all
    say "uninstalled"
    exit 0
fi

check_platform
install_venv
install_agent
if [ "$with_fleet" = 1 ]; then
    install_fleet
fi

say "installed: $venv/bin/edge-agent, unit edge-agent.service (enabled)"
if [ "$start" = 0 ]; then
    cat >&2 <<EOF
Next steps:
  1. edit /etc/edge-agent/agent.toml (device, broker, model bundle, sources)
  2. $venv/bin/edge-agent check-config --config /etc/edge-agent/agent.toml
  3. systemctl start edge-agent && journalctl -u edge-agent -f
EOF
fi
