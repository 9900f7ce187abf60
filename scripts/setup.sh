# Shared by scripts/demo and scripts/test: install what a fresh Debian 12 / Raspberry Pi OS (64-bit)
# machine lacks, then a virtualenv in .venv with the package in it. Sourced, not run.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_debian_packages PKG... : install only those not already present.
ensure_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_python: python3 >= 3.11 with venv support (Debian ships venv as a separate package).
ensure_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        ensure_debian_packages python3
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "edge-agent needs Python 3.11 or newer; this is $(python3 --version 2>&1)" >&2
        exit 1
    fi
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        ensure_debian_packages python3-venv
    fi
    if [ "$(uname -m)" = armv7l ] || [ "$(uname -m)" = armv6l ]; then
        echo "edge-agent needs a 64-bit OS (numba has no 32-bit ARM wheels): install Raspberry Pi OS 64-bit" >&2
        exit 1
    fi
}

# ensure_venv EXTRAS : .venv with this checkout installed (editable), reinstalled when pyproject changes.
ensure_venv() {
    local spec=".$1" stamp
    stamp="$(sha256sum pyproject.toml | cut -c1-16)$1"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ "$(cat .venv/.edge-agent-stamp 2>/dev/null)" != "$stamp" ]; then
        echo "installing edge-agent into .venv" >&2
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e "$spec"
        echo "$stamp" > .venv/.edge-agent-stamp
    fi
}
