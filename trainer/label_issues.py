"""Out-of-sample label issues: ``python -m trainer.label_issues data.root=DATASET_DIR [experiment=...] [folds=5]``.

A model ranks a mislabelled image it was trained on as harmless: it has memorised the wrong
label. So every image here is judged by a model that never saw it (k-fold cross-validation,
the setting of Northcutt et al. 2021, "Confident Learning: Estimating Uncertainty in Dataset
Labels"): the dataset is cut into k folds (stratified by label; near-duplicate groups stay in one
fold, as in ``trainer.split``), k models are trained as ``python -m trainer`` would train them
(same config groups, a held-out fold as validation), and each predicts its held-out fold. The
held-out fold also picks the checkpoint and stops training early: one number (accuracy) chosen
on it, a small optimism that leaves each image's own prediction out of sample.
On those out-of-sample predictions:

- ``cleanlab.filter.find_label_issues`` (confident learning) flags the mislabelled images;
- ``cleanlab.outlier.OutOfDistribution`` scores each held-out image by the distance of its
  features (what the classifier head reads) to its k nearest training images of the fold; the low
  outliers of that score (Tukey's fence) are flagged as belonging to no class.

Output, in the run folder: ``label_issues.csv`` (``FIELDS``), one row per image, flagged images
first, each group worst first (lowest label quality); its ``loss`` column makes it a scores file
for ``python -m crawler.review DATASET_DIR --scores label_issues.csv``. Each fold's checkpoints and
metrics are in ``fold_<i>/``. One line per fold on stdout.
"""

from __future__ import annotations

import copy
import csv
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from trainer.callbacks import echo
from trainer.data import TRAIN, VAL, ImageDataModule, ImageListDataset, ImageRecord, scan_dataset
from trainer.errors import UserError, report
from trainer.models import model_spec
from trainer.quiet import quiet_cli
from trainer.split import near_duplicate_groups, split_unit
from trainer.train import CONFIG_DIR, build_model, instantiate_dict, require_data_root

logger = logging.getLogger(__name__)

CSV_FILE = "label_issues.csv"
#: Columns of ``label_issues.csv``. ``label``: the given label; ``suggested``: the label the
#: out-of-sample model predicts (empty for ``no_class`` rows: delete rather than relabel);
#: ``label_quality``: cleanlab's self-confidence, the held-out probability of the given label
#: (0-1, low = suspect); ``issue``: ``mislabelled``, ``no_class`` or empty; ``ood_score``:
#: cleanlab's out-of-distribution score (0-1, low = unlike every training image); ``loss``:
#: ``-ln(label_quality)`` in nats, ``predicted``/``probability``: the top class and its
#: probability (the columns ``crawler.review`` reads).
FIELDS = ("path", "label", "suggested", "label_quality", "issue", "ood_score", "loss", "predicted", "probability")
MISLABELLED, NO_CLASS = "mislabelled", "no_class"


def assign_folds(records: Sequence[ImageRecord], folds: int, *, seed: int, max_distance: int) -> list[int]:
    """Fold index (0 to ``folds - 1``) of each record: stratified, near-duplicates together.

    Near-duplicate groups (``trainer.split.near_duplicate_groups`` on the perceptual hashes) are
    the units. Units are ordered by label (their representative's: the smallest content id), then
    by the seeded hash of that content id (``trainer.split.split_unit``), and dealt to the folds in
    turn, so every fold gets its share of every label.
    """
    roots = near_duplicate_groups([r.phash for r in records], max_distance)
    representative: dict[int, ImageRecord] = {}
    for root, record in zip(roots, records):
        if root not in representative or record.content_id < representative[root].content_id:
            representative[root] = record
    units = sorted(representative, key=lambda root: (representative[root].label, split_unit(representative[root].content_id, seed)))
    fold_of_unit = {root: i % folds for i, root in enumerate(units)}
    return [fold_of_unit[root] for root in roots]


class FoldDataModule(ImageDataModule):
    """``ImageDataModule`` over given records, split as given (one fold held out as ``val``)."""

    def __init__(self, records: list[ImageRecord], splits: list[str], **hparams: Any) -> None:
        super().__init__(**hparams)
        # Not hyperparameters: they would land in every checkpoint (and fail a weights_only load).
        for name in ("records", "splits"):
            self.hparams.pop(name, None)
        self._fold_records, self._fold_splits = records, splits

    @property
    def records(self) -> list[ImageRecord]:
        return self._fold_records

    def split_of_records(self) -> list[str]:
        return self._fold_splits


@dataclass
class FoldResult:
    """What one fold's model says about its held-out images (row ``j`` = ``indices[j]``).

    Attributes:
        indices: positions of the held-out images in the dataset's records.
        pred_probs: ``(n, num_classes)`` float64 softmax probabilities.
        ood_scores: ``(n,)`` cleanlab out-of-distribution scores in [0, 1] (low = atypical).
        val_acc: held-out accuracy of the best checkpoint.
    """

    indices: list[int]
    pred_probs: np.ndarray
    ood_scores: np.ndarray
    val_acc: float


