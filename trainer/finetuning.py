"""Fine-tuning strategies: which part of the network trains, from when, at which learning rate.

``model.finetune`` picks one of ``STRATEGIES``:

- ``scratch``: random weights, every layer trains at the optimiser's learning rate.
- ``frozen``: a frozen feature extractor with a new head, the seeds' AlexNet/VGG16 transfer
  recipe; only the head is handed to the optimiser. Batch-norm statistics are frozen too.
- ``full``: every layer trains from the start; the backbone at ``backbone_lr_ratio`` times the
  head's learning rate (discriminative learning rates; ``1`` gives one rate for all).
- ``gradual``: fast.ai's ``fine_tune`` (Howard & Gugger, fastai ``Learner.fine_tune``): the head
  alone for ``unfreeze_at_epoch`` epochs, the backbone frozen but its batch-norm layers
  training; then the whole network, the backbone at ``backbone_lr_ratio`` of the head's rate.
  fast.ai spreads the rates over layer groups (``slice(lr/100, lr)``); here it is two groups.

Freezing and unfreezing is done by ``Finetuning``, a Lightning ``BaseFinetuning`` callback; the
optimiser's parameter groups come from ``param_groups``. The backbone's group is in the
optimiser from the first step, at its scaled rate, so the schedule (one-cycle included) covers it
and a resumed run finds the same groups; while frozen its parameters have no gradient and the
optimiser skips them.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

STRATEGIES = ("scratch", "frozen", "full", "gradual")
#: Strategies that start from pretrained weights; ``scratch`` refuses them (a mistake otherwise).
PRETRAINED_STRATEGIES = ("frozen", "full", "gradual")


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` if it is one of ``STRATEGIES``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown finetune strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return strategy


def head_of(net: nn.Module, head: str | None) -> nn.Module:
    """The head inside ``net``: the sub-module at dotted path ``head`` (``"fc"``,
    ``"classifier"``), or the net's last child when ``None`` (the head in every torchvision
    classifier and in ``BaselineCNN``)."""
    return net.get_submodule(head) if head else list(net.children())[-1]


def param_groups(net: nn.Module, head: str | None, strategy: str, backbone_lr_ratio: float = 0.1) -> list[dict[str, Any]]:
    """Optimiser parameter groups of ``net`` for ``strategy``.

    Each group carries ``name`` (``"all"``, ``"head"`` or ``"backbone"``) and ``lr_scale``, the
    factor the module applies to the optimiser's learning rate (and to a one-cycle ``max_lr``):
    ``scratch`` gives one group (scale 1); ``frozen`` the head only; ``full`` and ``gradual``
    the head (scale 1) and the backbone (scale ``backbone_lr_ratio``).

    Raises:
        ValueError: unknown strategy.
    """
    check_strategy(strategy)
    if strategy == "scratch":
        return [{"params": list(net.parameters()), "name": "all", "lr_scale": 1.0}]
    head_params = list(head_of(net, head).parameters())
    groups = [{"params": head_params, "name": "head", "lr_scale": 1.0}]
    if strategy == "frozen":
        return groups
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in net.parameters() if id(p) not in head_ids]
    return groups + [{"params": backbone, "name": "backbone", "lr_scale": float(backbone_lr_ratio)}]


class Finetuning(BaseFinetuning):
    """Freeze the backbone before training and, for ``gradual``, unfreeze it at an epoch.

    Args:
        strategy: ``frozen`` (frozen for the whole run, batch norm included) or ``gradual``
            (frozen until epoch ``unfreeze_at_epoch``, batch-norm layers training throughout,
            as fast.ai does). ``scratch`` and ``full`` freeze nothing and need no callback.
        head: dotted path of the head inside ``pl_module.net``; ``None``: the net's last child.
        unfreeze_at_epoch: ``gradual`` only: the first epoch (0-based) of whole-network training.

    Raises (``setup``):
        ValueError: ``gradual`` under a distributed strategy: DDP fixes its list of gradients
            to average when it wraps the model, so a backbone unfrozen later would train apart
            on every process.
    """

    def __init__(self, strategy: str = "frozen", head: str | None = None, unfreeze_at_epoch: int = 1) -> None:
        super().__init__()
        if check_strategy(strategy) not in ("frozen", "gradual"):
            raise ValueError(f"Finetuning freezes for 'frozen' or 'gradual', not {strategy!r}")
        self.strategy = strategy
        self.head = head
        self.unfreeze_at_epoch = unfreeze_at_epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # evaluating needs no freezing; the trained state (and its count) stays as is
        if self.strategy == "gradual" and trainer.world_size > 1:
            raise ValueError(
                "model.finetune=gradual does not work under DDP (the backbone would not be synced once "
                "unfrozen); use model.finetune=full (discriminative learning rates) or frozen"
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        # Frozen feature extractor: batch-norm statistics stay ImageNet's. fast.ai's fine_tune
        # keeps batch norm training while the rest of the backbone waits.
        self.freeze(pl_module.net, train_bn=self.strategy == "gradual")
        self.make_trainable(head_of(pl_module.net, self.head))

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # ">=": a run resumed after the unfreeze epoch is frozen again by setup and must thaw.
        if self.strategy != "gradual" or epoch < self.unfreeze_at_epoch:
            return
        if any(not p.requires_grad for p in pl_module.net.parameters()):
            self.make_trainable(pl_module.net)
            logger.info("epoch %d: backbone unfrozen; it trains at its own (lower) learning rate", epoch)
