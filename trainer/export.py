"""Export a trained run as a self-contained folder: ``python -m trainer.export RUN_DIR OUT_DIR``.

The folder holds no pickled Python object, and everything in it loads with safe loaders:

- ``model.safetensors``: the network's ``state_dict`` (safetensors format); without the
  ``safetensors`` package, ``model.pt``, a plain state dict for ``torch.load(weights_only=True)``.
- ``model.pt2``: the network as a ``torch.export`` program (graph as JSON, weights as raw
  tensor bytes; ``torch.export.load``), the successor of TorchScript, runnable without this
  project's code. Batch size is dynamic.
- ``model.onnx``: the same network for ONNX runtimes, when the ``onnx`` and ``onnxscript``
  packages are installed (``--no-onnx`` to skip). Input ``images``, output ``logits``.
- ``classes.json``: the class names, index ``i`` is logit ``i``.
- ``config.json``: model name, classes, input size, preprocessing (below), the files above and
  where they came from.

Preprocessing (``config.json["preprocess"]``), the evaluation transform of
``trainer.transforms.build_transform``: decode, convert to RGB, resize to ``size`` (height,
width; bilinear with antialiasing, aspect ratio not kept), scale to [0, 1], subtract ``mean`` and
divide by ``std`` per channel. The model maps ``(N, 3, H, W)`` float32 to ``(N, C)`` logits;
softmax gives the probabilities.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.errors import UserError, status_on_user_error
from trainer.quiet import quiet_cli
from trainer.runs import Run, load_run
from trainer.transforms import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
SAFETENSORS_FILE = "model.safetensors"
STATE_DICT_FILE = "model.pt"
PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
#: Largest batch the exported programs are declared for (their batch dimension is dynamic).
MAX_BATCH = 1024


def preprocess_recipe(image_size: int, jpeg_draft: bool = True) -> dict[str, Any]:
    """The evaluation preprocessing as data (``trainer.transforms.build_transform(train=False)``);
    ``jpeg_draft``: the run's ``data.fast_decode``."""
    return {
        "mode": "RGB",
        "size": [image_size, image_size],
        "resize": "bilinear",
        "antialias": True,
        "keep_aspect_ratio": False,
        # The datamodule decodes JPEGs at reduced scale (PIL draft) when still >= size, unless
        # data.fast_decode=false: the same here.
        "jpeg_draft": jpeg_draft,
        "scale": 1 / 255,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def export_run(run: Run | str | Path, out_dir: str | Path, *, onnx: bool | None = None, overwrite: bool = False) -> Path:
    """Write the export folder of a run (see module doc) and return ``out_dir``.

    Args:
        run: a run folder, or a ``trainer.runs.Run`` already loaded.
        out_dir: the folder to write; created. Must be empty or missing unless ``overwrite``.
        onnx: write ``model.onnx``: ``True`` always (raises if the packages are missing),
            ``False`` never, ``None`` when ``onnx`` and ``onnxscript`` are installed.
        overwrite: replace an existing non-empty ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
        FileNotFoundError: the run folder has no summary or checkpoint.
        ModuleNotFoundError: ``onnx=True`` without the ``onnx``/``onnxscript`` packages.
    """
    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    net = run.net.eval().cpu()
    example = torch.zeros(2, 3, run.image_size, run.image_size)

    files = {"weights": _save_weights(net, out)}
    files["program"] = _save_program(net, example, out / PROGRAM_FILE)
    want_onnx = onnx if onnx is not None else _onnx_available()
    if want_onnx:
        files["onnx"] = _save_onnx(net, example, out / ONNX_FILE)

    (out / CLASSES_FILE).write_text(json.dumps(run.classes, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    config = {
        "format_version": FORMAT_VERSION,
        "model": run.model_name,
        "num_classes": len(run.classes),
        "classes": run.classes,
        "image_size": run.image_size,
        "preprocess": preprocess_recipe(run.image_size, bool(run.data_hparams.get("fast_decode", True))),
        "input": {"name": "images", "shape": ["N", 3, run.image_size, run.image_size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", len(run.classes)], "activation": "softmax"},
        "files": {**files, "classes": CLASSES_FILE},
        "source": {
            "run_dir": str(run.run_dir),
            "checkpoint": str(run.checkpoint_path),
            "val_acc": run.summary.val_acc,
            "val_loss": run.summary.val_loss,
            "torch": torch.__version__,
        },
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("exported %s (%s) to %s", run.model_name, ", ".join(files.values()), out)
    return out


def _save_weights(net: nn.Module, out: Path) -> str:
    # contiguous + clone: safetensors refuses views and tensors sharing storage.
    state = {key: value.detach().contiguous().clone() for key, value in net.state_dict().items()}
    if importlib.util.find_spec("safetensors") is not None:
        from safetensors.torch import save_file

        save_file(state, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
        (out / SAFETENSORS_FILE).chmod(0o644)  # it writes owner-only; an export is meant to be shared
        return SAFETENSORS_FILE
    torch.save(state, out / STATE_DICT_FILE)
    return STATE_DICT_FILE


def _save_program(net: nn.Module, example: torch.Tensor, path: Path) -> str:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path.name


def _onnx_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def _save_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> str:
    if not _onnx_available():
        raise ModuleNotFoundError("ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript)")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(
        net,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))
    return path.name


#: How to make a run folder, for messages.
RUN_HINT = "pass a run folder written by `python -m trainer`: it holds summary.json and checkpoints/"


@status_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 written, 2 bad run or output folder,
    printed as one ``error:`` line)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (with summary.json and checkpoints/)")
    parser.add_argument("out_dir", type=Path, help="the export folder to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--onnx", dest="onnx", action="store_true", default=None, help="require model.onnx")
    group.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip model.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.run_dir.is_dir():
        raise UserError(f"run folder {args.run_dir} {'is not a folder' if args.run_dir.exists() else 'does not exist'} ({RUN_HINT})")
    try:
        out = export_run(args.run_dir, args.out_dir, onnx=args.onnx, overwrite=args.overwrite)
    except FileNotFoundError as exc:  # no summary.json, or no checkpoint
        raise UserError(f"{str(exc).split(' (')[0]} ({RUN_HINT})") from exc
    except (FileExistsError, ModuleNotFoundError) as exc:  # their messages say the fix in parentheses
        raise UserError(str(exc)) from exc
    print(out)
    return 0


if __name__ == "__main__":
    quiet_cli()  # the command line only: tests keep every warning
    sys.exit(main())
