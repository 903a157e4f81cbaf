"""Label images with an exported model: ``python -m trainer.predict EXPORT_DIR INPUT... [--top-k K] [--out F.csv]``.

Inputs are image files, folders of images, or a labelled dataset folder (the contract in
docs/dataset.md: ``catalog.sqlite``, or label subfolders and no images of its own; with
``--catalog-url postgresql://...`` a dataset whose catalog a crawl wrote to PostgreSQL).

- Images and plain folders: the predicted label, its probability and the top-k labels per image.
- A labelled dataset: every image is also scored against its own label: ``loss`` is the
  cross-entropy ``-ln p(label)`` in nats (empty when the label is not one of the model's
  classes). ``python -m trainer.predict EXPORT DATASET_DIR --out scores.csv`` writes the scores
  file that ``python -m crawler.review`` ranks images by; its paths are relative to the dataset
  folder (POSIX separators), as in the catalog.

Output: with ``--out``, or when a folder is given, CSV (``path, label, predicted, probability,
loss, top_k, error``; ``top_k`` is a JSON list of ``[label, probability]``) to the file or
standard output; otherwise one line per image. A file that cannot be read or decoded gets its
``error`` (and a warning) and the batch goes on; the exit status is then 1. A missing export
folder or input path is a usage error: one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import v2

from trainer.errors import UserError, status_on_user_error

logger = logging.getLogger(__name__)

BACKENDS = ("pt2", "onnx", "weights")
CSV_FIELDS = ("path", "label", "predicted", "probability", "loss", "top_k", "error")
#: File suffixes taken from plain folders (the formats the crawler stores, plus jpeg/tif).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


class ImageError(ValueError):
    """An input that is not a readable image; the message says why (for a per-file error)."""


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (a decompression bomb, or just too big)."""


