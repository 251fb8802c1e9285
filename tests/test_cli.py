"""The `ghost` command: help, key parsing, and one clear error line for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import IMGSZ

from ghost_yolo.cli import entrypoint


def test_help_as_a_user_runs_it():
    out = subprocess.run([sys.executable, "-m", "ghost_yolo", "help"], capture_output=True, text=True)
    assert out.returncode == 0
    text = out.stdout + out.stderr
    for word in ("train", "val", "predict", "export", "convert-vedai", "ghost-n.yaml", "vedai-synth.yaml"):
        assert word in text


def test_mode_help_lists_ghost_keys(log):
    assert entrypoint("train help") == 0
    assert "modality" in log.text and "ir_jitter" in log.text


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ("train epoch=3", "'epoch' is not a valid ghost argument. Similar arguments are i.e. ['epochs=100'"),
        ("train modalty=rgb", "Similar arguments are i.e. ['modality"),
        ("trian", "unknown mode 'trian'. Did you mean 'train'?"),
        ("val", "needs model=path/to/best.pt"),
        ("predict model=x.pt", "needs source="),
        ("train imgsz", "'imgsz' is not a key=value pair"),
        ("train model=nope.yaml", "model YAML 'nope.yaml' not found"),
        ("convert-vedai", "convert-vedai needs source="),
        ("convert-vedai sauce=x", "'sauce' is not a valid ghost argument"),
    ],
)
def test_cli_errors_are_one_clear_line(log, cmd, expected):
    assert entrypoint(cmd) == 2
    assert expected in log.text
    assert "Traceback" not in log.text


def test_data_yaml_without_names(log, tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"path: {tmp_path}\ntrain: images\nval: images\npairing: suffix\n")
    assert entrypoint(f"train data={bad} epochs=1 imgsz={IMGSZ}") == 2
    assert "names" in log.text and "bad.yaml" in log.text


def test_bad_modality_and_pairing(log, synth_yaml, tmp_path):
    assert entrypoint(f"train data={synth_yaml} modality=thermal epochs=1 imgsz={IMGSZ} project={tmp_path}") == 2
    assert "unknown modality 'thermal'" in log.text
    plain = tmp_path / "plain.yaml"
    plain.write_text(synth_yaml.read_text().replace("pairing: suffix", ""))
    assert entrypoint(f"train data={plain} modality=ir epochs=1 imgsz={IMGSZ} project={tmp_path}") == 2
    assert "modality=ir needs paired data" in log.text


@pytest.mark.slow
def test_existing_run_dir_is_not_overwritten(synth_yaml, tmp_path):
    """Ultralytics' run-dir increment is kept: a second run with the same name goes to a new dir, the first is intact.
    (A float run: the run directory is the trainer's, whatever the bits.)"""
    args = (f"train data={synth_yaml} bits=32 epochs=1 imgsz={IMGSZ} batch=8 workers=0 val=False plots=False "
            f"project={tmp_path} name=same")
    assert entrypoint(args) == 0
    first = (tmp_path / "same" / "weights" / "last.pt").read_bytes()
    assert entrypoint(args) == 0
    runs = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("same"))
    assert len(runs) == 2 and (tmp_path / runs[1] / "weights" / "last.pt").is_file()  # e.g. same-2
    assert (tmp_path / "same" / "weights" / "last.pt").read_bytes() == first
