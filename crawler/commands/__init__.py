"""Project commands (Scrapy's ``COMMANDS_MODULE``): ``crawl`` with exit codes that tell failure."""
