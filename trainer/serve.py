"""Serve an exported model over HTTP: ``python -m trainer.serve EXPORT_DIR --port N [--host 127.0.0.1]``.

A FastAPI app (run by uvicorn) with:

- ``GET /``: a plain HTML page to upload an image and see its top-k labels.
- ``POST /predict``: multipart form with the image in field ``file`` (optional query ``top_k``);
  answers ``{"filename", "width", "height", "predictions": [{"label", "probability"}, ...]}``,
  most probable first; ``width`` and ``height`` are the uploaded image's own size, pixels.
- ``GET /info``: model name, classes, input size and the upload limits.

Bad uploads get a 4xx with ``{"detail": "<why>"}``: 413 for more than ``max_upload_bytes`` bytes
(checked from ``Content-Length`` before the body is read, and again on the bytes read; the
message gives sizes in MiB) or more than ``max_pixels`` pixels (checked from the image header
before decoding); 400 for an empty file or one that is not a decodable image; 422 when the
``file`` field is missing.

Example::

    curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?top_k=3'
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from trainer.errors import status_on_user_error
from trainer.predict import ImageError, ImageTooLarge, open_predictor

logger = logging.getLogger(__name__)

#: Default upload limit, bytes (a large phone photo is 5-10 MB).
MAX_UPLOAD_BYTES = 20 * 2**20
#: Default pixel limit (width x height): 50 megapixels, far above any camera a user would upload
#: from, far below a decompression bomb.
MAX_PIXELS = 50_000_000
#: Allowance for the multipart framing around the file when checking ``Content-Length``, bytes.
_MULTIPART_OVERHEAD = 64 * 2**10


def megabytes(size: int) -> str:
    """``size`` bytes as MiB for messages, e.g. ``"20 MiB"``, ``"0.191 MiB"``."""
    return f"{size / 2**20:.3g} MiB"


def create_app(
    export_dir: str | Path,
    *,
    top_k: int = 5,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    backend: str | None = None,
) -> FastAPI:
    """Build the app around the export folder ``export_dir`` (see the module doc).

    Args:
        export_dir: a folder written by ``trainer.export``.
        top_k: labels returned when the request does not say.
        max_upload_bytes: largest accepted upload, bytes.
        max_pixels: largest accepted image, width x height pixels.
        backend: ``trainer.predict.Predictor`` backend (default: the exported program).

    Raises:
        UserError: ``export_dir`` is missing or not an export folder (``open_predictor``).
    """
    predictor = open_predictor(export_dir, backend=backend)
    page = resources.files("trainer").joinpath("static/serve.html").read_text(encoding="utf-8")
    app = FastAPI(title="Image classifier", description=f"{predictor.config['model']} over {len(predictor.classes)} classes")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse what is announced too large before Starlette spools the body to disk.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + _MULTIPART_OVERHEAD:
            detail = f"upload too large: {megabytes(int(length))} (limit {megabytes(max_upload_bytes)})"
            return JSONResponse({"detail": detail}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/info")
    def info() -> dict:
        return {
            "model": predictor.config["model"],
            "classes": predictor.classes,
            "image_size": predictor.config["image_size"],
            "top_k": top_k,
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
        }

    # A plain `def`: FastAPI runs it in its thread pool, so inference never blocks the event loop.
    @app.post("/predict")
    def predict(file: UploadFile = File(...), top_k: int = Query(top_k, ge=1, le=1000)) -> dict:
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload too large: more than {megabytes(max_upload_bytes)} (the limit)")
        if not data:
            raise HTTPException(400, "empty upload: choose an image file")
        try:
            image = predictor.load(io.BytesIO(data), max_pixels=max_pixels)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(400, f"{file.filename or 'upload'}: {exc}") from None
        # The upload's own size: `image` may be a JPEG decoded at reduced scale (PIL draft).
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
        return {
            "filename": file.filename,
            "width": width,
            "height": height,
            "predictions": [{"label": label, "probability": p} for label, p in predictor.top_k(image, top_k)],
        }

    return app


@status_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until interrupted; 2 (one ``error:`` line) when the export
    folder is bad."""
    parser = argparse.ArgumentParser(prog="python -m trainer.serve", description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path, help="a folder written by `python -m trainer.export`")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--top-k", type=int, default=5, help="labels returned by default")
    parser.add_argument("--max-upload-bytes", type=int, default=MAX_UPLOAD_BYTES)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    parser.add_argument("--backend", choices=("pt2", "onnx", "weights"), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import uvicorn

    app = create_app(
        args.export_dir, top_k=args.top_k, max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
        backend=args.backend,
    )
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
