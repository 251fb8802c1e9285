"""GhostTrainer: Ultralytics' DetectionTrainer with paired data, ghost models and both-modality plots.

Only hooks are overridden; the training loop, EMA, checkpoints, resume and DDP are Ultralytics' own. Later stages
(quantization, self-distillation) extend the model and the loss through the same hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr, emojis
from ultralytics.utils.torch_utils import unwrap_model

from ghost_yolo.cfg import ghost_defaults
from ghost_yolo.data.check import apply_modality, build_dataset, resolve_data
from ghost_yolo.nn.model import GhostDetectionModel
from ghost_yolo.utils.plotting import plot_paired_images

from .validator import GhostValidator


class GhostTrainer(DetectionTrainer):
    """Detection trainer for colour + infrared pairs (and plain single-modality data).

    Accepts ghost keys (``modality``, ``ir_jitter``, pairing names) next to Ultralytics' own, also when rebuilt by a DDP
    worker from ``DEFAULT_CFG_DICT`` and the pickled args.
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Merge ghost defaults under the given cfg so ghost keys pass Ultralytics' key check."""
        super().__init__({**ghost_defaults(), **cfg2dict(cfg)}, overrides, _callbacks)

    def get_dataset(self) -> dict[str, Any]:
        """Resolve shipped/generated data, run Ultralytics' checks, then settle modality and channels."""
        self.args.data = resolve_data(self.args.data)
        data = super().get_dataset()
        try:
            return apply_modality(data, self.args.modality, vars(self.args))
        except ValueError as e:
            raise RuntimeError(emojis(f"Dataset '{self.args.data}' error ❌ {e}")) from e

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """Paired dataset (or Ultralytics' own for plain data) with the model's stride."""
        gs = max(int(unwrap_model(self.model).stride.max()), 32)
        return build_dataset(self.args, img_path, batch, self.data, mode=mode, rect=mode == "val", stride=gs)

    def get_model(self, cfg: str | dict | None = None, weights: Any = None, verbose: bool = True) -> GhostDetectionModel:
        """Ghost detection model with input channels that follow the data's modality."""
        model = GhostDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        return model

    def get_validator(self) -> GhostValidator:
        """Paired validator sharing this trainer's args (ghost keys included)."""
        return GhostValidator(self.test_loader, save_dir=self.save_dir, args=vars(self.args).copy(), _callbacks=self.callbacks)

    def plot_training_samples(self, batch: dict[str, Any], ni: int) -> None:
        """Training mosaics with colour and IR side by side."""
        plot_paired_images(batch, batch["img"], self.data["modality"], paths=batch["im_file"],
                           fname=self.save_dir / f"train_batch{ni}.jpg", on_plot=self.on_plot)

    def final_eval(self) -> None:
        """Ultralytics' final validation of best.pt, then a short ghost summary of what was trained and what next."""
        super().final_eval()
        if RANK in {-1, 0} and self.best.exists() and self.metrics:
            LOGGER.info(self.summary())

    def summary(self) -> str:
        """Plain-text summary: model, modality, data, accuracy, weights, and the next commands."""
        model = unwrap_model(self.model)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        name = Path(model.yaml.get("yaml_file", "model")).stem
        m = self.metrics
        size = self.best.stat().st_size / 1e6
        data = Path(str(self.args.data)).name
        return "\n".join((
            f"\n{colorstr('bold', 'ghost summary')}",
            f"  model     {name}, {params:.2f} M params, modality {self.data['modality']} ({self.data['channels']} ch), imgsz {self.args.imgsz}",
            f"  data      {data}: {len(self.train_loader.dataset)} train / {len(self.test_loader.dataset)} val images",
            f"  accuracy  mAP50 {m.get('metrics/mAP50(B)', 0):.3f}   mAP50-95 {m.get('metrics/mAP50-95(B)', 0):.3f}   "
            f"(best.pt on val, {self.epoch + 1} epochs)",
            f"  weights   {self.best} ({size:.1f} MB)",
            f"  next      ghost predict model={self.best} source=FOLDER_OF_PAIRS",
            f"            ghost export model={self.best} format=onnx",
        ))
