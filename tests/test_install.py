"""scripts/install.sh into a staging root (DESTDIR): the tree it makes, and --uninstall leaving it clean."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"
MODEL_NAME = "pikachu_mobilenet_v2_0.35_96_int8.tflite"


def run(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DESTDIR": str(root), "EDGEDET_SKIP_PIP": "1", **(env or {})}
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models-src"
    folder.mkdir()
    (folder / MODEL_NAME).write_bytes(b"TFL3 placeholder")
    (folder / "labels.txt").write_text("background\npikachu\n")
    return folder


def test_install_makes_the_expected_tree(tmp_path: Path, models: Path) -> None:
    root = tmp_path / "root"
    result = run(root, "--models", str(models))
    assert result.returncode == 0, result.stderr
    files = {p for p in tree(root) if (root / p).is_file() and "opt/edgedet/venv/" not in p}
    assert files == {
        "etc/edgedet/config.yaml",
        "etc/systemd/system/edgedet.service",
        "opt/edgedet/config.yaml.example",
        "opt/edgedet/constraints.txt",
        "opt/edgedet/install-actions.txt",
        f"opt/edgedet/models/{MODEL_NAME}",
        "opt/edgedet/models/labels.txt",
        "opt/edgedet/docs/systemd.md",
        "opt/edgedet/docs/troubleshooting.md",
    }
    unit = (root / "etc/systemd/system/edgedet.service").read_text()
    assert unit == (REPO / "systemd/edgedet.service").read_text()
    config_mode = stat.S_IMODE((root / "etc/edgedet/config.yaml").stat().st_mode)
    assert config_mode == 0o640
    # The venv sees apt's packages (picamera2) and has no pip in this test.
    pyvenv = (root / "opt/edgedet/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in pyvenv
    assert (root / "opt/edgedet/venv/bin/python").exists()
    # The installed config points at the installed model by absolute path.
    config = yaml.safe_load((root / "etc/edgedet/config.yaml").read_text())
    assert config["model"]["path"] == f"/opt/edgedet/models/{MODEL_NAME}"
    # What a live install would do to the system is recorded, not done.
    actions = (root / "opt/edgedet/install-actions.txt").read_text().splitlines()
    assert actions == [
        "groupadd --system video", "groupadd --system plugdev", "groupadd --system apex",
        "useradd --system --user-group edgedet",
        f"chgrp edgedet {root}/etc/edgedet/config.yaml",
        "systemctl daemon-reload", "systemctl enable edgedet.service",
    ]


def os_release(tmp_path: Path, codename: str) -> Path:
    path = tmp_path / "os-release"
    # As Raspberry Pi OS writes it (64-bit: ID=debian), some values quoted.
    path.write_text(f'PRETTY_NAME="Debian GNU/Linux {codename}"\nID=debian\nVERSION_CODENAME={codename}\n')
    return path


@pytest.mark.parametrize(("codename", "pin"), [("bookworm", "numpy<2"), ("trixie", "numpy>=2")])
def test_the_venv_keeps_the_numpy_major_of_the_release(tmp_path: Path, models: Path, codename: str,
                                                       pin: str) -> None:
    """apt's picamera2/simplejpeg are built against apt's NumPy (1.24 on bookworm, 2.2 on trixie): the pip
    constraints file pins the venv to that major version."""
    root = tmp_path / "root"
    result = run(root, "--models", str(models), env={"EDGEDET_OS_RELEASE": str(os_release(tmp_path, codename))})
    assert result.returncode == 0, result.stderr
    lines = (root / "opt/edgedet/constraints.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [pin]
    assert f"{codename}: apt's python3-numpy is" in result.stdout
    assert f"the venv keeps {pin}" in result.stdout


def test_an_unknown_release_gets_no_numpy_pin(tmp_path: Path, models: Path) -> None:
    root = tmp_path / "root"
    result = run(root, "--models", str(models), env={"EDGEDET_OS_RELEASE": str(os_release(tmp_path, "forky"))})
    assert result.returncode == 0, result.stderr
    lines = (root / "opt/edgedet/constraints.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == []
    assert "forky (not bookworm or trixie): NumPy left to pip" in result.stdout
    # Without a readable os-release file the release is unknown too, and the install still completes.
    root2 = tmp_path / "root2"
    result = run(root2, "--models", str(models), env={"EDGEDET_OS_RELEASE": str(tmp_path / "missing")})
    assert result.returncode == 0, result.stderr
    assert "unknown release (not bookworm or trixie)" in result.stdout


def test_installed_config_validates(tmp_path: Path, models: Path) -> None:
    from edgedet.config import load_config

    root = tmp_path / "root"
    assert run(root, "--models", str(models)).returncode == 0
    text = (root / "etc/edgedet/config.yaml").read_text()
    # Validate it as the service would, with /opt/edgedet mapped into the staging root.
    staged = tmp_path / "staged.yaml"
    staged.write_text(text.replace("/opt/edgedet/", f"{root}/opt/edgedet/"))
    config, _ = load_config(staged)
    assert config.model.path == root / "opt/edgedet/models" / MODEL_NAME


def test_existing_config_is_never_overwritten(tmp_path: Path, models: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/edgedet").mkdir(parents=True)
    (root / "etc/edgedet/config.yaml").write_text("model:\n  top_k: 5\n")
    result = run(root, "--models", str(models))
    assert result.returncode == 0, result.stderr
    assert (root / "etc/edgedet/config.yaml").read_text() == "model:\n  top_k: 5\n"
    assert (root / "etc/edgedet/config.yaml.new").is_file()
    assert "kept /etc/edgedet/config.yaml" in result.stdout
    # Uninstall keeps the edited config too, and says so.
    result = run(root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert tree(root) == {"etc", "etc/edgedet", "etc/edgedet/config.yaml"}
    assert "kept the edited /etc/edgedet/config.yaml" in result.stdout
    assert run(root, "--uninstall", "--purge").returncode == 0
    assert tree(root) == set()


def test_uninstall_leaves_the_root_clean(tmp_path: Path, models: Path) -> None:
    root = tmp_path / "root"
    assert run(root, "--models", str(models)).returncode == 0
    assert tree(root)
    result = run(root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert tree(root) == set()


def test_unit_dir_option(tmp_path: Path, models: Path) -> None:
    root = tmp_path / "root"
    assert run(root, "--models", str(models), "--unit-dir", "/usr/lib/systemd/system").returncode == 0
    assert (root / "usr/lib/systemd/system/edgedet.service").is_file()
    assert not (root / "etc/systemd").exists()
    assert run(root, "--uninstall", "--unit-dir", "/usr/lib/systemd/system").returncode == 0
    assert tree(root) == set()


@pytest.mark.slow
def test_pip_runs_in_the_venv_with_extra_args_and_failure_stops_the_install(tmp_path: Path) -> None:
    """Without --no-pip the venv gets pip (ensurepip, ~15 s) and pip gets $EDGEDET_PIP_ARGS; an option pip
    rejects makes pip fail, and the script must stop there with pip's message, installing no config."""
    root = tmp_path / "root"
    result = run(root, env={"EDGEDET_SKIP_PIP": "0", "EDGEDET_PIP_ARGS": "--edgedet-test-bogus-option"})
    assert result.returncode != 0
    assert "no such option: --edgedet-test-bogus-option" in result.stderr
    assert (root / "opt/edgedet/venv/bin/pip").exists()
    assert not (root / "etc/edgedet/config.yaml").exists()


def test_unknown_argument_exits_2(tmp_path: Path) -> None:
    result = run(tmp_path / "root", "--frobnicate")
    assert result.returncode == 2
    assert "install.sh: unknown argument: --frobnicate" in result.stderr


def test_live_install_needs_root() -> None:
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot run the script unprivileged")
        # The checkout may be private (a 0700 home folder): nobody runs a copy in a world-readable folder.
        public = Path(tempfile.mkdtemp(prefix="edgedet-install-"))
        (public / "scripts").mkdir()
        script = Path(shutil.copy2(SCRIPT, public / "scripts" / "install.sh"))
        for path in (public, public / "scripts", script):
            path.chmod(0o755)
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "sh", str(script)]
    else:
        public, command = None, ["sh", str(SCRIPT)]
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd="/")
    finally:
        if public is not None:
            shutil.rmtree(public)
    assert result.returncode == 2, result.stderr
    assert "run as root (sudo), or set DESTDIR" in result.stderr
