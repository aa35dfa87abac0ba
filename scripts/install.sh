#!/bin/sh
# Install (or --uninstall) edgedet as a systemd service on a Raspberry Pi.
#
#   sudo scripts/install.sh [--no-pip] [--unit-dir DIR] [--models DIR] [--instance NAME]
#   sudo scripts/install.sh --uninstall [--purge] [--instance NAME]
#
# --instance NAME sets up one more camera as edgedet@NAME.service with /etc/edgedet/NAME.yaml (device_id NAME)
# instead of edgedet.service; with --uninstall it removes only that instance.
#
# DESTDIR=/staging installs into a staging root: no user is created and nothing is enabled; those
# steps are recorded in $DESTDIR/opt/edgedet/install-actions.txt instead (tests, packaging).
# EDGEDET_PIP_ARGS adds pip arguments (e.g. "--no-index --find-links /media/usb/wheels");
# EDGEDET_SKIP_PIP=1 (or --no-pip) creates the venv without pip and installs no package.
# EDGEDET_OS_RELEASE reads another os-release file than /etc/os-release (tests, staging for another release).
# Layout: /opt/edgedet/{venv,models,docs,constraints.txt}, /etc/edgedet/config.yaml, <unit-dir>/edgedet.service
# (per instance: /etc/edgedet/NAME.yaml, <unit-dir>/edgedet@.service).
set -eu

SERVICE_USER=edgedet
DEVICE_GROUPS="video plugdev apex"   # camera / Coral USB / Coral PCIe (see docs/systemd.md)
PYTHON=${PYTHON:-python3}
DESTDIR=${DESTDIR:-}
PREFIX=/opt/edgedet
CONFIG_DIR=/etc/edgedet
UNIT_DIR=/etc/systemd/system
SRC=$(cd "$(dirname "$0")/.." && pwd)
MODELS_SRC=$SRC/models
SKIP_PIP=${EDGEDET_SKIP_PIP:-0}
OS_RELEASE=${EDGEDET_OS_RELEASE:-/etc/os-release}
ACTION=install
PURGE=0
INSTANCE=

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) ACTION=uninstall ;;
        --purge) PURGE=1 ;;
        --no-pip) SKIP_PIP=1 ;;
        --unit-dir) [ $# -ge 2 ] || die "--unit-dir needs a directory"; UNIT_DIR=$2; shift ;;
        --models) [ $# -ge 2 ] || die "--models needs a directory"; MODELS_SRC=$2; shift ;;
        --instance) [ $# -ge 2 ] || die "--instance needs a name"; INSTANCE=$2; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

# The name becomes a file name, a unit instance and the MQTT device id (one topic level).
case $INSTANCE in
    *[!A-Za-z0-9_-]*) die "--instance $INSTANCE: use letters, digits, _ and - only (it becomes the device_id)" ;;
    config) die "--instance config: that name is the main unit's /etc/edgedet/config.yaml; pick another" ;;
esac

ROOT=${DESTDIR%/}
OPT=$ROOT$PREFIX
ETC=$ROOT$CONFIG_DIR
UNITS=$ROOT$UNIT_DIR
ACTIONS=$OPT/install-actions.txt
MODEL_LINE='  path: models/pikachu_mobilenet_v2_0.35_96_int8.tflite'

# Steps that change the running system: done for real, or only recorded under DESTDIR.
system_step() {
    if [ -n "$ROOT" ]; then
        mkdir -p "$OPT"
        echo "$*" >> "$ACTIONS"
    else
        "$@"
    fi
}

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or set DESTDIR to install into a staging root"
fi

os_codename() {
    [ -r "$OS_RELEASE" ] || return 0
    sed -n 's/^VERSION_CODENAME=//p' "$OS_RELEASE" | tr -d "\"'" | head -n 1
}

