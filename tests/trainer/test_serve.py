"""The web app: upload in real Chromium and see the top-k; the JSON endpoint and its limits."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from trained_run import SCREENSHOTS, chromium_page, live_server, post_file
from trainer_testkit import draw_image

from trainer.export import export_run
from trainer.models import build_model
from trainer.predict import Predictor
from trainer.runs import Run
from trainer.serve import create_app

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """An export of an untrained baseline CNN: serving does not care how good the weights are."""
    import torch

    torch.manual_seed(0)
    net = build_model("baseline_cnn", num_classes=3).eval()
    base = tmp_path_factory.mktemp("serve")
    run = Run(base, {}, base / "none.ckpt", "baseline_cnn", CLASSES, 32, {}, net)
    return export_run(run, base / "export", onnx=False)


@pytest.fixture(scope="module")
def server(export_dir):
    app = create_app(export_dir, top_k=3, max_upload_bytes=200_000, max_pixels=1_000_000)
    with live_server(app) as url:
        yield url


def png(size: tuple[int, int], noise: bool = False) -> bytes:
    image = Image.effect_noise(size, 64).convert("RGB") if noise else Image.new("RGB", size, (200, 30, 30))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_upload_in_chromium_shows_top_k(server, export_dir, tmp_path):
    image = tmp_path / "circle.png"
    image.write_bytes(draw_image("circle", 3, size=96))
    with Image.open(image) as opened:
        expected = Predictor(export_dir).top_k(opened.convert("RGB"), 3)
    with chromium_page(760, 420) as page:
        page.goto(server)
        page.wait_for_function("document.getElementById('model').textContent.includes('baseline_cnn')")
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_selector("tr.prediction")
        rows = page.locator("tr.prediction")
        assert rows.count() == 3
        labels = [rows.nth(i).locator("td").first.inner_text() for i in range(3)]
        assert labels == [label for label, _ in expected]
        assert rows.first.locator("td.p").inner_text() == f"{100 * expected[0][1]:.1f} %"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "serve.png"))

        bad = tmp_path / "notes.png"
        bad.write_bytes(b"plain text, not a picture")
        page.set_input_files("#file", str(bad))
        page.click("#submit")
        page.wait_for_function("document.getElementById('error').textContent.startsWith('Error 400')")
        assert page.locator("tr.prediction").count() == 0


def test_json_endpoint_and_limits(server):
    status, body = post_file(server + "predict?top_k=2", png((64, 48)))
    assert status == 200
    assert body["width"] == 64 and body["height"] == 48 and len(body["predictions"]) == 2
    assert {p["label"] for p in body["predictions"]} <= set(CLASSES)
    assert sum(p["probability"] for p in body["predictions"]) <= 1.0 + 1e-6

    status, body = post_file(server + "predict", b"GIF89a-but-not-really")
    assert status == 400 and "not an image" in body["detail"]
    status, body = post_file(server + "predict", b"")
    assert status == 400 and "empty" in body["detail"]
    status, body = post_file(server + "predict", png((1200, 1000)))  # 1.2 MP > 1 MP limit
    assert status == 413 and "pixels" in body["detail"]
    status, body = post_file(server + "predict", png((400, 400), noise=True))  # ~480 kB > 200 kB
    assert status == 413 and "too large" in body["detail"]
    status, body = post_file(server + "predict", None)  # no `file` field
    assert status == 422


def test_reports_the_uploaded_size_not_the_decoded_one(server, export_dir):
    # The model's input is 32 px, so the JPEG is decoded at 1/8 scale (PIL draft): 100 x 75.
    photo = io.BytesIO()
    Image.new("RGB", (800, 600), (30, 120, 200)).save(photo, format="JPEG")
    assert Predictor(export_dir).load(io.BytesIO(photo.getvalue())).size == (100, 75)
    status, body = post_file(server + "predict", photo.getvalue(), filename="photo.jpg")
    assert status == 200 and (body["width"], body["height"]) == (800, 600)


def test_too_large_upload_gives_the_limit_in_mib(server):
    # 230 kB: past the 200 kB limit but within the multipart allowance, so the bytes read are checked.
    status, body = post_file(server + "predict", b"x" * 230_000)
    assert status == 413 and body["detail"] == "upload too large: more than 0.191 MiB (the limit)"
    # 1 MB announced by Content-Length: refused before the body is read.
    status, body = post_file(server + "predict", b"x" * 1_000_000)
    assert status == 413 and body["detail"].startswith("upload too large: 0.954 MiB (limit 0.191 MiB)")
