"""Scrapy settings for the ``crawler`` project (``scrapy.cfg`` points here).

Every crawl needs ``-s DATASET_DIR=<folder>``: the dataset it writes (docs/dataset.md).
Component settings carry one prefix each: ``VERIFY_*``, ``DEDUPE_*``, ``STORE_*``. Every
default lives here and only here: components read them with the typed, validated getters of
``crawler.setting_values`` and keep no fallback of their own.
"""

BOT_NAME = "crawler"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"
# `scrapy crawl` exits 1 when the spider closed for a failure reason (crawler/commands/crawl.py).
COMMANDS_MODULE = "crawler.commands"

# Identify ourselves honestly so site owners can tell who is crawling and block us if they wish.
USER_AGENT = "imageclf-crawler/0.1 (+https://github.com/imageclf/imageclf; dataset builder)"
ROBOTSTXT_OBEY = True

# Politeness: AutoThrottle adapts the delay to the server's latency, starting at 1 s and aiming
# at 2 requests in flight per site; per-domain concurrency stays well under Scrapy's 16 total.
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 1.0
AUTOTHROTTLE_MAX_DELAY = 30.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 2.0
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 8
DOWNLOAD_TIMEOUT = 30

RETRY_ENABLED = True
RETRY_TIMES = 2
RETRY_HTTP_CODES = [429, 500, 502, 503, 504, 522, 524, 408]
# Scrapy's retry re-sends at once; ours also slows the site down when it answers 429/503
# (honouring Retry-After). See crawler.middlewares.BackoffRetryMiddleware.
RETRY_BACKOFF_HTTP_CODES = [429, 503]
RETRY_BACKOFF_BASE = 1.0
RETRY_BACKOFF_MAX = 60.0
DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "crawler.middlewares.BackoffRetryMiddleware": 550,
}

# Image downloads: follow redirects (CDNs redirect a lot), cap the size. 32 MiB covers any
# photo worth training on; VERIFY_MAX_BYTES repeats the cap for data: URIs.
MEDIA_ALLOW_REDIRECTS = True
DOWNLOAD_MAXSIZE = 32 * 1024 * 1024
DOWNLOAD_WARNSIZE = 16 * 1024 * 1024

# Each item in flight holds its downloaded bytes (and, without worker processes, a decoded image).
CONCURRENT_ITEMS = 64

ITEM_PIPELINES = {
    "crawler.pipelines.download.DownloadPipeline": 100,
    "crawler.pipelines.prepare.PreparePipeline": 200,
    "crawler.pipelines.dedupe.DedupePipeline": 300,
    "crawler.pipelines.store.StorePipeline": 400,
}
# GarbageCollection: gc.freeze() once the spider opens, so that full garbage collections no
# longer walk the start-up objects, and fewer young collections (crawler/gctuning.py).
EXTENSIONS = {
    "crawler.jobdir.JobQueueGuard": 50,
    "crawler.threads.PipelineThreads": 100,
    "crawler.recorder.CatalogRecorder": 500,
    "crawler.progress.CrawlProgress": 510,
    "crawler.gctuning.GarbageCollection": 900,
}
# Scrapy's own extensions but RemoteControl (Scrapy >= 2.14, on by default): an HTTP endpoint
# that runs Python code sent to it (for Scrapy's MCP server), with a job file written to the
# user's profile at every crawl's start; a crawl here has no use for it. Left out of the base
# list rather than turned off (REMOTE_CONTROL_ENABLED) or set to None in EXTENSIONS, since Scrapy
# imports every listed extension's module, even a disabled one: aiohttp, ~0.1 s of every crawl's
# start-up. Spelled out, not read from scrapy.settings.default_settings: the image core
# (crawler/images/, worker processes) reads this module's defaults and must not import Scrapy;
# tests/crawler/test_startup.py checks it equals Scrapy's list without RemoteControl.
EXTENSIONS_BASE = {
    "scrapy.extensions.corestats.CoreStats": 0,
    "scrapy.extensions.logcount.LogCount": 0,
    "scrapy.extensions.telnet.TelnetConsole": 0,
    "scrapy.extensions.memusage.MemoryUsage": 0,
    "scrapy.extensions.memdebug.MemoryDebugger": 0,
    "scrapy.extensions.closespider.CloseSpider": 0,
    "scrapy.extensions.feedexport.FeedExporter": 0,
    "scrapy.extensions.logstats.LogStats": 0,
    "scrapy.extensions.spiderstate.SpiderState": 0,
    "scrapy.extensions.throttle.AutoThrottle": 0,
}
# Worker threads for the pipelines' CPU and disk work (decode, hash, SQLite, writes);
# 0: one per CPU this process may use (more only adds GIL and cache contention).
PIPELINE_THREADS = 0
# Worker processes for each image's decode, hashes and file write (crawler/workers.py): None, one
# per CPU this process may use but one (the crawl process keeps a core busy), at least 1; 0, none
# (that work then runs in the pipeline threads, sharing the crawl process's GIL with Scrapy:
# about 35% fewer images/s in benchmarks/).
PIPELINE_PROCESSES = None
# A progress line per label every PROGRESS_INTERVAL seconds (0: only the end-of-crawl summary).
PROGRESS_INTERVAL = 10.0

