"""Spiders: one per image source. They only parse pages and yield ImageItem objects."""
