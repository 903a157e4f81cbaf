"""Trainer: trains and compares image classifiers on a crawled dataset folder.

The package only reads the dataset folder described in ``docs/dataset.md``; it never imports the
crawler. Entry points: ``python -m trainer`` (the Hydra app, see ``trainer.train``) and
``python -m trainer.compare <sweep dir>`` (rebuild a sweep's comparison table).
"""