# Dropping junk is normal operation, not a warning.
DEFAULT_DROPITEM_LOG_LEVEL = "INFO"
# One line per dropped item (label, URL, reason) instead of the whole item with its hashes.
LOG_FORMATTER = "crawler.logformatter.ImageLogFormatter"
LOG_LEVEL = "INFO"

# Prepare stage (crawler/pipelines/prepare.py): what counts as a usable image.
# Smallest width and height, pixels: below 32 a photo carries no class information, and 1x1
# tracking pixels are the usual junk.
VERIFY_MIN_SIDE = 32
# Largest width x height, pixels, checked from the header before decoding: about a 50-megapixel
# photo (Pillow's own bomb limit is 89,478,485).
VERIFY_MAX_PIXELS = 50_000_000
# Largest accepted size, bytes: data: URIs bypass DOWNLOAD_MAXSIZE, so it is enforced here too.
VERIFY_MAX_BYTES = 32 * 1024 * 1024
# Pillow formats accepted (crawler/images/decode.py FORMATS lists the valid ones): every raster
# format a web crawl meets that Pillow decodes. PPM is the PNM family; JPEG includes MPO. All
# but JPEG, PNG, GIF and WEBP are stored as PNG.
VERIFY_FORMATS = [
    "JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "DIB", "ICO", "CUR", "PPM", "TGA", "JPEG2000", "PSD", "QOI",
]
# Longest side of stored images, pixels (0: store originals byte for byte); larger ones are
# resized and re-encoded, JPEGs at VERIFY_JPEG_QUALITY. The catalog keeps both sizes. The
# fine-tuning recipes this project follows resized their images to 400-500 px before training.
VERIFY_MAX_SIDE = 0
# Quality (1-95, Pillow's scale) of resized JPEG sources.
VERIFY_JPEG_QUALITY = 90
# Dedupe (crawler/pipelines/dedupe.py gives the figures behind these; README "Near-duplicate
# quality"). DEDUPE_HASH: pdq (256 bits, default), or imagehash's 64-bit phash, dhash,
# average_hash or whash. The thresholds depend on the hash: left at None, each takes its hash's
# value from DEDUPE_DEFAULTS; set one (-s DEDUPE_MAX_DISTANCE=...) to override it.
DEDUPE_HASH = "pdq"
# Largest Hamming distance in bits between full-picture hashes (best of the 8 flips and
# rotations with pdq) that counts as the same picture.
DEDUPE_MAX_DISTANCE = None
# Largest distance between a pair of window hashes (crop, caption, frame); 0: no windows
# (with pdq: neither PDQ's nor the phash windows).
DEDUPE_VARIANT_DISTANCE = None
# pdq only: hashes of a lower quality (0-100; flat, near-white, tiny objects) match only
# through the second look.
DEDUPE_MIN_QUALITY = None
# pdq only: full-picture candidates up to this distance get a second look at 64x64 grey
# squares (0: off; README says which to use at which scale), and are the same picture when the
# look's median difference is at most DEDUPE_LOOK_DIFFERENCE (standardised grey levels).
DEDUPE_LOOK_DISTANCE = None
DEDUPE_LOOK_DIFFERENCE = None
# pdq only: imagehash phash windows within this many bits of 64 (crops, caption bars, small
# turns; 0: off) are the same picture when, aligned, they differ by at most
# DEDUPE_ALIGN_DIFFERENCE (standardised grey levels).
DEDUPE_WINDOW_DISTANCE = None
DEDUPE_ALIGN_DIFFERENCE = None
DEDUPE_DEFAULTS = {
    # Measured gaps (benchmarks/neardup_real --margins, benchmarks/dedupe_quality; README
    # "Near-duplicate quality"): full picture 31 (ThreatExchange's default): copies <= 14 bits,
    # distinct photos >= 50 (neardup/, hymenoptera, shop, gallery); PDQ windows 24: copies
    # <= 16, distinct >= 44; look 0.10: overlays <= 0.081, burst frames >= 0.180 (gallery);
    # phash windows 8 with the colour gate (the phash recipe's, chosen on hymenoptera): no
    # distinct pair of neardup/, hymenoptera, the shop or the made copies within 8 bits, only
    # the gallery's burst frames; aligned look 0.13 (75th percentile): 0.8 of the nearest
    # burst pair (0.162); shop renditions median 0.033 (all 67 under it), made copies
    # median 0.03-0.12 by kind (benchmarks/dedupe_quality).
    "pdq": {
        "DEDUPE_MAX_DISTANCE": 31,
        "DEDUPE_VARIANT_DISTANCE": 24,
        "DEDUPE_MIN_QUALITY": 50,
        "DEDUPE_LOOK_DISTANCE": 50,
        "DEDUPE_LOOK_DIFFERENCE": 0.10,
        "DEDUPE_WINDOW_DISTANCE": 8,
        "DEDUPE_ALIGN_DIFFERENCE": 0.13,
    },
    # 64-bit imagehash hashes: no quality score, no second look.
    **{
        name: {
            "DEDUPE_MAX_DISTANCE": 6,
            "DEDUPE_VARIANT_DISTANCE": 8,
            "DEDUPE_MIN_QUALITY": 0,
            "DEDUPE_LOOK_DISTANCE": 0,
            "DEDUPE_LOOK_DIFFERENCE": 0.0,
            "DEDUPE_WINDOW_DISTANCE": 0,
            "DEDUPE_ALIGN_DIFFERENCE": 0.0,
        }
        for name in ("phash", "dhash", "average_hash", "whash")
    },
}
# Durability against power loss: fsync each image and its folder before its catalog row, and
# commit that row with synchronous=FULL. Off, the dataset is still safe against killed crawls
# (atomic renames, SQLite WAL); after a power loss, `python -m crawler.dataset check --repair`.
STORE_FSYNC = False

