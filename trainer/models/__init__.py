"""Model registry: one keyword-only builder for every backbone.

``build_model(name, *, num_classes, weights=None)`` returns an ``nn.Module`` mapping
``(N, 3, H, W)`` float images to ``(N, num_classes)`` logits. Apart from ``baseline_cnn`` (written
by hand, the seeds' baseline), the networks come from torchvision's builders and weights API
(``torchvision.models.get_model``); only their classification head is replaced. Variants are rows
of ``MODELS``, not copies of code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from trainer.errors import UserError
from trainer.models.baseline_cnn import BaselineCNN

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one backbone and where its classification head lives.

    Attributes:
        builder: ``builder(num_classes=..., weights=...)`` returning the network; for torchvision
            models this is ``torchvision.models.get_model`` bound to the name.
        head: dotted attribute path of the module that maps features to logits; its last
            ``nn.Linear`` is replaced for the dataset's classes, and the module as a whole is what
            stays trainable when the backbone is frozen.
        min_image_size: smallest input side (pixels) the architecture accepts.
    """

    builder: Callable[..., nn.Module]
    head: str
    min_image_size: int = 32


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, weights: str | None) -> nn.Module:
        return torchvision.models.get_model(name, weights=weights, num_classes=num_classes)

    return build


def _baseline(*, num_classes: int, weights: str | None) -> nn.Module:
    if weights is not None:
        raise UserError(
            f"baseline_cnn has no published weights, so model.net.weights={weights} means nothing "
            "(use model.net.weights=null, or the path of a state-dict file saved from a baseline_cnn)"
        )
    return BaselineCNN(num_classes=num_classes)


MODELS: dict[str, ModelSpec] = {
    "baseline_cnn": ModelSpec(_baseline, head="classifier", min_image_size=8),
    # AlexNet's stride-4 stem and three max-pools need at least ~63 px of input.
    "alexnet": ModelSpec(_torchvision("alexnet"), head="classifier", min_image_size=64),
    "vgg16": ModelSpec(_torchvision("vgg16"), head="classifier"),
    "resnet18": ModelSpec(_torchvision("resnet18"), head="fc"),
    "resnet34": ModelSpec(_torchvision("resnet34"), head="fc"),
    "resnet50": ModelSpec(_torchvision("resnet50"), head="fc"),
}

#: Number of classes of the ImageNet weights torchvision publishes (and of their heads).
IMAGENET_CLASSES = 1000


def model_spec(name: str) -> ModelSpec:
    """Return the registry row for ``name``.

    Raises:
        UserError: the name is unknown; the message lists the valid names.
    """
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(
            f"unknown model {name!r} (use one of: {', '.join(sorted(MODELS))}; e.g. experiment=resnet18)"
        ) from None


