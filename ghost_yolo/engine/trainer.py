"""GhostTrainer: Ultralytics' DetectionTrainer with paired data, ghost models and both-modality plots.

Only hooks are overridden; the training loop, EMA, checkpoints, resume and DDP are Ultralytics' own. Later stages
(quantization, self-distillation) extend the model and the loss through the same hooks.
"""

from __future__ import annotations

from typing import Any

from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, RANK, emojis
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
