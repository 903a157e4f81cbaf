"""`python -m crawler.review`: decisions persist, apply atomically, restore; the page in Chromium."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from crawler_testkit import encode, picture
from uvicorn_thread import live_server, request

from crawler.catalog import Catalog
from crawler.dataset import check
from crawler.review import (
    JOURNAL_NAME,
    apply_decisions,
    create_app,
    decide,
    load_scores,
    main,
    recover,
    restore,
)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def build_dataset(root: Path, per_label: int = 6) -> dict[str, list[str]]:
    """Labels ``cats`` and ``dogs`` of stored images plus a scores file; paths by label, highest
    loss first (loss of image i is ``per_label - i``)."""
    paths: dict[str, list[str]] = {"cats": [], "dogs": []}
    rows = []
    with Catalog(root) as catalog:
        for offset, label in enumerate(paths):
            for i in range(per_label):
                data = encode(picture(100 * offset + i, size=(48, 48)), "PNG")
                sha = hashlib.sha256(data).hexdigest()
                path = f"{label}/{sha}.png"
                (root / label).mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
                catalog.insert({"label": label, "status": "stored", "path": path, "sha256": sha, "width": 48, "height": 48})
                paths[label].append(path)
                other = "dogs" if label == "cats" else "cats"
                rows.append({"path": path, "label": label, "predicted": other, "probability": 0.5, "loss": per_label - i})
        catalog.insert({"label": "cats", "status": "rejected", "reason": "http_404"})
    with (root / "scores.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "predicted", "probability", "loss"])
        writer.writeheader()
        writer.writerows(rows)
    return paths


def row_of(root: Path, sha: str):
    with Catalog(root) as catalog:
        return dict(catalog.rows("sha256 = ?", (sha,))[0])


def sha_of(path: str) -> str:
    return Path(path).stem


def test_decisions_apply_and_restore(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    paths = build_dataset(root)
    with Catalog(root) as catalog:
        ids = {r["path"]: r["id"] for r in catalog.rows("status = 'stored'")}
        decide(catalog, ids[paths["cats"][0]], "delete")
        decide(catalog, ids[paths["cats"][1]], "move", "dogs")
        decide(catalog, ids[paths["cats"][2]], "move", "  bir/ds ")  # a new label, sanitised
        decide(catalog, ids[paths["cats"][3]], "keep")
        decide(catalog, ids[paths["dogs"][0]], "delete")
        decide(catalog, ids[paths["dogs"][0]], None)  # changed their mind
        with pytest.raises(ValueError, match="action"):
            decide(catalog, ids[paths["dogs"][1]], "burn")
    result = apply_decisions(root)
    assert (result["deleted"], result["moved"], result["kept"], result["conflicts"]) == (1, 2, 1, [])

    deleted, moved, new = paths["cats"][0], paths["cats"][1], paths["cats"][2]
    assert not (root / deleted).exists() and (root / ".trash" / deleted).is_file()
    assert (root / "dogs" / Path(moved).name).is_file() and not (root / moved).exists()
    assert (root / "bir_ds" / Path(new).name).is_file()
    assert row_of(root, sha_of(deleted))["status"] == "rejected" and row_of(root, sha_of(deleted))["reason"] == "review_delete"
    assert row_of(root, sha_of(moved))["label"] == "dogs" and row_of(root, sha_of(moved))["path"] == f"dogs/{Path(moved).name}"
    assert row_of(root, sha_of(new))["label"] == "bir_ds"
    assert (root / paths["dogs"][0]).is_file()
    assert check(root)[0] == []
    assert "review_delete" in (root / "catalog.csv").read_text()
    assert apply_decisions(root)["deleted"] == 0  # nothing pending any more

    assert main(["restore", str(root)]) == 0
    assert (root / deleted).is_file() and not (root / ".trash" / deleted).exists()
    assert row_of(root, sha_of(deleted))["status"] == "stored" and row_of(root, sha_of(deleted))["path"] == deleted
    assert check(root)[0] == []
    assert restore(root) == []


def test_a_failed_apply_leaves_everything_as_it_was(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    paths = build_dataset(root)
    with Catalog(root) as catalog:
        ids = {r["path"]: r["id"] for r in catalog.rows("status = 'stored'")}
        decide(catalog, ids[paths["cats"][0]], "delete")
        decide(catalog, ids[paths["cats"][1]], "move", "dogs")
    (root / paths["cats"][1]).unlink()  # the second rename will fail
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    with pytest.raises(FileNotFoundError):
        apply_decisions(root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == before
    assert row_of(root, sha_of(paths["cats"][0]))["status"] == "stored"
    assert not (root / JOURNAL_NAME).exists()


def test_an_interrupted_apply_is_recovered(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    paths = build_dataset(root)
    victim = paths["cats"][0]
    with Catalog(root) as catalog:
        image_id = catalog.find_stored_path(victim)["id"]
    # What a process killed between its renames and its commit leaves behind.
    step = {"image_id": image_id, "src": victim, "dst": f".trash/{victim}", "status": "rejected", "reason": "review_delete",
            "label": "cats", "path": None}
    (root / JOURNAL_NAME).write_text(json.dumps({"steps": [step]}))
    (root / ".trash" / "cats").mkdir(parents=True)
    (root / victim).rename(root / ".trash" / victim)
    assert check(root)[0]  # inconsistent until recovered
    with Catalog(root) as catalog:
        assert recover(root, catalog) == 1
    assert (root / victim).is_file() and not (root / JOURNAL_NAME).exists()
    assert check(root)[0] == []


def test_scores_are_matched_by_path_or_content_id(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    paths = build_dataset(root)
    scores = load_scores(root / "scores.csv")
    assert scores[paths["cats"][0]].loss == 6.0
    assert scores[sha_of(paths["dogs"][5])].loss == 1.0
    (root / "bad.csv").write_text("file,score\nx,1\n")
    assert main([str(root), "--scores", str(root / "bad.csv")]) == 2
    assert main([str(tmp_path), "--scores", str(root / "scores.csv")]) == 2  # no catalog


def card(page, path: str):
    return page.locator(f'.card[data-path="{path}"]')


def test_review_page_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    root = tmp_path / "dataset"
    paths = build_dataset(root, per_label=5)
    app = create_app(root, load_scores(root / "scores.csv"), per_page=4)
    with live_server(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.set_default_timeout(20_000)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(url)
        expect(page.locator("#title")).to_contain_text("cats: 5 images")
        # Highest loss first, 4 a page.
        expect(page.locator(".card")).to_have_count(4)
        assert page.locator(".card").first.get_attribute("data-path") == paths["cats"][0]
        card(page, paths["cats"][0]).locator("button.delete").click()
        expect(card(page, paths["cats"][0])).to_have_class("card delete")
        card(page, paths["cats"][1]).locator("select.move").select_option("dogs")
        expect(card(page, paths["cats"][1]).locator(".decision")).to_have_text("move to dogs")
        card(page, paths["cats"][2]).locator("button.keep").click()
        expect(card(page, paths["cats"][2])).to_have_class("card keep")
        page.click("#next")
        expect(page.locator(".card")).to_have_count(1)
        card(page, paths["cats"][4]).locator("button.delete").click()
        expect(page.locator("#pending")).to_have_text("4 pending")

        page.click('nav button[data-label="dogs"]')
        expect(page.locator("#title")).to_contain_text("dogs: 5 images")
        card(page, paths["dogs"][0]).locator("button.delete").click()
        expect(page.locator("#pending")).to_have_text("5 pending")

        page.reload()  # marks come back from the catalog, and so does the class and page
        expect(page.locator("#title")).to_contain_text("dogs")
        expect(card(page, paths["dogs"][0])).to_have_class("card delete")
        page.click('nav button[data-label="cats"]')
        expect(card(page, paths["cats"][0])).to_have_class("card delete")
        expect(card(page, paths["cats"][1])).to_have_class("card move")
        expect(card(page, paths["cats"][2])).to_have_class("card keep")
        page.wait_for_function("[...document.images].every((img) => img.complete && img.naturalWidth > 0)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "review.png"))

        page.click("#apply")
        expect(page.locator("#status")).to_have_text("Applied: 3 deleted, 1 moved, 1 kept.")
        expect(page.locator("#pending")).to_have_text("0 pending")
        expect(page.locator("#title")).to_contain_text("cats: 2 images")
        browser.close()

    for path in (paths["cats"][0], paths["cats"][4], paths["dogs"][0]):
        assert (root / ".trash" / path).is_file() and not (root / path).exists()
        assert row_of(root, sha_of(path))["status"] == "rejected"
    moved = f"dogs/{Path(paths['cats'][1]).name}"
    assert (root / moved).is_file() and row_of(root, sha_of(moved))["path"] == moved
    with Catalog(root) as catalog:
        assert catalog.summary()["cats"]["stored"] == 2 and catalog.summary()["dogs"]["stored"] == 5
    assert check(root)[0] == []
    assert main(["restore", str(root), paths["dogs"][0]]) == 0
    assert (root / paths["dogs"][0]).is_file() and check(root)[0] == []


def test_help_lists_both_commands_and_the_short_form_still_works(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "crawler.review", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "restore" in result.stdout and "serve" in result.stdout
    root = tmp_path / "dataset"
    build_dataset(root)
    # `python -m crawler.review DATASET --scores ...` is `serve`: a bad scores file is reported
    # by serve before it starts listening.
    (root / "bad.csv").write_text("file,score\nx,1\n")
    assert main([str(root), "--scores", str(root / "bad.csv")]) == 2
    assert main(["serve", str(root), "--scores", str(root / "bad.csv")]) == 2


def test_only_the_review_page_itself_can_change_the_dataset(tmp_path: Path) -> None:
    import re

    root = tmp_path / "dataset"
    paths = build_dataset(root)
    with Catalog(root) as catalog:
        image_id = catalog.find_stored_path(paths["cats"][0])["id"]
    with live_server(create_app(root, load_scores(root / "scores.csv"))) as url:
        status, page = request(url)
        assert status == 200 and "loading..." in page
        token = re.search(r'name="review-token" content="([^"]+)"', page).group(1)
        own_origin = url.rstrip("/")
        body = json.dumps({"action": "delete"}).encode()
        as_json = {"Content-Type": "application/json"}
        decision = f"{url}api/decisions/{image_id}"

        # What another web page open in the same browser can send: its own Origin, no token.
        foreign = {**as_json, "Origin": "http://evil.example"}
        assert request(decision, "PUT", foreign, body)[0] == 403
        assert request(decision, "PUT", {**foreign, "X-Review-Token": token}, body)[0] == 403
        assert request(f"{url}api/apply", "POST", {"Origin": "http://evil.example"}, b"")[0] == 403
        assert request(decision, "DELETE", {"Origin": "null"})[0] == 403
        # A DNS-rebinding page: the right origin for its name, but the name is not this server.
        rebound = {**as_json, "Host": "evil.example:80", "Origin": "http://evil.example:80", "X-Review-Token": token}
        assert request(decision, "PUT", rebound, body)[0] == 403
        # The page's own origin without the token, or with a wrong one.
        assert request(decision, "PUT", {**as_json, "Origin": own_origin}, body)[0] == 403
        assert request(decision, "PUT", {**as_json, "Origin": own_origin, "X-Review-Token": "x" * 43}, body)[0] == 403
        with Catalog(root) as catalog:
            assert catalog.rows("id IN (SELECT image_id FROM review)") == []
        assert (root / paths["cats"][0]).is_file()

        # The page itself: same origin and its token.
        status, answer = request(decision, "PUT", {**as_json, "Origin": own_origin, "X-Review-Token": token}, body)
        assert status == 200 and json.loads(answer)["decision"]["action"] == "delete"
        status, answer = request(f"{url}api/apply", "POST", {"Origin": own_origin, "X-Review-Token": token}, b"")
        assert status == 200 and json.loads(answer)["deleted"] == 1
    assert (root / ".trash" / paths["cats"][0]).is_file()
    with live_server(create_app(root, load_scores(root / "scores.csv"))) as url:
        # A new session has a new token: the old one no longer works.
        assert request(f"{url}api/apply", "POST", {"X-Review-Token": token}, b"")[0] == 403


def test_review_page_says_loading_until_its_images_arrive(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    root = tmp_path / "dataset"
    build_dataset(root, per_label=3)
    app = create_app(root, load_scores(root / "scores.csv"))
    held = []
    with live_server(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.route("**/image/*", lambda route: held.append(route))  # hold every image request
        page.goto(url)
        expect(page.locator(".card")).to_have_count(3)
        page.wait_for_function("document.querySelectorAll('img').length === 3")
        expect(page.locator("#loading")).to_be_visible()
        expect(page.locator("#loading")).to_have_text("loading...")
        page.wait_for_timeout(300)
        expect(page.locator("#loading")).to_be_visible()  # still: no image has arrived
        assert len(held) == 3
        for route in held:
            route.continue_()
        expect(page.locator("#loading")).to_be_hidden()
        browser.close()
