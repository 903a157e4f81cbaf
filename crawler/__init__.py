"""Scrapy project that crawls labelled images into a dataset folder (see docs/dataset.md)."""