def build_model(name: str, *, num_classes: int, weights: str | None = None) -> nn.Module:
    """Build backbone ``name`` with a head of ``num_classes`` logits.

    Args:
        name: a key of ``MODELS`` (``baseline_cnn``, ``alexnet``, ``vgg16``, ``resnet18``,
            ``resnet34``, ``resnet50``).
        num_classes: number of classes, taken from the data (never from config).
        weights: ``None`` to train from scratch; a torchvision weights name
            (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``),
            downloaded by torchvision as usual; or the path of a local state-dict file
            (``torch.save(model.state_dict(), path)``) for offline machines, holding either the
            original 1000-class ImageNet head or a head of ``num_classes``.

    Returns:
        ``nn.Module`` mapping ``(N, 3, H, W)`` float to ``(N, num_classes)`` logits.

    Raises:
        UserError: unknown name (the message lists the valid ones); unknown weights name (the
            message lists torchvision's); published weights that cannot be downloaded (the
            message names the file, the local-file option and torchvision's cache folder); a
            weights path (has a ``/`` or a ``.pt``/``.pth``/``.bin`` suffix) with no file
            there, or a file that is not a state dict of this architecture.
    """
    spec = model_spec(name)
    if weights is None:
        return spec.builder(num_classes=num_classes, weights=None)

    weights_file = _as_weights_file(weights)
    if weights_file is None:
        # Published weights carry a 1000-class head: build as published, then swap the head.
        if name not in torchvision.models.list_models():
            return spec.builder(num_classes=num_classes, weights=weights)  # baseline_cnn: refuses
        published = _published_weights(name, weights)
        try:
            net = spec.builder(num_classes=IMAGENET_CLASSES, weights=weights)
        except OSError as exc:  # urllib's URLError, a refused proxy, a full disk: the download failed
            raise _download_error(name, weights, published, exc) from exc
        replace_head(net, spec.head, num_classes)
        return net

    source = f"torchvision's {name}" if name in torchvision.models.list_models() else f"a {name}"
    try:
        state_dict = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a file torch.save wrote, or one holding more than tensors
        raise UserError(
            f"weights file {weights_file} is not a state-dict file that loads safely: {_first_line(exc)} "
            f"(save one with torch.save(model.state_dict(), path) from {source}, or use model.net.weights=null)"
        ) from exc
    try:
        net = spec.builder(num_classes=num_classes, weights=None)
        head_out = _head_out_features(state_dict, net, spec.head)
        if head_out != num_classes:
            net = spec.builder(num_classes=head_out, weights=None)
        net.load_state_dict(state_dict)
    except (ValueError, RuntimeError) as exc:  # keys and shapes of another network
        raise UserError(
            f"weights file {weights_file} does not fit {name}: {_first_line(exc)} "
            f"(pass a state dict saved from {source}, torch.save(model.state_dict(), path), "
            "or model.net.weights=null)"
        ) from exc
    if head_out == num_classes:
        return net
    replace_head(net, spec.head, num_classes)
    logger.info("loaded %s weights from %s; head replaced (%d -> %d classes)", name, weights_file, head_out, num_classes)
    return net


def head_module(net: nn.Module, head: str) -> nn.Module:
    """Return the sub-module at dotted path ``head`` (``"fc"``, ``"classifier"``)."""
    return net.get_submodule(head)


def replace_head(net: nn.Module, head: str, num_classes: int) -> None:
    """Replace the last ``nn.Linear`` under ``head`` by a fresh one with ``num_classes`` outputs."""
    module = head_module(net, head)
    if isinstance(module, nn.Linear):
        parent_name, _, attr = head.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
    else:
        linear_names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linear_names:
            raise ValueError(f"no nn.Linear under head {head!r}")
        parent_name, _, attr = linear_names[-1].rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _as_weights_file(weights: str) -> Path | None:
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if "/" in weights or path.suffix in {".pt", ".pth", ".bin"}:
        raise UserError(
            f"weights file not found: {path.resolve()} (check model.net.weights=; a relative path starts from "
            "the current directory; or use a torchvision weights name such as DEFAULT)"
        )
    return None


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:limit] if text else "") or type(exc).__name__


def _published_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """torchvision's weights entry for ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
    ``"ResNet18_Weights.IMAGENET1K_V1"``) of model ``name``."""
    enum = torchvision.models.get_model_weights(name)
    member = weights.removeprefix(f"{enum.__name__}.")
    if member not in enum.__members__:
        raise UserError(
            f"unknown weights model.net.weights={weights} for {name} "
            f"(use one of: {', '.join(enum.__members__)}, null, or the path of a state-dict file)"
        )
    return enum[member]


def _download_error(name: str, weights: str, published: torchvision.models.WeightsEnum, exc: OSError) -> UserError:
    file_name = Path(urlparse(published.url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()[0][:160]
    return UserError(
        f"cannot download {name} weights {weights} from {published.url}: {reason} "
        f"(offline? fetch {file_name} on a machine with network, then either pass "
        f"model.net.weights=/path/to/{file_name} (a local state-dict file), or put it at {cached}, "
        "torchvision's cache folder (torch.hub.get_dir(), moved by TORCH_HOME), where it is picked up)"
    )


def _head_out_features(state_dict: dict, net: nn.Module, head: str) -> int:
    """Classes of the state dict's head: rows of the weight that the net's last head Linear uses."""
    module = head_module(net, head)
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    key = ".".join(filter(None, [head, linears[-1], "weight"]))
    if not isinstance(state_dict, dict) or key not in state_dict:
        raise ValueError(f"no {key!r} in it, so it is not a state dict of this architecture")
    return int(state_dict[key].shape[0])


__all__ = ["MODELS", "ModelSpec", "BaselineCNN", "build_model", "model_spec", "head_module", "replace_head"]
