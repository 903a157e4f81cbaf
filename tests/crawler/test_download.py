"""Download: bytes kept in memory, failures turned into recorded rejections."""

from __future__ import annotations

import hashlib

import pytest
from crawler_testkit import make_item, run
from scrapy.exceptions import DownloadCancelledError, DropItem, IgnoreRequest
from scrapy.http import Request, Response
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as TxTimeoutError
from twisted.python.failure import Failure

from crawler.pipelines.download import DownloadFailed, DownloadPipeline


@pytest.fixture
def pipeline(make_crawler, build):
    pipe = build(DownloadPipeline, make_crawler())
    pipe.crawler.spider = object()
    pipe.open_spider()
    return pipe


def test_media_request_is_the_item_url(pipeline) -> None:
    (request,) = pipeline.get_media_requests(make_item(url="data:image/gif;base64,R0lG"), pipeline.spiderinfo)
    assert request.url.startswith("data:image/gif")
    assert pipeline.media_to_download(request, pipeline.spiderinfo) is None  # never cached on disk


def test_ok_response_body_goes_to_the_item_and_not_to_disk(pipeline, dataset_dir) -> None:
    request = Request("http://127.0.0.1/a.jpg")
    info = run(pipeline.media_downloaded(Response(request.url, body=b"bytes", request=request), request, pipeline.spiderinfo))
    item = pipeline.item_completed([(True, info)], make_item(), pipeline.spiderinfo)
    assert item["body"] == b"bytes" and item["bytes"] == 5
    assert item["sha256"] == hashlib.sha256(b"bytes").hexdigest()
    assert "body" not in info  # the media cache no longer holds the bytes
    assert not dataset_dir.exists()
    with pytest.raises(DropItem, match="repeated_url"):  # the same cached result again
        pipeline.item_completed([(True, info)], make_item(), pipeline.spiderinfo)


@pytest.mark.parametrize("status", [404, 403, 500])
def test_http_errors_are_rejections(pipeline, status: int) -> None:
    request = Request("http://127.0.0.1/a.jpg")
    with pytest.raises(DownloadFailed) as caught:
        run(pipeline.media_downloaded(Response(request.url, status=status, request=request), request, pipeline.spiderinfo))
    item = make_item()
    with pytest.raises(DropItem, match=f"http_{status}"):
        pipeline.item_completed([(False, Failure(caught.value))], item, pipeline.spiderinfo)
    assert (item["status"], item["reason"]) == ("rejected", f"http_{status}")
    assert pipeline.crawler.stats.get_value(f"download/failed/http_{status}") == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DownloadCancelledError("Cancelling download: expected size larger than maxsize"), "too_large"),
        (DNSLookupError("no such host"), "dns_error"),
        (TxTimeoutError("took too long"), "timeout"),
        (IgnoreRequest("Forbidden by robots.txt"), "filtered"),
        (ValueError("bad base64"), "download_failed"),
    ],
)
def test_transport_failures_are_rejections(pipeline, error: Exception, reason: str) -> None:
    request = Request("http://127.0.0.1/a.jpg")
    with pytest.raises(DownloadFailed) as caught:
        pipeline.media_failed(Failure(error), request, pipeline.spiderinfo)
    assert caught.value.reason == reason
    item = make_item()
    with pytest.raises(DropItem, match=reason):
        pipeline.item_completed([(False, Failure(caught.value))], item, pipeline.spiderinfo)
    assert item["reason"] == reason


def test_item_without_url_is_rejected(pipeline) -> None:
    with pytest.raises(DropItem, match="no_url"):
        pipeline.item_completed([], make_item(url=None), pipeline.spiderinfo)
