"""Training entry point: ``python -m trainer [overrides]`` (a Hydra app over ``conf/train.yaml``).

It only wires: instantiate the datamodule, model, callbacks, loggers and trainer from config;
fit; evaluate the best checkpoint (validation always, test when a test split exists); write
``summary.json`` (``trainer.summary.RunSummary``) and the diagnostics (``diagnostics/``, see
``trainer.diagnostics``) in the run folder; print a short closing summary with the next commands;
return the monitored metric so sweepers can optimise it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer.callbacks import Throughput, echo
from trainer.diagnostics import write_diagnostics
from trainer.errors import UserError, exit_on_user_error
from trainer.finetuning import PRETRAINED_STRATEGIES
from trainer.quiet import quiet_cli
from trainer.summary import (
    RunSummary,
    clean_metrics,
    closing_summary,
    count_parameters,
    dataset_fingerprint,
    peak_rss_mb,
    reset_peak_rss,
)
from trainer.tuning import find_learning_rate

logger = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a group such as ``callbacks`` or ``logger``."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(entry) for entry in cfg.values() if entry and "_target_" in entry]


#: Where ModelCheckpoint(save_last=True) keeps the newest checkpoint, inside a run folder.
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``fit`` starts from: ``ckpt_path``, or with ``resume`` a run's ``last.ckpt``.

    ``resume=true`` takes this run's own folder (rerun the killed command with
    ``hydra.run.dir=<its run folder> resume=true`` and it carries on there); ``resume=<run folder>``
    takes that folder's checkpoint and writes a new run.

    Raises:
        UserError: ``resume`` is set and the run folder has no ``checkpoints/last.ckpt``.
    """
    resume = cfg.get("resume")
    if not resume or cfg.get("ckpt_path"):
        return cfg.get("ckpt_path")
    run_dir = Path(cfg.paths.output_dir if resume is True else str(resume))
    path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        raise UserError(
            f"resume: {run_dir} has no {LAST_CHECKPOINT} (resume a run folder trained with the default "
            "callbacks, or start a new run without resume=true)"
        )
    return str(path)


def _check_finetune(cfg: DictConfig) -> None:
    weights, strategy = cfg.model.net.get("weights"), cfg.model.get("finetune", "scratch")
    if weights is not None and strategy == "scratch":
        raise UserError(
            f"model.net.weights={weights} with model.finetune=scratch would train pretrained weights as if "
            "from scratch (choose model.finetune=frozen|full|gradual, or model.net.weights=null)"
        )
    if weights is None and strategy in PRETRAINED_STRATEGIES:
        logger.warning("model.finetune=%s without model.net.weights: the backbone is random", strategy)


def require_data_root(cfg: DictConfig, command: str = "python -m trainer") -> None:
    """Raise :class:`UserError` when ``data.root`` is not set (``???`` in config)."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise UserError(
            f"data.root is not set (pass the dataset folder, e.g. `{command} data.root=DATASET_DIR`: "
            "label subfolders of images, optionally with catalog.sqlite; see docs/dataset.md)"
        )


def build_model(cfg: DictConfig, datamodule: Any) -> pl.LightningModule:
    """Instantiate ``cfg.model`` for ``datamodule``'s classes (count, names, loss weights)."""
    # Learnt from the data (class count, class weights), so passed here and never in YAML.
    return hydra.utils.instantiate(
        cfg.model,
        net={"num_classes": datamodule.num_classes},
        num_classes=datamodule.num_classes,
        class_names=datamodule.classes,
        class_weights=datamodule.loss_weights,
    )


def train(cfg: DictConfig) -> RunSummary:
    """Train and evaluate one model as ``cfg`` says; return the run summary (also written to disk).

    Raises:
        UserError: ``data.root`` is not set or unusable, pretrained weights with
            ``model.finetune=scratch``, or ``resume`` without a checkpoint.
    """
    require_data_root(cfg)
    _check_finetune(cfg)
    ckpt_path = resume_checkpoint(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    num_classes, classes = datamodule.num_classes, datamodule.classes

    model = build_model(cfg, datamodule)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    throughput = Throughput()
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, throughput], logger=loggers or False)
    if cfg.get("tune_lr") and not ckpt_path:
        lr = find_learning_rate(trainer, model, datamodule, cfg.paths.output_dir, **cfg.get("lr_find", {}))
        if lr is not None:
            # Rebuilt from config: the optimiser and the one-cycle peak (${model.optimizer.lr}) take it.
            cfg.model.optimizer.lr = lr
            model = build_model(cfg, datamodule)
    for run_logger in loggers:
        run_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best or None  # no checkpoint (fast_dev_run): evaluate the weights in memory
    metrics = clean_metrics(trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0])
    if cfg.get("test") and datamodule.has_test:
        metrics |= clean_metrics(trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0])

    parameters, trainable = count_parameters(model.net)
    summary = RunSummary.from_metrics(
        metrics,
        model=cfg.model.net.name,
        weights=cfg.model.net.get("weights"),
        finetune=cfg.model.get("finetune"),
        learning_rate=cfg.model.optimizer.get("lr"),
        parameters=parameters,
        trainable_parameters=trainable,
        epochs=trainer.current_epoch,
        max_epochs=trainer.max_epochs,
        best_epoch=checkpoint_epoch(best) if best else None,
        seconds_per_epoch=throughput.seconds_per_epoch,
        train_images_per_sec=throughput.images_per_sec,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        peak_rss_mb=peak_rss_mb(),
        num_classes=num_classes,
        classes=classes,
        split_sizes=datamodule.split_sizes(),
        image_size=cfg.data.image_size,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        data_root=str(Path(str(cfg.data.root)).expanduser().resolve()),
        dataset_fingerprint=dataset_fingerprint(datamodule.records),
        dataset_images=len(datamodule.records),
        best_checkpoint=str(Path(best).resolve()) if best else None,
        output_dir=str(Path(cfg.paths.output_dir).resolve()),
    )
    if trainer.is_global_zero:
        path = summary.write(cfg.paths.output_dir)
        logger.info("run summary written to %s", path)
        if best and cfg.get("diagnostics", True):
            # `model` holds the best checkpoint's weights: validate/test above restored them.
            try:
                write_diagnostics(cfg.paths.output_dir, model.net, datamodule, classes=classes)
            except Exception:  # the run itself succeeded; rebuild with `python -m trainer.diagnostics`
                logger.exception("diagnostics of %s failed", cfg.paths.output_dir)
        val = datamodule.datasets.get("val")
        for line in closing_summary(summary, next_steps=not _in_multirun(), example=val.paths[0] if val and len(val) else None):
            echo(line)
    return summary


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch a Lightning checkpoint was saved after, counted from 1.

    Memory-mapped, so only the small header is read, not the weights.
    """
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


#: conf/ at the repository root. An absolute path: under `python -m trainer` Hydra would read a
#: relative one as a Python package (`pkg://conf`), which conf/ is not.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns ``cfg.optimized_metric`` of the best checkpoint for sweepers."""
    quiet_cli()
    summary = train(cfg)
    return summary.metrics.get(cfg.get("optimized_metric", "val/acc"))
