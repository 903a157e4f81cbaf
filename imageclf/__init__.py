"""imageclf: from category names to compared models in one command.

``python -m imageclf <spider> <label>... --models m1,m2`` drives the two packages the way a user
would, as subprocesses: one ``scrapy crawl`` per label into one dataset, the dataset summary,
then one ``python -m trainer -m`` sweep over the models. It imports neither ``crawler`` nor
``trainer``: they meet only at the dataset folder (DESIGN.md).
"""