def load_image(source: Any, *, max_pixels: int | None = None, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file (path or binary file object) as RGB PIL.

    Args:
        source: a path or a binary file object.
        max_pixels: refuse images with more pixels than this (width x height), checked from the
            header before decoding; ``None``: Pillow's own decompression-bomb limit.
        draft_size: decode JPEGs at reduced scale while still at least this many pixels per
            side (as the datamodule does in training).

    Raises:
        ImageTooLarge: more pixels than ``max_pixels`` (or Pillow's bomb limit).
        ImageError: unreadable, not an image, or truncated.
    """
    try:
        with Image.open(source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image too large: {width} x {height} pixels (limit {max_pixels})")
            if draft_size:
                image.draft("RGB", (draft_size, draft_size))
            return image.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {exc}") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a folder") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data, permissions
        raise ImageError(f"cannot decode: {exc}") from None


class Predictor:
    """An export folder (``trainer.export``) loaded for inference.

    Args:
        export_dir: the folder with ``config.json``.
        backend: ``pt2`` (the ``torch.export`` program), ``onnx`` (onnxruntime) or ``weights``
            (this project's builder + the safetensors/state-dict weights); default: ``pt2`` when
            the folder has it, else ``weights``.

    Raises:
        FileNotFoundError: no ``config.json`` or no file for the backend.
        ValueError: unknown backend.
    """

    def __init__(self, export_dir: str | Path, backend: str | None = None) -> None:
        self.export_dir = Path(export_dir).expanduser()
        config_path = self.export_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{self.export_dir} is not an export folder: no config.json (see trainer.export)")
        self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        self.classes: list[str] = list(self.config["classes"])
        files = self.config["files"]
        if backend is None:
            backend = "pt2" if files.get("program") and (self.export_dir / files["program"]).is_file() else "weights"
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.backend = backend
        recipe = self.config["preprocess"]
        self.size = tuple(recipe["size"])
        self.draft_size = max(self.size) if recipe.get("jpeg_draft") else None
        # The evaluation transform of trainer.transforms.build_transform, op for op.
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(list(self.size), antialias=recipe.get("antialias", True)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(recipe["mean"], recipe["std"]),
            ]
        )
        self._run = getattr(self, f"_load_{backend}")(files)

    def _file(self, files: dict[str, str], key: str) -> Path:
        name = files.get(key)
        if not name or not (self.export_dir / name).is_file():
            raise FileNotFoundError(f"{self.export_dir} has no {key} file for backend {self.backend!r}")
        return self.export_dir / name

    def _load_pt2(self, files: dict[str, str]):
        module = torch.export.load(self._file(files, "program")).module()
        return lambda batch: module(batch)

    def _load_onnx(self, files: dict[str, str]):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(self._file(files, "onnx")), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])

    def _load_weights(self, files: dict[str, str]):
        from trainer.models import build_model

        path = self._file(files, "weights")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        net = build_model(self.config["model"], num_classes=len(self.classes))
        net.load_state_dict(state)
        net.eval()
        return lambda batch: net(batch)

    def preprocess(self, image: Image.Image) -> Tensor:
        """RGB PIL image -> ``(3, H, W)`` float32, resized and normalised as in training."""
        return self.transform(image)

    @torch.inference_mode()
    def logits(self, batch: Tensor) -> Tensor:
        """``(N, 3, H, W)`` float32 preprocessed images -> ``(N, C)`` float32 logits."""
        return self._run(batch.contiguous()).float()

    def load(self, source: Any, max_pixels: int | None = None) -> Image.Image:
        """``load_image`` with this model's JPEG draft size."""
        return load_image(source, max_pixels=max_pixels, draft_size=self.draft_size)

    def top_k(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable ``(label, probability)`` of one RGB PIL image, best first."""
        probs = self.logits(self.preprocess(image)[None]).softmax(dim=1)[0]
        values, indices = probs.topk(min(k, len(self.classes)))
        return [(self.classes[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


#: How to make an export folder, for messages.
EXPORT_HINT = "pass a folder written by `python -m trainer.export RUN_DIR OUT_DIR`"


def open_predictor(export_dir: str | Path, backend: str | None = None) -> Predictor:
    """``Predictor(export_dir, backend)`` for a command line.

    Raises:
        UserError: the folder is missing or not an export folder, or the backend cannot load
            (its file or its package is missing); the message says what to do.
    """
    export_dir = Path(export_dir).expanduser()
    if not export_dir.is_dir():
        what = "is not a folder" if export_dir.exists() else "does not exist"
        raise UserError(f"export folder {export_dir} {what} ({EXPORT_HINT})")
    if not (export_dir / "config.json").is_file():
        raise UserError(f"{export_dir} is not an export folder: no config.json ({EXPORT_HINT})")
    try:
        return Predictor(export_dir, backend=backend)
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise UserError(f"{exc} (choose another --backend, install the missing package, or export again)") from exc


@dataclass
class Prediction:
    """One input's result. ``loss`` only for labelled inputs whose label is a class."""

    path: str
    label: str = ""
    predicted: str = ""
    probability: float | None = None
    loss: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    def as_row(self) -> dict[str, str]:
        return {
            "path": self.path,
            "label": self.label,
            "predicted": self.predicted,
            "probability": "" if self.probability is None else f"{self.probability:.6f}",
            "loss": "" if self.loss is None else f"{self.loss:.6f}",
            "top_k": json.dumps([[name, round(p, 6)] for name, p in self.top_k], ensure_ascii=False) if self.top_k else "",
            "error": self.error,
        }


@dataclass(frozen=True)
class Input:
    """One image to predict: the file, the path to report, and its label when known."""

    file: Path
    shown: str
    label: str = ""


def is_labelled_dataset(folder: Path) -> bool:
    """A dataset folder: ``catalog.sqlite``, or label subfolders and no image files of its own."""
    if (folder / "catalog.sqlite").is_file():
        return True
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    has_images = any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries)
    return not has_images and any(p.is_dir() for p in entries)


def expand_inputs(paths: Iterable[Path], catalog_url: str | None = None) -> Iterator[Input]:
    """Files as given; a plain folder's image files (sorted); a labelled dataset's images with
    their labels, shown relative to the dataset folder. With ``catalog_url`` (a crawl's
    PostgreSQL ``CATALOG_URL``) every folder given is a dataset whose stored rows that catalog
    holds."""
    from trainer.data import scan_dataset

    for path in paths:
        if not path.is_dir():
            yield Input(path, str(path))
        elif catalog_url or is_labelled_dataset(path):
            root = path.resolve()
            for record in scan_dataset(root, catalog_url):
                yield Input(record.path, record.path.relative_to(root).as_posix(), record.label)
        else:
            for file in sorted(path.iterdir()):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                    yield Input(file, str(file))


def predict_inputs(predictor: Predictor, inputs: Iterable[Input], *, top_k: int = 5, batch_size: int = 32) -> Iterator[Prediction]:
    """Predict every input in batches, in order; unreadable inputs yield a ``Prediction`` with
    ``error`` set and never stop the others."""
    class_index = {name: i for i, name in enumerate(predictor.classes)}
    pending: list[tuple[Input, Tensor]] = []

    def flush() -> Iterator[Prediction]:
        if not pending:
            return
        log_probs = predictor.logits(torch.stack([tensor for _, tensor in pending])).log_softmax(dim=1)
        k = min(top_k, len(predictor.classes))
        for (item, _), row in zip(pending, log_probs):
            probs = row.exp()
            values, indices = probs.topk(k)
            best = int(indices[0])
            target = class_index.get(item.label)
            yield Prediction(
                path=item.shown,
                label=item.label,
                predicted=predictor.classes[best],
                probability=float(values[0]),
                loss=float(-row[target]) if target is not None else None,
                top_k=[(predictor.classes[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())],
            )
        pending.clear()

    for item in inputs:
        try:
            tensor = predictor.preprocess(predictor.load(item.file))
        except ImageError as exc:
            logger.warning("%s: %s", item.shown, exc)
            yield from flush()
            yield Prediction(path=item.shown, label=item.label, error=str(exc))
            continue
        pending.append((item, tensor))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


@status_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 (all predicted), 1 (some inputs unreadable) or 2 (usage:
    a missing export folder or input path, printed as one ``error:`` line)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path, help="a folder written by `python -m trainer.export`")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files, folders, or a labelled dataset folder")
    parser.add_argument("--top-k", type=int, default=3, help="labels reported per image (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="write CSV here (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default: pt2 when exported, else weights")
    parser.add_argument("--catalog-url", default=None, metavar="URL",
                        help="the PostgreSQL catalog of the dataset folder given (a crawl's CATALOG_URL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        raise UserError(f"no such file or folder: {', '.join(missing)} (check the input paths)")
    predictor = open_predictor(args.export_dir, backend=args.backend)

    results = predict_inputs(predictor, expand_inputs(args.inputs, args.catalog_url), top_k=args.top_k, batch_size=args.batch_size)
    as_csv = args.out is not None or any(path.is_dir() for path in args.inputs)
    failed = total = 0
    if as_csv:
        handle = args.out.open("w", newline="", encoding="utf-8") if args.out else sys.stdout
        try:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for result in results:
                writer.writerow(result.as_row())
                total, failed = total + 1, failed + bool(result.error)
        finally:
            if args.out:
                handle.close()
    else:
        for result in results:
            total, failed = total + 1, failed + bool(result.error)
            if result.error:
                print(f"{result.path}: ERROR {result.error}")
            else:
                print(f"{result.path}: " + ", ".join(f"{name} {p:.3f}" for name, p in result.top_k))
    logger.info("%d images, %d unreadable%s", total, failed, f"; wrote {args.out}" if args.out else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
