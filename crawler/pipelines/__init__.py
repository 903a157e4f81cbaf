"""Item pipelines, one stage per module, run in this order (see ITEM_PIPELINES in settings):

download -> prepare -> dedupe -> store

Each is a thin Scrapy adapter; the work on the image itself lives in ``crawler.images``.
"""
