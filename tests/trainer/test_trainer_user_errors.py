"""Every user mistake on the trainer side: one ``error: <what> (<fix>)`` line, exit status 2.

Each test runs the real command (``python -m trainer``, ``trainer.predict``/``export``/``serve``)
as a subprocess on a few small images written here with Pillow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.models import build_model

REPO = Path(__file__).resolve().parents[2]
#: Shrinks a run to what the mistakes need: none of them gets as far as a training step.
FAST = ["trainer.max_epochs=1", "data.image_size=32", "data.num_workers=0", "data.persistent_workers=false", "logger=none"]


def write_images(root: Path, counts: dict[str, int]) -> Path:
    """``root/<label>/<n>.png|jpg`` with ``counts[label]`` small images (a label with 0: an empty folder)."""
    for label_index, (label, count) in enumerate(counts.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            colour = (40 * label_index, 200 - 20 * i, 90)
            suffix, fmt = (".png", "PNG") if i % 2 else (".jpg", "JPEG")
            Image.new("RGB", (24 + i, 20), colour).save(root / label / f"{i}{suffix}", format=fmt)
    return root


def run(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"} | (env or {})
    environment.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in (env or {}) else None
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def train(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run("trainer", *FAST, f"hydra.run.dir={tmp_path / 'run'}", *overrides, cwd=tmp_path, env=env)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, exactly one ``error:`` line holding every fragment; return it."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines[0]
    assert line.endswith(")") and " (" in line  # error: <what is wrong> (<how to fix it>)
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_data_root_not_set(tmp_path):
    assert_user_error(train(tmp_path), "error: data.root is not set (add data.root=DATASET_DIR")


def test_data_root_does_not_exist(tmp_path):
    missing = tmp_path / "nonexistent"
    assert_user_error(train(tmp_path, f"data.root={missing}"), f"dataset folder {missing} does not exist", "data.root")


def test_one_class_is_refused(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 3})
    assert_user_error(train(tmp_path, f"data.root={root}"), "has 1 class", "needs at least 2", "images per class: ants 3")


def test_an_empty_class_folder_is_refused(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 3, "bees": 2, "wasps": 0})
    assert_user_error(
        train(tmp_path, f"data.root={root}"), "wasps/", "no images", "images per class: ants 3, bees 2, wasps 0", "remove"
    )


def test_a_dataset_without_images(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("no pictures here")
    assert_user_error(train(tmp_path, f"data.root={tmp_path / 'data'}"), "no images found in", "label")


def test_published_weights_without_network_explain_the_local_options(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 2, "bees": 2})
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    # No test reaches the internet: downloads go to a closed local port and fail at once.
    offline = {"TORCH_HOME": str(torch_home), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "no_proxy": "", "NO_PROXY": ""}
    result = train(
        tmp_path, f"data.root={root}", "model=resnet18", "model.net.weights=DEFAULT", "model.finetune=full", env=offline
    )
    assert_user_error(
        result,
        "cannot download resnet18 weights DEFAULT from https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "model.net.weights=/path/to/resnet18-f37072fd.pth",
        f"{torch_home / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}",
        "TORCH_HOME",
    )


def test_unknown_weights_name_lists_the_valid_ones(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 2, "bees": 2})
    result = train(tmp_path, f"data.root={root}", "model=resnet18", "model.net.weights=IMAGENET9K", "model.finetune=full")
    assert_user_error(result, "unknown weights model.net.weights=IMAGENET9K", "IMAGENET1K_V1, DEFAULT")


def test_missing_weights_file(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 2, "bees": 2})
    missing = tmp_path / "resnet18.pth"
    result = train(tmp_path, f"data.root={root}", "model=resnet18", f"model.net.weights={missing}", "model.finetune=full")
    assert_user_error(result, f"weights file not found: {missing}")


def test_weights_file_of_another_architecture(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 2, "bees": 2})
    weights = tmp_path / "baseline.pth"
    torch.save(build_model("baseline_cnn", num_classes=2).state_dict(), weights)
    result = train(tmp_path, f"data.root={root}", "model=resnet18", f"model.net.weights={weights}", "model.finetune=full")
    assert_user_error(result, f"weights file {weights} does not fit resnet18", "state dict saved from torchvision's resnet18")


def test_unknown_model_name_lists_the_valid_ones(tmp_path):
    root = write_images(tmp_path / "data", {"ants": 2, "bees": 2})
    assert_user_error(
        train(tmp_path, f"data.root={root}", "model.net.name=resnet19"),
        "unknown model 'resnet19'",
        "alexnet, baseline_cnn, resnet18, resnet34, resnet50, vgg16",
    )


def test_a_user_error_in_a_sweep_is_one_line(tmp_path):
    missing = tmp_path / "nonexistent"
    result = run(
        "trainer", "-m", *FAST, f"data.root={missing}", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path
    )
    assert_user_error(result, f"dataset folder {missing} does not exist")


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = train(tmp_path, f"data.root={tmp_path / 'nonexistent'}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(path)
    return path


def test_predict_without_an_export_folder(tmp_path, image):
    missing = tmp_path / "exports" / "none"
    assert_user_error(run("trainer.predict", str(missing), str(image), cwd=tmp_path), f"export folder {missing} does not exist")
    assert_user_error(
        run("trainer.predict", str(tmp_path), str(image), cwd=tmp_path),
        f"{tmp_path} is not an export folder: no config.json",
        "python -m trainer.export",
    )


def test_predict_with_a_missing_input(tmp_path):
    assert_user_error(
        run("trainer.predict", str(tmp_path), str(tmp_path / "nope.jpg"), cwd=tmp_path), f"no such file or folder: {tmp_path / 'nope.jpg'}"
    )


def test_serve_without_an_export_folder(tmp_path):
    assert_user_error(run("trainer.serve", str(tmp_path), "--port", "9", cwd=tmp_path), "is not an export folder")


def test_export_without_a_run_folder(tmp_path):
    out = str(tmp_path / "out")
    missing = tmp_path / "runs" / "none"
    assert_user_error(run("trainer.export", str(missing), out, cwd=tmp_path), f"run folder {missing} does not exist")
    assert_user_error(
        run("trainer.export", str(tmp_path), out, cwd=tmp_path), "is not a run folder: no summary.json", "python -m trainer"
    )
