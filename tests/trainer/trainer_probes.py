"""Callbacks the tests add through config (``+callbacks.<name>._target_=trainer_probes.<Class>``)
to stop a run or record what the trainer did."""

from __future__ import annotations

import copy
import json
import os
from typing import ClassVar

import pytorch_lightning as pl


class StopAfterEpochs(pl.Callback):
    """Stop training after ``epochs`` epochs, as if the run had been killed there (the last
    checkpoint is written first, by ModelCheckpoint at the end of the epoch)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class TrainingProbe(pl.Callback):
    """Record, per training epoch: the epoch, the optimiser's state and groups, and parameters."""

    records: ClassVar[list[dict]] = []

    def __init__(self) -> None:
        TrainingProbe.records = []

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        TrainingProbe.records.append(
            {
                "event": "train_start",
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "optimizer": copy_state(optimizer.state_dict()),
            }
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        TrainingProbe.records.append(
            {
                "event": "epoch_end",
                "epoch": trainer.current_epoch,
                "lrs": [group["lr"] for group in optimizer.param_groups],
                "group_names": [group.get("name") for group in optimizer.param_groups],
                "frozen": [n for n, p in pl_module.net.named_parameters() if not p.requires_grad],
                "params": {n: p.detach().clone() for n, p in pl_module.net.named_parameters()},
            }
        )


def copy_state(state_dict: dict) -> dict:
    """A deep copy of an optimizer state dict (tensors cloned)."""
    return copy.deepcopy(state_dict)


class ShardProbe(pl.Callback):
    """Under DDP: write what this rank saw to ``<dir>/rank<r>.json``: the dataset indices of its
    training and validation shards (from the samplers Lightning gave the loaders), the number of
    batches, and the validation metrics it holds at the end of fitting."""

    def __init__(self, dir: str) -> None:
        self.dir = dir
        self.seen: dict = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            loader = trainer.train_dataloader
            self.seen["train_indices"] = [int(i) for i in loader.sampler]
            self.seen["train_batches"] = len(loader)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list) else loaders
        self.seen["val_indices"] = [int(i) for i in loader.sampler]

    def on_fit_end(self, trainer, pl_module) -> None:
        self.seen["rank"] = trainer.global_rank
        self.seen["world_size"] = trainer.world_size
        self.seen["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, f"rank{trainer.global_rank}.json"), "w") as handle:
            json.dump(self.seen, handle)
