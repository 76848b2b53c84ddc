#!/usr/bin/env bash
# The Caffe2 runtime's interpreter: scripts/caffe2-env.sh up|status|path|down
#
# Caffe2 exists only inside PyPI's torch wheels for Python 3.9, versions 1.7.1 to 1.10.2 (later
# wheels ship its Python files without the compiled module, 1.13 and later nothing). `up` builds
# a Python 3.9 virtual environment with torch 1.10.2 and its ONNX backend in a folder outside
# the checkout, $CAFFE2_ENV (default ~/.cache/resnest-bench/caffe2-torch1.10.2-py39), about
# 915 MB to download and 2.0 GB on disk. The inference job's `caffe2` runtime runs the model in
# that interpreter, in a child process of its own.
#
# What it changes on the machine: where no Python 3.9 is given ($PYTHON39) and Debian's
# /usr/bin/python3.9 is missing, it adds Debian's `bullseye` suite (same archive, same keyring)
# as /etc/apt/sources.list.d/resnest-bench-bullseye.sources, pinned to priority 100 in
# /etc/apt/preferences.d/resnest-bench-bullseye so that nothing of the installed release is
# replaced, and installs python3.9 from it (7 packages, 6.6 MB). `down` removes the folder;
# the apt suite and python3.9 stay (`down --apt` removes those too).
#
# Idempotent: `up` on a complete environment only prints its interpreter.
set -euo pipefail

env_dir=${CAFFE2_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnest-bench/caffe2-torch1.10.2-py39}
sources=/etc/apt/sources.list.d/resnest-bench-bullseye.sources
pin=/etc/apt/preferences.d/resnest-bench-bullseye
# Pinned together: torch 1.10.2's ONNX backend needs onnx 1.10 and onnxoptimizer (onnx.optimizer
# left onnx in 1.9); numpy and protobuf at the last releases that torch 1.10 and onnx 1.10 take;
# torch 1.10 imports `packaging` from setuptools' pkg_resources, which setuptools 70 dropped.
packages="torch==1.10.2 onnx==1.10.2 onnxoptimizer==0.2.7 numpy==1.23.5 protobuf==3.20.3 future==1.0.0
    setuptools==69.5.1"

say() { echo "caffe2-env: $*" >&2; }

python39() {
    if [ -n "${PYTHON39:-}" ]; then echo "$PYTHON39"; return; fi
    if [ -x /usr/bin/python3.9 ]; then echo /usr/bin/python3.9; return; fi
    [ "$(id -u)" = 0 ] || { say "Python 3.9 is missing and installing it needs root (or set PYTHON39)"; exit 1; }
    say "installing python3.9 from Debian bullseye ($sources, pinned at priority 100)"
    cat >"$sources" <<'EOF'
# Added by resnest-bench's scripts/caffe2-env.sh for python3.9 (the Caffe2 runtime).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$pin" <<'EOF'
# Added by resnest-bench's scripts/caffe2-env.sh: bullseye only for what the installed release lacks.
Package: *
Pin: release n=bullseye
Pin-Priority: 100
EOF
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.9 >/dev/null
    echo /usr/bin/python3.9
}

check() {  # prints the versions; fails when the environment cannot import the backend
    "$env_dir/bin/python" - <<'PY'
import caffe2.python.onnx.backend  # noqa: F401
import sys
import onnx, onnxoptimizer, torch  # noqa: E401,F401
print(f"caffe2 (torch {torch.__version__}, onnx {onnx.__version__}, Python {sys.version.split()[0]})")
PY
}

case "${1:-}" in
up)
    if [ -f "$env_dir/.complete" ] && check >/dev/null 2>&1; then
        echo "$env_dir/bin/python"; exit 0
    fi
    py=$(python39)
    "$py" -c 'import sys; assert sys.version_info[:2] == (3, 9), sys.version' \
        || { say "$py is not Python 3.9"; exit 1; }
    say "building $env_dir (torch 1.10.2 for Python 3.9: about 915 MB to download)"
    rm -rf "$env_dir"
    mkdir -p "$(dirname "$env_dir")"
    # Debian's python3.9-venv is not installable beside bookworm: a venv without pip, pip told
    # to use sysconfig (Debian's 3.9 has only a stub distutils), pip from its wheel.
    "$py" -m venv --without-pip "$env_dir"
    site=$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import sysconfig; sysconfig._PIP_USE_SYSCONFIG = True" >"$site/_resnest_bench_pip.pth"
    wheels=$(mktemp -d)
    trap 'rm -rf "$wheels"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.9 \
        -d "$wheels" "pip==24.0"
    wheel=$(ls "$wheels"/pip-*.whl)
    "$env_dir/bin/python" "$wheel/pip" install --quiet --no-index "$wheel"
    "$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir $packages
    check >&2
    touch "$env_dir/.complete"
    echo "$env_dir/bin/python"
    ;;
status)
    if [ -f "$env_dir/.complete" ] && versions=$(check 2>/dev/null); then
        echo "$env_dir/bin/python: $versions, $(du -sh "$env_dir" | cut -f1) on disk"
    else
        echo "no Caffe2 interpreter at $env_dir (scripts/caffe2-env.sh up builds it)"
        exit 1
    fi
    ;;
path)
    echo "$env_dir/bin/python"
    ;;
down)
    rm -rf "$env_dir"
    if [ "${2:-}" = "--apt" ]; then
        [ -f "$sources" ] && DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq python3.9 >/dev/null
        rm -f "$sources" "$pin"
        apt-get update -qq
    fi
    ;;
*)
    echo "usage: $0 up|status|path|down [--apt]   (folder: \$CAFFE2_ENV; Python 3.9: \$PYTHON39)" >&2
    exit 2
    ;;
esac