# The NumPy the venv must keep. It sees apt's python3-picamera2 and python3-simplejpeg (--system-site-packages),
# which are built against apt's python3-numpy: 1.24 on bookworm, 2.2 on trixie. A NumPy of the other major
# version installed into the venv would shadow apt's and break them; pip keeps apt's when it fits the pin.
write_constraints() {
    codename=$(os_codename)
    case $codename in
        bookworm) numpy_pin="numpy<2"; note="Debian 12 bookworm: apt's python3-numpy is 1.24" ;;
        trixie) numpy_pin="numpy>=2"; note="Debian 13 trixie: apt's python3-numpy is 2.2" ;;
        *) numpy_pin=""; note="${codename:-unknown release} (not bookworm or trixie): NumPy left to pip" ;;
    esac
    {
        echo "# pip constraints for this venv (install.sh): $note"
        [ -z "$numpy_pin" ] || echo "$numpy_pin"
    } > "$OPT/constraints.txt"
    chmod 0644 "$OPT/constraints.txt"
    echo "install.sh: $note${numpy_pin:+; the venv keeps $numpy_pin}"
}

# 32-bit Raspberry Pi OS trixie has Python 3.13: no TFLite runtime serves it, so refuse before changing anything.
# A 32-bit userland may run on a 64-bit kernel (uname says aarch64): the pointer size tells them apart.
check_runtime_exists() {
    "$PYTHON" -c 'import platform, struct, sys
arm32 = platform.machine().startswith("arm") or (platform.machine() == "aarch64" and struct.calcsize("P") == 4)
sys.exit(1 if arm32 and sys.version_info >= (3, 12) else 0)' || die \
        "$("$PYTHON" --version) on 32-bit ARM: no TFLite runtime exists (ai-edge-litert has no 32-bit ARM" \
        "wheels; tflite-runtime 2.14 stops at Python 3.11): use the 64-bit Raspberry Pi OS"
}

