"""The installed `ghost` command, run in a subprocess in a fresh working directory exactly as a user types it.

One tiny CLI training (module fixture) feeds every mode: val, predict (saved like `yolo predict`), export (the hints
it prints are ghost commands, and they run), search, info, and `ghost train resume model=.../last.pt` (a bare word).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IMGSZ, read_csv

from ghost_yolo.cli import entrypoint, parse_args
from ghost_yolo.utils.hints import GhostHints, ghost_commands, ghost_hints

TRAIN = f"epochs=1 imgsz={IMGSZ} batch=8 workers=0 bits=32"


def ghost_command() -> list[str]:
    """The console script pip installed next to this interpreter (else on PATH); `python -m ghost_yolo` if neither."""
    here = Path(sys.executable).with_name("ghost")
    exe = str(here) if here.is_file() else shutil.which("ghost")
    return [exe] if exe else [sys.executable, "-m", "ghost_yolo"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """Runs `ghost ...` in a fresh working directory with fresh Ultralytics settings, as a new user would."""
    cwd = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTEST_CURRENT_TEST", "GHOST_DEBUG"}}  # not 'in tests'
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path_factory.mktemp("config")))
    # Fresh settings put runs under ./runs, except where Ultralytics is installed inside a git checkout (pyenv is
    # one): then under that checkout. Pin what a fresh install outside git gives, so the run lands in `cwd`.
    pin = f"from ultralytics.utils import SETTINGS; SETTINGS.update(runs_dir={str(cwd / 'runs')!r})"
    subprocess.run([sys.executable, "-c", pin], env=env, check=True, capture_output=True, timeout=120)

    def ghost(line: str, ok: bool = True) -> str:
        cmd = shlex.split(line)
        cmd = ghost_command() + cmd[1:] if cmd[0] == "ghost" else cmd
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        text = out.stdout + out.stderr
        assert (out.returncode == 0) == ok, f"{line} -> {out.returncode}\n{text[-3000:]}"
        return text

    ghost.cwd = cwd
    return ghost


@pytest.fixture(scope="module")
def cli_run(user, synth_yaml) -> Path:
    """`ghost train data=... epochs=1 ...` in the user's directory; returns the run directory it reports."""
    user(f"ghost train data={synth_yaml} {TRAIN}")
    return user.cwd / "runs" / "detect" / "train"


def test_train(cli_run):
    rows = read_csv(cli_run / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1]
    assert {"train/box_loss", "metrics/mAP50(B)", "metrics/mAP50-95(B)"} <= set(rows[0])
    assert (cli_run / "weights" / "best.pt").is_file() and (cli_run / "weights" / "last.pt").is_file()


def test_val(user, cli_run, synth_yaml):
    text = user(f"ghost val model=runs/detect/train/weights/best.pt data={synth_yaml} imgsz={IMGSZ} batch=8")
    val = user.cwd / "runs" / "detect" / "val"
    assert (val / "confusion_matrix.png").is_file() and "mAP50" in text


def test_predict_saves_like_yolo(user, cli_run, synth_yaml):
    """No save=True: `ghost predict` saves annotated images (and labels with the bare word save_txt) like `yolo`."""
    src = synth_yaml.parent / "images" / "val"
    pairs = sorted(p.name.replace("_co.png", "") for p in src.glob("*_co.png"))
    text = user(f"ghost predict model=runs/detect/train/weights/best.pt source={src} imgsz={IMGSZ} conf=0.001 save_txt")
    out = user.cwd / "runs" / "detect" / "predict"
    assert sorted(p.stem.replace("_co", "") for p in out.glob("*.jpg")) == pairs
    labels = sorted((out / "labels").glob("*.txt"))
    assert [p.stem.replace("_co", "") for p in labels] == pairs  # conf=0.001: every image has a box
    assert all(len(line.split()) == 5 for p in labels for line in p.read_text().splitlines())
    assert "summary (fused)" in text  # yolo's verbose model set-up under the CLI


def test_python_predict_does_not_save(cli_run, synth_yaml):
    """The Python API keeps YOLO's Python default: nothing saved unless save=True."""
    from ghost_yolo import GhostYOLO

    m = GhostYOLO(cli_run / "weights" / "best.pt")
    res = m.predict(source=str(synth_yaml.parent / "images" / "val"), imgsz=IMGSZ, verbose=False)
    assert len(res) == 8 and m.predictor.args.save is False and not Path(m.predictor.save_dir).exists()


