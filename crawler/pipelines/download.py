"""Download stage: fetch each item's image URL with Scrapy's media-pipeline machinery.

Subclassing ``FilesPipeline`` keeps what Scrapy already does for media requests (downloader
middlewares: robots.txt, retries, AutoThrottle, per-domain concurrency, ``DOWNLOAD_MAXSIZE``,
redirects with ``MEDIA_ALLOW_REDIRECTS``; ``data:`` URIs through Scrapy's data-URI handler), but
nothing is persisted to ``FILES_STORE``: the bytes stay in memory and travel on in
``item["body"]`` for verify to judge. Only the store stage writes files.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from itemadapter import ItemAdapter
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    DropItem,
    IgnoreRequest,
)
from scrapy.http.request import NO_CALLBACK, Request
from scrapy.pipelines.files import FilesPipeline

try:  # Scrapy >= 2.14: media failures of this class are logged at DEBUG, without a traceback.
    from scrapy.pipelines.media import _MediaRequestFiltered as _QuietMediaError
except ImportError:  # pragma: no cover
    from scrapy.pipelines.media import FileException as _QuietMediaError
from twisted.internet.error import DNSLookupError, TimeoutError as TxTimeoutError

from crawler.threads import sha256_hex

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.pipelines.media import FileInfoOrError, MediaPipeline
    from twisted.python.failure import Failure
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["DownloadFailed", "DownloadPipeline"]


class DownloadFailed(_QuietMediaError):
    """A media download that produced no usable bytes; ``reason`` is the catalog reason.

    It derives from the media pipeline's "quiet" error so that an expected failure (a 404)
    is not logged at ERROR with a traceback by Scrapy; item_completed logs it in one line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _MemoryStore:
    """A FilesPipeline store that stores nothing: every file is "not stored yet"."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def persist_file(self, path: str, buf: Any, info: Any, meta: Any = None, headers: Any = None) -> None:
        return None

    def stat_file(self, path: str, info: Any) -> dict[str, Any]:
        return {}


class DownloadPipeline(FilesPipeline):
    """Download ``item["url"]`` and put the bytes in ``item["body"]``.

    Sets ``body`` (bytes), ``bytes`` (length, bytes) and ``sha256`` (hex, of the downloaded
    bytes). A failed download drops the item as ``rejected`` with a stable reason:
    ``http_<status>`` (any non-200 final status, e.g. ``http_404``), ``too_large`` (over
    ``DOWNLOAD_MAXSIZE`` bytes), ``timeout``, ``dns_error``, ``connection_refused``,
    ``filtered`` (robots.txt or another middleware ignored it), ``too_many_redirects`` (more than
    ``REDIRECT_MAX_TIMES`` hops: a redirect loop), ``bad_data_uri`` (a ``data:`` URI whose base64
    does not decode) or ``download_failed``.
    Stats: ``download/ok``, ``download/failed/<reason>``.

    Raises:
        DropItem: for every failed download (after Scrapy's own retries).
    """

    STORE_SCHEMES = {"": _MemoryStore, "memory": _MemoryStore}  # noqa: RUF012 (Scrapy's API)
    # Our item_completed logs one line per failure; the base class would log a traceback.
    LOG_FAILED_RESULTS = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        # FILES_STORE is ignored: nothing is written by this stage.
        return cls("memory://", crawler=crawler)

    def _get_store(self, uri: str) -> _MemoryStore:
        return _MemoryStore(uri)

    def get_media_requests(self, item: Any, info: MediaPipeline.SpiderInfo) -> list[Request]:
        url = ItemAdapter(item).get("url")
        if not url:
            return []
        return [Request(url, callback=NO_CALLBACK)]

    def media_to_download(
        self, request: Request, info: MediaPipeline.SpiderInfo, *, item: Any = None
    ) -> None:
        return None  # always download: nothing is cached on disk

    async def media_downloaded(
        self,
        response: Response,
        request: Request,
        info: MediaPipeline.SpiderInfo,
        *,
        item: Any = None,
    ) -> dict[str, Any]:
        if response.status != 200:
            raise DownloadFailed(f"http_{response.status}")
        if request.url.startswith("data:") and not _valid_data_uri(request.url):
            raise DownloadFailed("bad_data_uri")
        body = response.body
        self.inc_stats("downloaded")
        # The bytes ride in the FileInfo only until item_completed pops them, so Scrapy's
        # per-spider result cache does not keep every image alive.
        return {
            "url": request.url,
            "path": "",
            "checksum": await sha256_hex(body),
            "status": "downloaded",
            "body": body,
        }

    def media_failed(
        self, failure: Failure, request: Request, info: MediaPipeline.SpiderInfo
    ) -> Any:
        reason = failure_reason(failure)
        logger.info("download of %s failed: %s (%s)", _short(request.url), reason, failure.value)
        raise DownloadFailed(reason)

    def item_completed(
        self, results: list[FileInfoOrError], item: Any, info: MediaPipeline.SpiderInfo
    ) -> Any:
        adapter = ItemAdapter(item)
        stats = self.crawler.stats
        assert stats is not None
        if not results:
            return _reject(adapter, stats, "no_url")
        ok, value = results[0]
        if not ok:
            error = value.value
            reason = error.reason if isinstance(error, DownloadFailed) else failure_reason(value)
            return _reject(adapter, stats, reason)
        body = value.pop("body", None)
        if body is None:
            # The same URL already went through this crawl (its bytes were handed on once).
            return _reject(adapter, stats, "repeated_url")
        adapter["body"] = body
        adapter["bytes"] = len(body)
        adapter["sha256"] = value["checksum"]
        stats.inc_value("download/ok")
        return item


def failure_reason(failure: Failure) -> str:
    """Map a download failure to a stable catalog reason (see DownloadPipeline)."""
    error = failure.value
    if isinstance(error, DownloadFailed):
        return error.reason
    if isinstance(error, DownloadCancelledError):
        return "too_large"  # the only cancellation Scrapy does on its own is DOWNLOAD_MAXSIZE
    if isinstance(error, DownloadTimeoutError | TxTimeoutError):
        return "timeout"
    if isinstance(error, CannotResolveHostError | DNSLookupError):
        return "dns_error"
    if isinstance(error, DownloadConnectionRefusedError):
        return "connection_refused"
    if isinstance(error, IgnoreRequest):
        # RedirectMiddleware gives up after REDIRECT_MAX_TIMES hops: a loop, in practice.
        return "too_many_redirects" if "max redirections" in str(error) else "filtered"
    return "download_failed"


def _valid_data_uri(uri: str) -> bool:
    """Whether a ``data:`` URI's base64 payload is valid base64 (Scrapy's handler decodes it
    leniently, dropping bad characters, which would hand verify a mangled image)."""
    header, _, payload = uri.partition(",")
    if not header.lower().endswith(";base64"):
        return True  # percent-encoded payloads have nothing to validate
    try:
        base64.b64decode(unquote_to_bytes(payload).translate(None, b" \t\r\n"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _reject(adapter: ItemAdapter, stats: Any, reason: str) -> Any:
    adapter["status"] = "rejected"
    adapter["reason"] = reason
    stats.inc_value(f"download/failed/{reason}")
    raise DropItem(reason)


def _short(url: str) -> str:
    return url if len(url) <= 100 else url[:97] + "..."
