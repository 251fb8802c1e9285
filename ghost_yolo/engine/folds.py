"""The VEDAI k-fold protocol in one command: train and validate several folds, report each and their mean ± std.

``ghost train data=datasets/vedai/vedai-fold01.yaml folds=1-10`` (or ``GhostYOLO(...).train(..., folds="1-10")``,
or ``train_folds``) trains the model once per fold on the data YAMLs ``ghost convert-vedai`` writes (one per fold, named
alike but for the number), each in its own run dir ``<project>/<name>/foldNN``, then writes ``folds.csv`` next to them
and prints the table: mAP50, mAP50-95, size MB, GBOPs and average weight bits per fold, their mean ± std, and the
protocol they were obtained under. VEDAI results are quoted as the 10-fold mean or as fold 1 alone (method.md §1);
the table says which one it is.

The folds root does not increment like Ultralytics' run dirs: repeating the command continues the same experiment. A
fold whose run finished (``summary.json`` written) is read back, not trained again; an unfinished one is trained anew.
A finished fold trained with other settings than the command asks for is refused, naming every key that differs: its
whole ``args.yaml`` is compared with what the command would record (its keys over the starting model's and the
defaults), less the keys that do not change the result (``IGNORED_KEYS``) and those the run resolves itself from an
empty or ``auto`` value (``kd=auto``, ``bits``, ``fp_epochs``).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ultralytics.utils import DEFAULT_CFG_DICT, LOGGER, YAML, colorstr

from ghost_yolo.cfg import ghost_defaults

FOLD_RE = re.compile(r"fold(\d+)", re.IGNORECASE)
# Keys of a finished fold's args.yaml that change where or how verbosely a run happens, not what it measures; data is
# the fold's own YAML
IGNORED_KEYS = {"project", "name", "save_dir", "exist_ok", "device", "workers", "verbose", "plots", "cache",
                "save_period", "resume", "data"}
COLUMNS = ("fold", "mAP50", "mAP50-95", "size_MB", "GBOPs", "avg_bits", "epochs", "run")


def parse_folds(spec: Any) -> list[int] | None:
    """Fold numbers from ``1-10``, ``1-3``, ``[1, 2, 5]``, ``1,2,5`` or ``3``, sorted; ``all`` (or None, as
    ``train_folds`` is called without ``folds``): None (every fold)."""
    if spec is None or isinstance(spec, str) and spec.strip().lower() == "all":
        return None
    items = spec if isinstance(spec, (list, tuple)) else str(spec).strip("[]() ").split(",")
    folds = set()
    for item in items:
        text = str(item).strip()
        try:
            lo, _, hi = text.partition("-")
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"folds={spec} is not a list of folds: use a range (1-10), a list ([1,2,5]), one fold (3) "
                             "or all") from None
        if first < 1 or last < first:
            raise ValueError(f"folds={spec}: fold numbers start at 1 and ranges go up, as in 1-10")
        folds.update(range(first, last + 1))
    return sorted(folds)


def fold_names(data: str | Path) -> tuple[Path, str, int, str]:
    """(folder, text before the fold number, its digits, text after) of a fold's data YAML: ``vedai-fold01.yaml`` ->
    (folder, ``vedai-fold``, 2, ``.yaml``)."""
    path = Path(str(data))
    matches = list(FOLD_RE.finditer(path.name))
    if not matches or path.suffix not in {".yaml", ".yml"}:
        raise ValueError(f"folds= needs data= one fold's data YAML, named like vedai-fold01.yaml (ghost convert-vedai "
                         f"writes one per fold), not {data}")
    m = matches[-1]
    return path.parent, path.name[: m.start(1)], len(m.group(1)), path.name[m.end(1):]


def fold_yamls(data: str | Path, folds: Any) -> dict[int, Path]:
    """The data YAML of every fold asked for, found next to ``data``; missing ones are refused by name in one line."""
    folder, before, width, after = fold_names(data)
    numbers = parse_folds(folds)
    if numbers is None:  # all: every sibling named alike
        pattern = re.compile(re.escape(before) + r"(\d+)" + re.escape(after) + "$")
        numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name)))
    yamls = {n: folder / f"{before}{n:0{width}d}{after}" for n in numbers}
    missing = [p.name for p in yamls.values() if not p.is_file()]
    if missing or not yamls:
        raise FileNotFoundError(f"folds={folds}: no data YAML for {len(missing) or 'any'} of the {len(yamls)} folds: "
                                f"missing {', '.join(missing) or before + '*' + after} in {folder} (ghost convert-vedai "
                                "writes one per fold list)")
    return yamls


def folds_root(data: str | Path, project: str | None = None, name: str | None = None, task: str = "detect") -> Path:
    """Where the fold runs go: ``<project>/<name>`` (default ``runs/<task>/<data YAML name>s``, e.g.
    runs/detect/vedai-folds); not incremented, so a repeated command finds its finished folds."""
    from ultralytics.cfg import get_save_dir

    if not name:
        _, before, _, after = fold_names(data)
        name = f"{before}s{after.rsplit('.', 1)[0]}"  # vedai-fold01.yaml -> vedai-folds
    return get_save_dir(SimpleNamespace(project=project, name=name, exist_ok=True, task=task, mode="train"))


def same_setting(a: Any, b: Any, key: str) -> bool:
    """Whether two values of a training key mean the same (YAML and CLI typing differ: 1 and 1.0, None and 'none';
    models compare by file name)."""
    if key == "model":
        return Path(str(a)).name == Path(str(b)).name

    def norm(v: Any) -> str | float | None:
        """The CLI reads 'none' as None; YAML writes None as null; a run records kd_weight=1 as 1.0."""
        if v is None or str(v).strip().lower() in {"", "none", "null"}:
            return None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        try:
            return float(v) if isinstance(v, str) and v.strip().lower() not in {"nan", "inf", "-inf"} else str(v)
        except ValueError:
            return str(v)

    return norm(a) == norm(b)


def resolved_by_run(value: Any) -> bool:
    """An empty or ``auto`` value that the run settles itself and records settled (``kd=auto``, ``bits``, ...)."""
    return value is None or str(value).strip().lower() in {"", "auto"}


def check_finished_fold(run: Path, asked: dict[str, Any], start: dict[str, Any] | None = None) -> None:
    """Refuse to reuse a finished fold trained with other settings than this command's, naming every differing key.

    Args:
        run: The finished fold's run dir (its ``args.yaml`` is what it was trained with).
        asked: The command's training keys (and ``model``).
        start: The starting model's own overrides (``GhostYOLO(model).overrides``: a checkpoint's imgsz, ...).
    """
    done = YAML.load(run / "args.yaml") if (run / "args.yaml").exists() else {}
    want = {**DEFAULT_CFG_DICT, **ghost_defaults(), **(start or {}), **asked}
    differ = [k for k in sorted(done) if k in want and k not in IGNORED_KEYS and not resolved_by_run(want[k])
              and not same_setting(done[k], want[k], k)]
    if differ:
        raise ValueError(f"{run} was trained with {', '.join(f'{k}={done[k]}' for k in differ)}, this command asks "
                         f"for {', '.join(f'{k}={want[k]}' for k in differ)}: pass name= for a new experiment (or "
                         f"delete {run} to train that fold again)")


def fold_row(fold: int, run: Path) -> dict[str, Any]:
    """One fold's figures from its run dir: summary.json (mAP, quantized size/BOPs/bits), else counted on best.pt."""
    s = json.loads((run / "summary.json").read_text())
    q = s.get("quantization")
    if q:
        size, gbops, bits = q["quantized"]["size_mb"], q["quantized"]["gbops"], q["avg_w_bits"]
    else:  # a float run: its summary has no quantization section, count the float model
        from .model import GhostYOLO

        totals = GhostYOLO(s["weights"]["best"]).quant_info(imgsz=s["imgsz"], save=False, verbose=False).attrs["totals"]
        size, gbops, bits = float(totals["size_mb"]), float(totals["gbops"]), float(totals["avg_w_bits"])
    return {"fold": fold, "mAP50": s["metrics"]["mAP50"], "mAP50-95": s["metrics"]["mAP50-95"], "size_MB": size,
            "GBOPs": gbops, "avg_bits": bits, "epochs": s["epochs"], "run": str(run), "summary": s}