install_all() {
    [ -f "$SRC/systemd/edgedet.service" ] || die "$SRC/systemd/edgedet.service not found: run from a checkout"
    check_runtime_exists

    if [ -z "$ROOT" ]; then
        for group in $DEVICE_GROUPS; do
            getent group "$group" >/dev/null || groupadd --system "$group"
        done
        if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
            useradd --system --user-group --home-dir /var/lib/edgedet --no-create-home \
                --shell /usr/sbin/nologin --comment "edgedet camera classifier" "$SERVICE_USER"
        fi
    else
        for group in $DEVICE_GROUPS; do
            system_step groupadd --system "$group"
        done
        system_step useradd --system --user-group "$SERVICE_USER"
    fi

    mkdir -p "$OPT/models" "$OPT/docs" "$ETC" "$UNITS"
    write_constraints

    # The venv sees the system site packages: apt's python3-picamera2 and libcamera are not on PyPI.
    if [ ! -x "$OPT/venv/bin/python" ]; then
        if [ "$SKIP_PIP" = 1 ]; then
            "$PYTHON" -m venv --system-site-packages --without-pip "$OPT/venv"
        else
            "$PYTHON" -m venv --system-site-packages "$OPT/venv"
        fi
    fi
    if [ "$SKIP_PIP" != 1 ]; then
        # shellcheck disable=SC2086 # EDGEDET_PIP_ARGS is a list of arguments
        "$OPT/venv/bin/python" -m pip install --upgrade --constraint "$OPT/constraints.txt" ${EDGEDET_PIP_ARGS:-} "$SRC"
    fi

    if [ -d "$MODELS_SRC" ]; then
        for model in "$MODELS_SRC"/*.tflite "$MODELS_SRC"/*.txt; do
            [ -f "$model" ] && install -m 0644 "$model" "$OPT/models/"
        done
    fi
    install -m 0644 "$SRC/docs/systemd.md" "$SRC/docs/troubleshooting.md" "$OPT/docs/"

    # The installed config names the model by absolute path: it lives in /opt, not beside /etc/edgedet.
    sed "s#^$MODEL_LINE\$#  path: $PREFIX/models/pikachu_mobilenet_v2_0.35_96_int8.tflite#" \
        "$SRC/config.yaml" > "$OPT/config.yaml.example"
    chmod 0644 "$OPT/config.yaml.example"
    if [ -n "$INSTANCE" ]; then
        install_instance
        return
    fi
    install_config "$OPT/config.yaml.example" config.yaml

    install -m 0644 "$SRC/systemd/edgedet.service" "$UNITS/edgedet.service"
    system_step systemctl daemon-reload
    system_step systemctl enable edgedet.service
    echo "install.sh: installed; start with: systemctl start edgedet"
}

install_config() {  # example, name in /etc/edgedet
    if [ -e "$ETC/$2" ]; then
        # Never overwrite a config someone may have edited: put the new example beside it.
        install -m 0644 "$1" "$ETC/$2.new"
        echo "install.sh: kept $CONFIG_DIR/$2; the new example is $CONFIG_DIR/$2.new"
    else
        install -m 0640 "$1" "$ETC/$2"
        # Readable by the service (group), writable by root only.
        system_step chgrp "$SERVICE_USER" "$ETC/$2"
    fi
}

instance_example() {  # the example config with this instance's device_id: its own MQTT topics
    sed "s#^device_id: null\$#device_id: $INSTANCE#" "$OPT/config.yaml.example"
}

install_instance() {
    [ -f "$SRC/systemd/edgedet@.service" ] || die "$SRC/systemd/edgedet@.service not found: run from a checkout"
    instance_example > "$OPT/$INSTANCE.yaml.example"
    install_config "$OPT/$INSTANCE.yaml.example" "$INSTANCE.yaml"
    rm -f "$OPT/$INSTANCE.yaml.example"
    install -m 0644 "$SRC/systemd/edgedet@.service" "$UNITS/edgedet@.service"
    system_step systemctl daemon-reload
    system_step systemctl enable "edgedet@$INSTANCE.service"
    echo "install.sh: installed instance $INSTANCE ($CONFIG_DIR/$INSTANCE.yaml: set source.path to its camera);" \
        "start with: systemctl start edgedet@$INSTANCE"
}

remove_if_empty() {
    # Under DESTDIR, remove the now empty folders up to the staging root; never on a live system.
    [ -n "$ROOT" ] || return 0
    dir=$1
    while [ "$dir" != "$ROOT" ] && [ "${dir#"$ROOT"}" != "$dir" ] && rmdir "$dir" 2>/dev/null; do
        dir=$(dirname "$dir")
    done
}

remove_config() {  # name in /etc/edgedet, the example it was installed from
    rm -f "$ETC/$1.new"
    if [ -f "$ETC/$1" ]; then
        if [ "$PURGE" = 1 ] || { [ -n "$2" ] && printf '%s\n' "$2" | cmp -s "$ETC/$1" -; }; then
            rm -f "$ETC/$1"
        else
            echo "install.sh: kept the edited $CONFIG_DIR/$1 (use --purge to remove it)"
        fi
    fi
}

uninstall_instance() {
    if [ -z "$ROOT" ]; then
        systemctl disable --now "edgedet@$INSTANCE.service" 2>/dev/null || true
        rm -rf "/var/lib/edgedet/$INSTANCE" "/var/cache/edgedet/$INSTANCE"
    fi
    example=
    [ -f "$OPT/config.yaml.example" ] && example=$(instance_example)
    remove_config "$INSTANCE.yaml" "$example"
    echo "install.sh: uninstalled instance $INSTANCE"
}

uninstall_all() {
    if [ -n "$INSTANCE" ]; then
        uninstall_instance
        return
    fi
    for config in "$ETC"/*.yaml; do
        [ -f "$config" ] || continue
        INSTANCE=$(basename "$config" .yaml)
        [ "$INSTANCE" = config ] && continue
        uninstall_instance
    done
    INSTANCE=
    if [ -z "$ROOT" ]; then
        systemctl disable --now edgedet.service 2>/dev/null || true
    fi
    rm -f "$UNITS/edgedet.service" "$UNITS/edgedet@.service"
    if [ -z "$ROOT" ]; then
        systemctl daemon-reload
    fi
    rm -f "$ETC/config.yaml.new"
    if [ -f "$ETC/config.yaml" ]; then
        if [ "$PURGE" = 1 ] || { [ -f "$OPT/config.yaml.example" ] &&
                cmp -s "$ETC/config.yaml" "$OPT/config.yaml.example"; }; then
            rm -f "$ETC/config.yaml"
        else
            echo "install.sh: kept the edited $CONFIG_DIR/config.yaml (use --purge to remove it)"
        fi
    fi
    rm -rf "$OPT"
    if [ -z "$ROOT" ]; then
        if id -u "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER"
        fi
        rm -rf /var/lib/edgedet /var/cache/edgedet
        rmdir "$ETC" 2>/dev/null || true
    fi
    remove_if_empty "$ETC"
    remove_if_empty "$UNITS"
    remove_if_empty "$(dirname "$OPT")"
    echo "install.sh: uninstalled"
}

if [ "$ACTION" = install ]; then install_all; else uninstall_all; fi
