"""``python -m demo`` (``make demo``): the whole job on the built-in demo site.

It serves the demo gallery site (:mod:`demo.site`) on 127.0.0.1 (generated shapes, or the label
subfolders of ``--images``) and runs the documented driver on it, as a user would on a real
site::

    python -m imageclf gallery <label>... -a start_urls=http://127.0.0.1:<port>/search/{label} \\
        --models baseline_cnn,resnet18 --out demo-output -- <trainer overrides>

Everything is written under ``--out`` (default ``demo-output/``), which is emptied first; the
folder is only ever emptied when it carries the marker file this command leaves in it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from demo.site import DemoSite
from imageclf.cli import main as imageclf_main

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = ".demo-output"
# 2-core CPU, 2026-11-28: `make demo` from a fresh clone on an idle machine took crawl 8 s and
# training 77 s (resnet18 about 2 s an epoch at 64 px); the same run at load average 12-19
# (other jobs running) took 49.5 min, an epoch costing 27 s (baseline_cnn) and 114 s (resnet18).
USUAL_DURATION = "about 2 minutes on an idle 2-core CPU (crawl 8 s, training 77 s measured), several times that on a busy machine"


def _prepare_out(out: Path) -> None:
    """Empty ``out`` if this command made it; refuse to touch a folder it did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            print(f"error: {out} exists and was not made by the demo (choose another --out)", file=sys.stderr)  # noqa: T201
            raise SystemExit(2)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by python -m demo; emptied by its next run\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of label subfolders to serve instead of generated shapes")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo-output", help="where the dataset, runs and logs go")
    parser.add_argument("--models", default="baseline_cnn,resnet18", help="comma-separated experiment names")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64, help="pixels, the side images are resized to")
    parser.add_argument("--per-label", type=int, default=100, help="generated images per category")
    parser.add_argument("--crawl-setting", action="append", default=[], metavar="NAME=VALUE", help="extra -s for scrapy")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the trainer (e.g. data.batch_size=16)")
    args = parser.parse_args(argv)

    try:
        site = DemoSite(args.images, per_label=args.per_label)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error} (IMAGES=<folder> needs one subfolder of images per label)", file=sys.stderr)  # noqa: T201
        return 2
    out = args.out.resolve()
    _prepare_out(out)
    with site:
        # Locally there is no server to be polite to: the demo lifts AutoThrottle's start delay.
        settings = ["AUTOTHROTTLE_ENABLED=False", *args.crawl_setting]
        # A few hundred images make few steps an epoch: smaller batches give the one-cycle
        # schedule more steps, and a longer patience keeps early stopping from ending its warm-up.
        overrides = [
            f"data.image_size={args.image_size}", f"trainer.max_epochs={args.epochs}",
            "data.batch_size=16", "callbacks.early_stopping.patience=10", *args.overrides,
        ]  # fmt: skip
        driver_argv = [
            "gallery", *site.labels, "-a", f"start_urls={site.url}/search/{{label}}",
            "--models", args.models, "--out", str(out),
            *(a for s in settings for a in ("-s", s)), "--", *overrides,
        ]  # fmt: skip
        print(  # noqa: T201
            f"Demo: {len(site.labels)} categories ({', '.join(site.labels)}) served at {site.url}; "
            f"this usually takes {USUAL_DURATION}.\n"
            f"It runs the command you would point at a real site:\n  python -m imageclf {shlex.join(driver_argv)}",
            flush=True,
        )
        return imageclf_main(driver_argv)


if __name__ == "__main__":
    sys.exit(main())