def describe_protocol(rows: list[dict[str, Any]], yamls: dict[int, Path]) -> str:
    """The protocol line: folds (and whether it is VEDAI's 10-fold mean), classes, imgsz, epochs, bits, kd, model."""
    names = YAML.load(next(iter(yamls.values()))).get("names", {})
    names = list(names.values()) if isinstance(names, dict) else list(names)
    settings = [{"imgsz": s["imgsz"], "epochs": s["epochs"], "fp_epochs": s.get("fp_epochs", 0),
                 "bits": (s.get("quantization") or {}).get("bits") or 32,
                 "kd": (s.get("distillation") or {}).get("kd", "none"), "model": s["model"], "modality": s["modality"]}
                for s in (r["summary"] for r in rows)]

    def of(key: str) -> str:
        """The folds' value of a setting ('a/b' if they differ)."""
        return "/".join(dict.fromkeys(str(x[key]) for x in settings))

    numbers = [r["fold"] for r in rows]
    which = ("the 10-fold mean (VEDAI's protocol)" if numbers == list(range(1, 11)) else
             "fold 1 alone" if numbers == [1] else f"the mean of {len(numbers)} folds, not VEDAI's 10-fold mean")
    return (f"protocol: folds {', '.join(map(str, numbers))} = {which}; {len(names)} classes ({', '.join(names)}); "
            f"imgsz {of('imgsz')}, epochs {of('epochs')} (float first {of('fp_epochs')}), bits {of('bits')}, "
            f"kd {of('kd')}, model {of('model')}, modality {of('modality')}")