def test_export_onnx_hints_ghost_commands_that_run(user, cli_run, synth_yaml):
    text = user("ghost export model=runs/detect/train/weights/best.pt format=onnx")
    assert (cli_run / "weights" / "best.onnx").is_file()
    assert "yolo predict" not in text and "yolo val" not in text
    hints = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith(("Predict:", "Validate:"))}
    assert hints["Predict"].startswith("ghost predict task=detect model=") and "best.onnx" in hints["Predict"]
    assert hints["Validate"].startswith("ghost val task=detect model=") and f"data={synth_yaml}" in hints["Validate"]
    # The printed commands work: predict once its source placeholder is filled in, val as printed
    src = synth_yaml.parent / "images" / "val"
    before = set((user.cwd / "runs" / "detect").iterdir())
    user(hints["Predict"].replace("FOLDER_OF_PAIRS", str(src)))
    user(hints["Validate"])
    new = {p.name.rstrip("-0123456789"): p for p in set((user.cwd / "runs" / "detect").iterdir()) - before}
    assert len(list(new["predict"].glob("*.jpg"))) == 8
    assert (new["val"] / "confusion_matrix.png").is_file()


def test_search_and_info(user, cli_run):
    user("ghost search model=runs/detect/train/weights/best.pt")
    assert (user.cwd / "runs" / "detect" / "search" / "bits.yaml").is_file()
    user(f"ghost info model=runs/detect/train/weights/best.pt imgsz={IMGSZ}")
    rows = read_csv(user.cwd / "runs" / "detect" / "info" / "layers.csv")
    assert rows and {"layer", "params", "w_bits", "bops"} <= set(rows[0])


