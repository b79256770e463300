# Shared by scripts/demo and scripts/test: install what is missing, never what is there.
# Works on a fresh Debian 12 as root or as a user with sudo.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 2; }
    SUDO="sudo"
fi

# ensure_apt PKG...: apt-get install the packages that are not installed yet (one update at most).
ensure_apt() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    # Server packages (influxdb, mosquitto, haproxy, openssh-server...) must not start system daemons here:
    # the tests start their own instances on 127.0.0.1. policy-rc.d exit 101 forbids starting services.
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && added=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { [ -n "$added" ] && $SUDO rm -f "$policy"; return 1; }
    [ -n "$added" ] && $SUDO rm -f "$policy"
    return 0
}

# ensure_venv EXTRAS: a virtualenv in .venv with the project installed (editable) with those extras.
ensure_venv() {
    local extras="$1"
    ensure_apt python3 python3-venv python3-pip
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
}
