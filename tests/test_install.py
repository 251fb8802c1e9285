"""A normal (non-editable) install ships cfg/: shipped YAMLs resolve by bare name from any working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_cfg_and_resolves_names(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(wheel_dir.glob("ghost_yolo-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import ghost_yolo, pathlib; from ghost_yolo.cfg import resolve_yaml; "
        "from ghost_yolo.models.model import GhostDetectionModel; "
        "m = resolve_yaml('ghost-n.yaml', 'models'); d = resolve_yaml('vedai-synth', 'datasets'); "
        "print(ghost_yolo.__file__); print(m); print(d); "
        "print(GhostDetectionModel('ghost-n-dual.yaml', ch=4, nc=8, verbose=False).yaml['channels'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    pkg, model_yaml, data_yaml, ch = out.stdout.split()[-4:]
    assert pkg.startswith(str(target)) and model_yaml.startswith(str(target)) and data_yaml.startswith(str(target))
    assert Path(model_yaml).is_file() and Path(data_yaml).name == "vedai-synth.yaml" and ch == "4"