@torch.no_grad()
def predict_with_features(net: torch.nn.Module, head: str, dataset: ImageListDataset, *, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(n, classes)`` and head-input features ``(n, d)`` of ``dataset``, in order."""
    features: list[torch.Tensor] = []
    hook = net.get_submodule(head).register_forward_pre_hook(lambda _m, args: features.append(args[0].flatten(1).float().cpu()))
    probs = []
    try:
        net.eval().to(device)
        for images, _ in DataLoader(dataset, batch_size=batch_size):
            probs.append(torch.softmax(net(images.to(device)).float(), dim=1).cpu())
    finally:
        hook.remove()
    return torch.cat(probs).double().numpy(), torch.cat(features).numpy()


def run_fold(cfg: DictConfig, records: list[ImageRecord], folds: list[int], fold: int) -> FoldResult:
    """Train on every fold but ``fold`` as ``cfg`` says, then predict ``fold`` (out of sample)."""
    from cleanlab.outlier import OutOfDistribution

    fold_cfg = copy.deepcopy(cfg)
    # Each fold's checkpoints, metrics and logs in <run dir>/fold_<i>/ (what ${paths.output_dir} feeds).
    fold_cfg.paths.output_dir = str(Path(cfg.paths.output_dir) / f"fold_{fold + 1}")
    data_args = OmegaConf.to_container(fold_cfg.data, resolve=True)
    data_args.pop("_target_", None)
    data_args["test_fraction"] = 0.0  # the held-out fold is the only evaluation split
    splits = [VAL if f == fold else TRAIN for f in folds]
    datamodule = FoldDataModule(records, splits, **data_args)
    model = build_model(fold_cfg, datamodule)
    trainer: pl.Trainer = hydra.utils.instantiate(
        fold_cfg.trainer, callbacks=instantiate_dict(fold_cfg.get("callbacks")), logger=instantiate_dict(fold_cfg.get("logger")) or False
    )
    trainer.fit(model, datamodule=datamodule)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])

    held_out = datamodule.datasets[VAL]
    # The training images seen as the held-out ones are: no augmentation.
    train_eval = ImageListDataset(
        datamodule.datasets[TRAIN].paths, datamodule.datasets[TRAIN].targets, transform=held_out.transform, draft_size=held_out.draft_size
    )
    head = cfg.model.get("head") or model_spec(cfg.model.net.name).head
    device = trainer.strategy.root_device
    batch_size = cfg.data.batch_size
    pred_probs, features = predict_with_features(model.net, head, held_out, batch_size=batch_size, device=device)
    _, train_features = predict_with_features(model.net, head, train_eval, batch_size=batch_size, device=device)
    ood = OutOfDistribution(params={"k": max(1, min(cfg.ood_neighbors, len(train_eval) - 1))})
    ood.fit(features=train_features, verbose=False)
    ood_scores = np.asarray(ood.score(features=features), dtype=np.float64)
    val_acc = float((pred_probs.argmax(1) == np.asarray(held_out.targets)).mean())
    return FoldResult([i for i, f in enumerate(folds) if f == fold], pred_probs, ood_scores, val_acc)


def low_outliers(scores: np.ndarray, iqr_scale: float) -> np.ndarray:
    """Boolean mask of ``scores`` below Tukey's lower fence ``Q1 - iqr_scale * IQR`` (Tukey 1977)."""
    q1, q3 = np.percentile(scores, [25, 75])
    return scores < q1 - iqr_scale * (q3 - q1)


def find_issues(labels: np.ndarray, pred_probs: np.ndarray, ood_scores: np.ndarray, *, filter_by: str, iqr_scale: float) -> tuple[np.ndarray, list[str]]:
    """Label quality ``(n,)`` (cleanlab self-confidence) and the issue of each image.

    Args:
        labels: ``(n,)`` given class indices.
        pred_probs: ``(n, classes)`` out-of-sample probabilities, rows summing to 1.
        ood_scores: ``(n,)`` out-of-distribution scores (low = atypical).
        filter_by: ``cleanlab.filter.find_label_issues``'s method.
        iqr_scale: Tukey fence width for ``no_class``.

    Returns:
        ``(label_quality, issues)``: issues are ``no_class`` (an OOD outlier, whatever its
        label), ``mislabelled`` (flagged by confident learning) or ``""``.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    mislabelled = find_label_issues(labels, pred_probs, filter_by=filter_by)
    no_class = low_outliers(ood_scores, iqr_scale)
    issues = [NO_CLASS if o else MISLABELLED if m else "" for o, m in zip(no_class, mislabelled)]
    return quality, issues


def write_issues(path: Path, root: Path, records: Sequence[ImageRecord], classes: list[str], labels: np.ndarray, pred_probs: np.ndarray, ood_scores: np.ndarray, quality: np.ndarray, issues: list[str]) -> int:
    """Write ``label_issues.csv`` (``FIELDS``), flagged rows first, each part lowest quality first; return the flagged count."""
    order = sorted(range(len(records)), key=lambda i: (issues[i] == "", quality[i], str(records[i].path)))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for i in order:
            predicted = int(pred_probs[i].argmax())
            path_text = records[i].path.relative_to(root).as_posix() if records[i].path.is_relative_to(root) else str(records[i].path)
            writer.writerow([
                path_text,
                records[i].label,
                "" if issues[i] == NO_CLASS else classes[predicted],
                f"{quality[i]:.6f}",
                issues[i],
                f"{ood_scores[i]:.6f}",
                f"{-np.log(max(float(pred_probs[i, labels[i]]), 1e-12)):.6f}",
                classes[predicted],
                f"{pred_probs[i, predicted]:.6f}",
            ])
    tmp.replace(path)  # never a half-written CSV
    return sum(1 for issue in issues if issue)


def label_issues(cfg: DictConfig) -> Path:
    """Run the k folds and write ``label_issues.csv`` in ``cfg.paths.output_dir``; return its path.

    Raises:
        UserError: no ``data.root``, no such folder, no images, fewer than 2 classes or folds,
            fewer images of some class than folds, or a multi-process (ddp) trainer preset.
    """
    command = "python -m trainer.label_issues"
    try:
        require_data_root(cfg, command)
        records = scan_dataset(cfg.data.root, cfg.data.get("catalog_url"))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if "ddp" in str(cfg.trainer.get("strategy") or ""):
        raise UserError(f"{command} trains each fold on one device (use trainer=cpu or trainer=gpu, not a ddp preset)")
    k = int(cfg.folds)
    if k < 2:
        raise UserError(f"folds={k}: cross-validation needs at least 2 folds (e.g. folds=5)")
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.label] += 1
    classes = sorted(counts)
    if len(classes) < 2:
        raise UserError(f"{cfg.data.root} has {len(classes)} class(es): label issues need at least 2 label folders")
    scarce = [f"{name} ({n})" for name, n in counts.items() if n < k]
    if scarce:
        raise UserError(f"fewer images than folds={k} in class(es) {', '.join(scarce)} (lower folds or add images)")

    folds = assign_folds(records, k, seed=cfg.seed, max_distance=cfg.data.near_duplicate_distance)
    if len(set(folds)) < k:
        raise UserError(f"only {len(set(folds))} near-duplicate groups for folds={k} (lower folds)")
    label_index = {name: i for i, name in enumerate(classes)}
    labels = np.array([label_index[r.label] for r in records])
    pred_probs = np.zeros((len(records), len(classes)))
    ood_scores = np.zeros(len(records))
    for fold in range(k):
        pl.seed_everything(cfg.seed + fold, workers=True)
        start = time.perf_counter()
        result = run_fold(cfg, records, folds, fold)
        pred_probs[result.indices], ood_scores[result.indices] = result.pred_probs, result.ood_scores
        echo(
            f"{cfg.model.net.name} fold {fold + 1}/{k}: trained on {len(records) - len(result.indices)}, "
            f"held out {len(result.indices)}, held-out acc {result.val_acc:.4f}, {time.perf_counter() - start:.1f} s"
        )

    quality, issues = find_issues(labels, pred_probs, ood_scores, filter_by=cfg.filter_by, iqr_scale=cfg.ood_iqr_scale)
    out = Path(cfg.paths.output_dir) / CSV_FILE
    root = Path(str(cfg.data.root)).expanduser().resolve()
    flagged = write_issues(out, root, records, classes, labels, pred_probs, ood_scores, quality, issues)
    accuracy = float((pred_probs.argmax(1) == labels).mean())
    echo(
        f"{flagged} of {len(records)} images flagged ({issues.count(MISLABELLED)} {MISLABELLED}, "
        f"{issues.count(NO_CLASS)} {NO_CLASS}); out-of-sample accuracy {accuracy:.4f}; {out}"
    )
    catalog_url = cfg.data.get("catalog_url")
    echo(f"review them: python -m crawler.review {root} --scores {out}" + (f" --catalog-url {catalog_url}" if catalog_url else ""))
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="label_issues")
def main(cfg: DictConfig) -> None:
    """Hydra entry: a user's mistake exits with status 2 and one ``error:`` line."""
    quiet_cli()
    try:
        label_issues(cfg)
    except UserError as exc:
        sys.exit(report(exc))


if __name__ == "__main__":
    main()