@pytest.mark.slow
def test_resume_with_the_bare_word(user, synth_yaml):
    """`ghost train resume model=.../last.pt` continues a run stopped after epoch 1 of 2 in its own directory."""
    from ghost_yolo import GhostYOLO

    m = GhostYOLO("ghost-n.yaml")

    def stop(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    m.add_callback("on_fit_epoch_end", stop)
    runs = user.cwd / "runs" / "detect"
    with pytest.raises(KeyboardInterrupt):
        m.train(data=str(synth_yaml), epochs=2, imgsz=IMGSZ, batch=8, workers=0, bits=32, project=str(runs),
                name="r", plots=False)
    first = read_csv(runs / "r" / "results.csv")
    before = {p.name for p in runs.iterdir()}
    text = user("ghost train resume model=runs/detect/r/weights/last.pt")
    assert "Resuming training" in text
    rows = read_csv(runs / "r" / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2] and rows[0] == first[0]
    assert {p.name for p in runs.iterdir()} == before  # no new run directory: the same run went on


def test_kd_none_from_the_command_line():
    """`kd=none` parses to None (Ultralytics' parser): the run has no distillation, not the loss kd=auto picks."""
    from ultralytics.utils import DEFAULT_CFG_DICT

    from ghost_yolo.cfg import ghost_defaults
    from ghost_yolo.distill import DistillRecipe
    from ghost_yolo.quant import QuantRecipe

    base = {**DEFAULT_CFG_DICT, **ghost_defaults()}
    for line, kd in (("kd=none bits=4", "none"), ("kd=dfl bits=4", "dfl"), ("bits=4", None)):
        args = {**base, **parse_args(line.split(), base)}
        recipe = DistillRecipe.from_args(args, QuantRecipe.from_args(args))
        assert (recipe.kd, bool(recipe.auto)) == ((kd, False) if kd else (recipe.kd, True)), line  # None: kd=auto


def test_bare_words_parse_like_yolo():
    from ultralytics.utils import DEFAULT_CFG_DICT

    from ghost_yolo.cfg import ghost_defaults

    base = {**DEFAULT_CFG_DICT, **ghost_defaults()}
    got = parse_args("detect resume model=last.pt save_txt dynamic int4 --keep_head".split(), base)
    assert got == {"task": "detect", "resume": True, "model": "last.pt", "save_txt": True, "dynamic": True,
                   "int4": True, "keep_head": True}
    assert parse_args(["half"], base) == {"quantize": 16}  # Ultralytics' deprecated flag, mapped as yolo maps it
    assert parse_args(["int8"], base) == {"quantize": 8}


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ("train imgsz", "'imgsz' is not a key=value pair: it needs a value, i.e. 'imgsz=640'"),
        ("train resum", "'resum' is not a key=value pair nor a boolean key. Similar arguments are i.e. ['resume"),
        ("train segment", "task 'segment' is not available, only detect or obb"),
        ("predict model=x.pt imgsz=", "missing 'imgsz' value"),
    ],
)
def test_bad_bare_words_are_one_line(log, cmd, expected):
    assert entrypoint(cmd) == 2
    errors = [r.getMessage() for r in log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and expected in errors[0] and "\n" not in errors[0]


def test_task_word_and_help_positions(log):
    assert entrypoint("detect train help") == 0 and "modality" in log.text
    assert entrypoint("detect help") == 0 and "Usage: ghost MODE" in log.text


def test_cli_errors_hint_ghost_commands(log, tmp_path, synth_yaml):
    """Ultralytics' error hints reach the user through the ghost command's one error line, as ghost commands."""
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    assert entrypoint(f"train model={onnx} data={synth_yaml}") == 2
    assert "'ghost predict model=yolo26n.onnx'" in log.text and "yolo predict" not in log.text


def test_hint_rewriting():
    export = ("\nPredict:         yolo predict task=detect model=runs/yolo11n.onnx imgsz=64 "
              "\nValidate:        yolo val task=detect model=runs/yolo11n.onnx imgsz=64 data=d.yaml "
              "\nVisualize:       https://netron.app")
    assert ghost_commands(export) == (
        "\nPredict:         ghost predict task=detect model=runs/yolo11n.onnx imgsz=64 source=FOLDER_OF_PAIRS "
        "\nValidate:        ghost val task=detect model=runs/yolo11n.onnx imgsz=64 data=d.yaml "
        "\nVisualize:       https://netron.app")
    resume = "Resume checkpoint not found. i.e. 'yolo train resume model=path/to/last.pt'"
    assert ghost_commands(resume) == resume.replace("'yolo train", "'ghost train")
    assert ghost_commands("try 'yolo export imgsz=640,480'") == "try 'ghost export imgsz=640,480'"
    for same in ("Use an official Ultralytics model, i.e. 'yolo predict model=yolo26n.pt'",  # Ultralytics' own model
                 "View Ultralytics Settings with 'yolo settings'", "saved yolo11n.pt", "runs/yolo train/x",
                 "the yolo trainer", "ghost predict model=a.pt", "yolo11n.pt\nghost predict model=a.pt"):
        assert ghost_commands(same) == same


def test_hints_filter_is_scoped(log):
    """`ghost_hints()` rewrites Ultralytics' records only inside the block (a plain YOLO export later prints yolo)."""
    from ultralytics.utils import LOGGER

    with ghost_hints():
        with ghost_hints():  # nested: one filter
            assert sum(isinstance(f, GhostHints) for f in LOGGER.filters) == 1
        LOGGER.info("Predict: yolo predict task=detect model=%s imgsz=64", "m.onnx")
    LOGGER.info("Validate: yolo val model=m.onnx")
    assert not any(isinstance(f, GhostHints) for f in LOGGER.filters)
    msgs = [r.getMessage() for r in log.records]
    assert "Predict: ghost predict task=detect model=m.onnx imgsz=64 source=FOLDER_OF_PAIRS" in msgs
    assert "Validate: yolo val model=m.onnx" in msgs


def test_python_export_prints_ghost_hints(log, monkeypatch):
    """GhostExporter (GhostYOLO.export) prints Ultralytics' closing hints as ghost commands in Python too."""
    from ultralytics.engine.exporter import Exporter
    from ultralytics.utils import LOGGER

    from ghost_yolo.export.exporter import GhostExporter

    def stock_call(self, model):  # what Exporter.__call__ ends with, without an actual export
        LOGGER.info("\nPredict:         yolo predict task=detect model=m.onnx imgsz=64 ")
        return "m.onnx"

    monkeypatch.setattr(Exporter, "__call__", stock_call)
    assert GhostExporter.__call__(object.__new__(GhostExporter), model=None) == "m.onnx"
    assert "ghost predict task=detect model=m.onnx imgsz=64 source=FOLDER_OF_PAIRS" in log.text
    assert "yolo predict" not in log.text
