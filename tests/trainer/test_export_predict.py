"""Export -> predict round trip: same probabilities as the LightningModule, safe files only."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from trained_run import train_tiny_run
from trainer_testkit import draw_image

from trainer.data import ImageDataModule
from trainer.export import export_run
from trainer.export import main as export_main
from trainer.models import build_model
from trainer.module import ImageClassifier
from trainer.predict import Predictor, expand_inputs, predict_inputs
from trainer.predict import main as predict_main
from trainer.summary import RunSummary

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    dataset, run_dir, summary = train_tiny_run(base, "diagnostics=false")
    out = export_run(run_dir, base / "export", onnx=HAS_ONNX)
    return dataset, run_dir, summary, out


def module_probabilities(summary: RunSummary, dataset: Path) -> dict[str, torch.Tensor]:
    """Softmax of the LightningModule loaded from the best checkpoint, over every image of the
    dataset preprocessed by the datamodule's evaluation transform; keyed by relative path."""
    checkpoint = summary.best_checkpoint
    module = ImageClassifier.load_from_checkpoint(
        checkpoint, map_location="cpu", weights_only=True,
        net=build_model("baseline_cnn", num_classes=3), optimizer=torch.optim.SGD,
    )
    module.eval()
    dm = ImageDataModule(root=str(dataset), image_size=summary.image_size, augment="none")
    dm.setup()
    probs = {}
    with torch.no_grad():
        for ds in dm.datasets.values():
            images = torch.stack([ds[i][0] for i in range(len(ds))])
            for path, row in zip(ds.paths, module(images).softmax(1)):
                probs[path.relative_to(dataset.resolve()).as_posix()] = row
    return probs


def test_export_folder_is_self_contained_and_pickle_free(exported):
    _, _, summary, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "baseline_cnn" and config["classes"] == summary.classes
    assert json.loads((out / "classes.json").read_text()) == summary.classes
    assert config["preprocess"]["size"] == [32, 32]
    assert config["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["files"]["weights"] == "model.safetensors" and config["files"]["program"] == "model.pt2"
    from safetensors.torch import load_file

    state = load_file(out / "model.safetensors")
    net = build_model("baseline_cnn", num_classes=3)
    net.load_state_dict(state)  # every key, right shapes
    with zipfile.ZipFile(out / "model.pt2") as archive:
        assert not [n for n in archive.namelist() if n.endswith(".pkl")]


@pytest.mark.parametrize("backend", ["pt2", "weights", pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ONNX, reason="no onnx"))])
def test_round_trip_matches_the_lightning_module(exported, backend):
    dataset, _, summary, out = exported
    expected = module_probabilities(summary, dataset)
    predictor = Predictor(out, backend=backend)
    results = list(predict_inputs(predictor, expand_inputs([dataset]), top_k=3, batch_size=16))
    assert len(results) == len(expected) == 36
    classes = summary.classes
    for result in results:
        want = expected[result.path]
        got = torch.tensor([dict(result.top_k)[name] for name in classes])
        assert torch.allclose(got, want, atol=1e-5), (result.path, got, want)
        assert result.predicted == classes[int(want.argmax())]
        assert result.loss == pytest.approx(-math.log(float(want[classes.index(result.label)])), abs=1e-4)


def test_scores_csv_for_a_labelled_dataset_and_per_file_errors(exported, tmp_path):
    dataset, _, _, out = exported
    scores = tmp_path / "scores.csv"
    assert predict_main([str(out), str(dataset), "--out", str(scores)]) == 0
    rows = list(csv.DictReader(scores.open(encoding="utf-8")))
    assert len(rows) == 36 and {"path", "label", "predicted", "probability", "loss"} <= set(rows[0])
    assert all((dataset / r["path"]).is_file() and r["path"].split("/")[0] == r["label"] for r in rows)

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.png").write_bytes(draw_image("circle", 99))
    (folder / "broken.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "truncated.png").write_bytes(draw_image("square", 98)[:80])
    (folder / "c.png").write_bytes(draw_image("triangle", 97))
    out_csv = tmp_path / "mixed.csv"
    assert predict_main([str(out), str(folder), "--top-k", "2", "--out", str(out_csv)]) == 1  # some failed
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out_csv.open())}
    assert set(rows) == {"a.png", "broken.jpg", "truncated.png", "c.png"}
    assert rows["broken.jpg"]["error"].startswith("not an image") and not rows["broken.jpg"]["predicted"]
    assert rows["truncated.png"]["error"]
    for name in ("a.png", "c.png"):
        assert not rows[name]["error"] and len(json.loads(rows[name]["top_k"])) == 2


def test_single_images_print_top_k(exported, tmp_path, capsys):
    _, _, _, out = exported
    image = tmp_path / "one.png"
    image.write_bytes(draw_image("square", 5))
    assert predict_main([str(out), str(image), "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count(",") == 2


def test_export_command_refuses_a_non_empty_folder(exported, tmp_path):
    _, run_dir, _, out = exported
    assert export_main([str(run_dir), str(out), "--no-onnx"]) == 2
    assert export_main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