def summarise(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (n - 1; 0 for one fold) of every figure."""
    keys = ("mAP50", "mAP50-95", "size_MB", "GBOPs", "avg_bits")
    mean = {k: statistics.fmean(float(r[k]) for r in rows) for k in keys}
    std = {k: statistics.stdev(float(r[k]) for r in rows) if len(rows) > 1 else 0.0 for k in keys}
    return mean, std


def write_csv(path: Path, rows: list[dict[str, Any]], mean: dict, std: dict) -> None:
    """folds.csv: one row per fold, then the mean and std rows."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{k: f"{float(r[k]):.5g}" for k in mean}})
        for label, stats in (("mean", mean), ("std", std)):
            w.writerow({"fold": label, **{k: f"{v:.5g}" for k, v in stats.items()}})


def format_table(rows: list[dict[str, Any]], mean: dict, std: dict, protocol: str) -> str:
    """The printed table: per fold, then mean ± std, then the protocol line."""
    head = f"  {'fold':<8}{'mAP50':>8}{'mAP50-95':>10}{'size MB':>9}{'GBOPs':>8}{'avg bits':>10}  run"
    lines = [head]
    for r in rows:
        lines.append(f"  {r['fold']:<8}{r['mAP50']:>8.3f}{r['mAP50-95']:>10.3f}{r['size_MB']:>9.2f}{r['GBOPs']:>8.1f}"
                     f"{r['avg_bits']:>10.2f}  {Path(r['run']).name}")
    lines.append(f"  {'mean':<8}{mean['mAP50']:>8.3f}{mean['mAP50-95']:>10.3f}{mean['size_MB']:>9.2f}"
                 f"{mean['GBOPs']:>8.1f}{mean['avg_bits']:>10.2f}")
    lines.append(f"  {'± std':<8}{std['mAP50']:>8.3f}{std['mAP50-95']:>10.3f}{std['size_MB']:>9.2f}"
                 f"{std['GBOPs']:>8.1f}{std['avg_bits']:>10.2f}")
    return "\n".join([*lines, f"  {protocol}"])


def train_folds(model: Any = "ghost-n.yaml", data: str | Path | None = None, folds: Any = None,
                project: str | None = None, name: str | None = None, **train_args: Any) -> dict[str, Any]:
    """Train and validate ``model`` on every fold asked for; returns the per-fold rows, mean, std and file paths.

    Args:
        model: What each fold starts from: a model YAML, a ``.pt`` checkpoint, or a ``GhostYOLO`` (its YAML or weights).
        data: One fold's data YAML (``vedai-fold01.yaml``); the other folds' YAMLs sit next to it.
        folds: ``1-10``, ``[1, 2, 5]``, ``3`` or ``all`` (None: all).
        project, name: The folds root ``<project>/<name>`` (default ``runs/detect/vedai-folds``), one run dir per fold.
        **train_args: Every other training key, the same for every fold.
    """
    if not data:
        raise ValueError("folds= needs data= one fold's data YAML, e.g. data=datasets/vedai/vedai-fold01.yaml (from "
                         "ghost convert-vedai)")
    source = str(getattr(model, "ckpt_path", None) or getattr(model, "model_name", None) or model)
    train_args.pop("exist_ok", None)
    yamls = fold_yamls(data, folds)
    root = folds_root(data, project, name, task=getattr(model, "task", None) or "detect")
    root.mkdir(parents=True, exist_ok=True)
    asked = {"model": source, **train_args}
    start = None  # the starting model's overrides, read once a finished fold needs them
    LOGGER.info(f"{colorstr('ghost:')} {len(yamls)} folds ({', '.join(p.name for p in yamls.values())}) -> {root}")
    rows = []
    for i, (fold, yaml_file) in enumerate(yamls.items(), 1):
        run = root / f"fold{fold:02d}"
        if (run / "summary.json").exists():
            from .model import GhostYOLO

            start = GhostYOLO(source).overrides if start is None else start
            check_finished_fold(run, asked, start)
            LOGGER.info(f"{colorstr('ghost:')} fold {fold} ({i}/{len(yamls)}): finished in {run}, not trained again")
        else:
            if run.exists():
                LOGGER.info(f"{colorstr('ghost:')} fold {fold}: {run} holds an unfinished run, training it again")
                shutil.rmtree(run)
            LOGGER.info(f"{colorstr('ghost:')} fold {fold} ({i}/{len(yamls)}): training on {yaml_file.name} -> {run}")
            from .model import GhostYOLO

            GhostYOLO(source).train(data=str(yaml_file), project=str(root), name=run.name, exist_ok=True, **train_args)
            if not (run / "summary.json").exists():
                raise RuntimeError(f"fold {fold} wrote no {run / 'summary.json'}: folds need validation (val=True)")
        rows.append(fold_row(fold, run))
    mean, std = summarise(rows)
    protocol = describe_protocol(rows, yamls)
    write_csv(root / "folds.csv", rows, mean, std)
    LOGGER.info(f"\n{colorstr('bold', 'ghost folds')} ({root / 'folds.csv'})\n{format_table(rows, mean, std, protocol)}")
    return {"folds": [{k: r[k] for k in COLUMNS} for r in rows], "mean": mean, "std": std, "protocol": protocol,
            "csv": root / "folds.csv", "save_dir": root}
