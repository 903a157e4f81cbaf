"""The one LightningModule, shared by every backbone."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from trainer.finetuning import Finetuning, check_strategy, param_groups


class ImageClassifier(pl.LightningModule):
    """Image classification with any backbone: cross-entropy, accuracy and macro F1 per stage.

    Logged keys: ``train/loss``, ``train/acc``; ``val/loss``, ``val/acc``, ``val/f1``;
    ``test/loss``, ``test/acc``, ``test/f1``. Accuracy is micro (share of images right),
    F1 is the unweighted mean over classes (macro).

    Args:
        net: backbone with head, ``(N, 3, H, W)`` float -> ``(N, num_classes)`` logits. Not saved
            in the hyperparameters (it is in the state dict).
        optimizer: partial optimizer, called here with the trainable parameters
            (``_partial_: true`` in config).
        scheduler: partial learning-rate scheduler or ``None``. A scheduler taking
            ``total_steps`` (``OneCycleLR``) gets ``trainer.estimated_stepping_batches`` and steps
            every batch; any other steps every epoch.
        num_classes: number of classes (from the datamodule, in code).
        class_names: class names in target order, kept in the checkpoint for later inference.
        label_smoothing: cross-entropy label smoothing (0-1).
        class_weights: per-class weights of the cross-entropy (``data.class_weighting=loss``,
            computed from the training split in code), or ``None`` for plain cross-entropy.
        finetune: ``scratch``, ``frozen``, ``full`` or ``gradual`` (``trainer.finetuning``);
            the freezing is done by the ``Finetuning`` callback this module adds
            (``configure_callbacks``), the parameter groups here.
        head: dotted path of the head module inside ``net`` (``"fc"``, ``"classifier"``), what
            trains while the backbone is frozen; ``None``: the net's last child.
        backbone_lr_ratio: ``full``/``gradual``: the backbone's learning rate as a share of the
            head's (discriminative learning rates; fast.ai uses 1/10 to 1/100).
        unfreeze_at_epoch: ``gradual``: epochs of head-only training before the backbone joins.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        finetune: str = "scratch",
        head: str | None = None,
        backbone_lr_ratio: float = 0.1,
        unfreeze_at_epoch: int = 1,
    ) -> None:
        super().__init__()
        check_strategy(finetune)
        # Plain floats, kept in the hyperparameters so that load_from_checkpoint rebuilds the
        # same criterion (its weight buffer is in the state dict).
        class_weights = [float(w) for w in class_weights] if class_weights is not None else None
        # Plain list: Hydra hands over a ListConfig, which a weights_only checkpoint load refuses.
        class_names = [str(name) for name in class_names] if class_names is not None else None
        # The net lives in the state dict; the optimizer/scheduler partials are left out so that a
        # checkpoint holds plain values only and loads with torch.load(weights_only=True). The
        # run's .hydra/config.yaml records them. logger=False: train.py logs the whole config.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = net
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` float -> ``(N, num_classes)`` logits."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        self.train_metrics.update(logits, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, metrics: MetricCollection) -> None:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        metrics.update(logits, targets)
        # sync_dist: under DDP each rank sees its own shard; the logged loss is their mean.
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(targets))
        self.log_dict(metrics, prog_bar=True, batch_size=len(targets))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def configure_callbacks(self) -> list[pl.Callback]:
        hp = self.hparams
        if hp.finetune in ("frozen", "gradual"):
            return [Finetuning(hp.finetune, head=hp.head, unfreeze_at_epoch=hp.unfreeze_at_epoch)]
        return []

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self.net, hp.head, hp.finetune, hp.backbone_lr_ratio)
        optimizer = self.optimizer_factory(params=groups)
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler_fn = self.scheduler_factory
        given = getattr(scheduler_fn, "keywords", {})
        target = getattr(scheduler_fn, "func", scheduler_fn)
        if "total_steps" in inspect.signature(target).parameters and given.get("total_steps") is None:
            extra = {}
            if isinstance(given.get("max_lr"), (int, float)):
                # One-cycle's peak, per group: the backbone's is scaled like its learning rate.
                extra["max_lr"] = [given["max_lr"] * group["lr_scale"] for group in optimizer.param_groups]
            scheduler = scheduler_fn(
                optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches), **extra
            )
            interval = "step"
        else:
            scheduler = scheduler_fn(optimizer=optimizer)
            interval = "epoch"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
