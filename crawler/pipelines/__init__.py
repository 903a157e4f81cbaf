"""Item pipelines, one stage per module, run in this order (see ITEM_PIPELINES in settings):

download -> verify -> dedupe -> store
"""
