#!/usr/bin/env bash
# Does edgedet install and classify right on a Raspberry Pi OS base? An emulated Debian arm64 root (qemu-user,
# debootstrap) gets the real aarch64 wheels from PyPI and runs them. Checks by hand, not CI: it is slow (on a
# shared 2-core x86_64: root creation 8 min bookworm, 18 min trixie, once; then 10-28 min per check, nearly
# all of it pip under emulation), and emulation says nothing about speed. No camera and no Edge TPU in there: picamera2 and libedgetpu are not exercised.
#
#   sudo scripts/arm64-install-check.sh [trixie|bookworm] [MODELS_DIR]
#   sudo CHECKS=install.sh scripts/arm64-install-check.sh trixie      # only check 2 (default: "plain install.sh")
#
# MODELS_DIR (default $EDGEDET_SHARED_MODELS, else ../shared/models) holds mobilenet_v2_1.0_224_quant.tflite,
# imagenet_labels.txt and cat.bmp. The root is $ARM64_ROOT (default /tmp/arm64-<release>), kept for reuse.
# Two checks, each must print class 286 (Egyptian cat) for cat.bmp:
#   1. a plain venv and `pip install <this checkout>`;
#   2. scripts/install.sh into a staging root (DESTDIR, pip on) next to apt's python3-numpy, as apt's
#      python3-picamera2 would bring it; the venv must use apt's NumPy, not install its own.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-trixie}
models=${2:-${EDGEDET_SHARED_MODELS:-$SRC/../shared/models}}
root=${ARM64_ROOT:-/tmp/arm64-$suite}
case $suite in bookworm|trixie) ;; *) echo "arm64-install-check.sh: release must be bookworm or trixie" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "arm64-install-check.sh: run as root (debootstrap, chroot)" >&2; exit 2; }
for f in mobilenet_v2_1.0_224_quant.tflite imagenet_labels.txt cat.bmp; do
  [ -f "$models/$f" ] || { echo "arm64-install-check.sh: $models/$f not found (give MODELS_DIR)" >&2; exit 2; }
done

t0=$SECONDS
stamp() { printf '== %s (%ds)\n' "$*" $((SECONDS - t0)); }
in_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null || {
  apt-get update -qq; apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null; }
[ -f /proc/sys/fs/binfmt_misc/register ] || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
[ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
if [ ! -x "$root/usr/bin/python3" ]; then
  stamp "debootstrap $suite arm64 into $root (log: $root.debootstrap.log)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$root" >"$root.debootstrap.log" 2>&1
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mountpoint -q "$root/proc" || mount --bind /proc "$root/proc"
# No /sys on purpose: with the host's /sys, LiteRT's cpuinfo makes qemu segfault at exit; without it, three
# "Error in cpuinfo" lines on stderr and a correct result.
stamp "root ready: $(in_root uname -m), $(in_root python3 --version)"

# A fresh copy of the checkout's tracked files (uncommitted edits included) and the three model files.
work=/tmp/edgedet-check
rm -rf "${root:?}$work"
mkdir -p "$root$work/src" "$root$work/models"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$SRC" ls-files -z | (cd "$SRC" && tar --null -T - -cf -) | tar -C "$root$work/src" -xf -
else
  tar -C "$SRC" --exclude=.venv --exclude=.venv-tflite214 -cf - . | tar -C "$root$work/src" -xf -
fi
cp "$models"/{mobilenet_v2_1.0_224_quant.tflite,imagenet_labels.txt,cat.bmp} "$root$work/models/"

# Prints the versions the venv uses and checks the top-1 class of cat.bmp.
check_classify() {
  venv=$1
  in_root sh -c "cd $work && $venv/bin/edgedet classify --json --model models/mobilenet_v2_1.0_224_quant.tflite \
    --labels models/imagenet_labels.txt models/cat.bmp" > "$root$work/result.json"
  in_root "$venv/bin/python" - "$work/result.json" <<'EOF'
import json, sys
from importlib.metadata import version
import numpy
result = json.loads(open(sys.argv[1]).readline())
top = result["top_k"][0]
print(f"python {sys.version.split()[0]} · ai-edge-litert {version('ai-edge-litert')} · numpy {numpy.__version__}"
      f" from {numpy.__file__.rsplit('/', 2)[0]} · runtime {result['runtime']['name']} {result['runtime']['version']}")
print(f"cat.bmp: top-1 {top['class_id']} {top['label']!r} score {top['score']:.3f}")
sys.exit(0 if top["class_id"] == 286 else f"FAIL: expected class 286 (Egyptian cat), got {top['class_id']}")
EOF
}

checks=${CHECKS:-plain install.sh}
case " $checks " in *" plain "*)
stamp "check 1: plain venv, pip install of the checkout"
in_root python3 -m venv "$work/venv"
in_root "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$work/src"
stamp "pip install done"
check_classify "$work/venv"
stamp "check 1 passed"
esac

case " $checks " in *" install.sh "*)
stamp "check 2: apt python3-numpy, then scripts/install.sh into DESTDIR=$work/stage with pip"
in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-numpy >/dev/null'
in_root sh -c "DESTDIR=$work/stage EDGEDET_PIP_ARGS='-q --disable-pip-version-check' sh $work/src/scripts/install.sh"
stamp "install.sh done"
check_classify "$work/stage/opt/edgedet/venv"
in_root "$work/stage/opt/edgedet/venv/bin/python" -c 'import numpy, sys
sys.exit(0 if numpy.__file__.startswith("/usr/lib/python3/dist-packages/") else "FAIL: the venv shadows apt NumPy")'
stamp "check 2 passed: the venv uses apt's NumPy"
esac