# Shared frontier (crawler/frontier.py, README "Past one machine"): off by default. Crawls of the
# urls spider share one queue and one seen-set in Redis when given scrapy-redis's settings:
#   -s SCHEDULER=scrapy_redis.scheduler.Scheduler -s DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter
#   -s REDIS_URL=redis://host:6379/0
# Keep the queue when a process closes: scrapy-redis's default (False) empties the shared queue
# and seen-set when any one process closes, under the feet of the others.
SCHEDULER_PERSIST = True
# Seconds a crawl process that stopped answering keeps its popped entries before another takes
# them over (queueing again those without a catalog row); longer than any stall of a live crawl.
FRONTIER_LEASE_TTL = 30
# URLs pushed to Redis (urls:start_urls) moved into the queue per idle round (0: CONCURRENT_REQUESTS).
FRONTIER_START_URLS_BATCH = 0

# DATASET_DIR has no default on purpose: a crawl must say where its dataset lives.
DATASET_DIR = None
# The catalog's database (crawler/catalog.py, README "Past one machine"): unset, the SQLite file
# DATASET_DIR/catalog.sqlite; postgresql://user[:password]@host[:port]/dbname for one catalog
# shared by crawls on several machines (the images still go to DATASET_DIR, a shared mount).
CATALOG_URL = None

# Where each search/API spider sends its queries (tests point them at 127.0.0.1).
BING_BASE_URL = "https://www.bing.com"
DUCKDUCKGO_BASE_URL = "https://duckduckgo.com"
WIKIMEDIA_API_URL = "https://commons.wikimedia.org/w/api.php"
OPENVERSE_API_URL = "https://api.openverse.org"
# Results asked for per page: Bing's async endpoint's own page; 20 is the most Openverse gives
# anonymous clients.
BING_PAGE_SIZE = 35
OPENVERSE_PAGE_SIZE = 20

# Rendering (`-a render=1`): the spider installs scrapy-playwright's download handlers only for
# such crawls. Playwright cannot download its own browser here, so it launches the system's
# Chromium: CHROMIUM_PATH, default $CHROMIUM_PATH or /usr/bin/chromium (Debian's package).
CHROMIUM_PATH = None
PLAYWRIGHT_BROWSER_TYPE = "chromium"
PLAYWRIGHT_LAUNCH_OPTIONS = {
    "headless": True,
    # --no-sandbox: Chromium's sandbox needs user namespaces, absent in most containers/CI.
    "args": [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ],
}
# Each page is a renderer process: a few at once keep a small machine responsive.
PLAYWRIGHT_MAX_PAGES_PER_CONTEXT = 4

TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
FEED_EXPORT_ENCODING = "utf-8"
