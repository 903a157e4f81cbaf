"""Drive a rendered page until it shows no new image: scroll, reveal lazy images, press
"load more", follow script-driven "next" pages.

One round (at most ``max_scrolls`` of them, all within ``timeout`` seconds):

1. Reveal: jump through the page so that every image-bearing element not yet on screen passes
   through the viewport (IntersectionObserver lazy loaders then set their ``src``/``srcset``),
   then scroll to the bottom (infinite scroll).
2. Press the page's "load more"/"show more" control when it has one (:data:`FIND_CONTROL`).
3. Wait up to ``pause`` seconds (longer while the page's own XHR/fetch requests are in flight)
   for an image URL the page did not show before.
4. Nothing new: press the script-driven "next" page control (no usable ``href``: a link with
   one is a page the spider requests itself), keeping the HTML of the page it leaves, and wait
   again. Nothing new after ``idle_rounds`` rounds in a row ends the loop.

Image URLs are read from the DOM (``currentSrc``, ``src``, ``srcset``, ``data-*`` attributes,
links to image files); the browser never downloads an image (the render middleware answers its
image requests with a placeholder), so only the URLs matter. This module imports Playwright:
only the render middleware loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from playwright.async_api import Error as PlaywrightError

from crawler.render.state import RenderOptions, RenderOutcome

logger = logging.getLogger(__name__)

__all__ = ["FIND_CONTROL", "MORE_PHRASES", "NEXT_WORDS", "expand_page"]

# "Load more" wordings, matched at the start of a control's text, aria-label, title or value
# (lower case, whitespace collapsed). The big galleries, shops and search engines of each language.
MORE_PHRASES = (
    # en
    "load more", "show more", "see more", "view more", "more results", "more photos", "more images",
    "more pictures", "more items", "more products", "more posts", "load next", "show all",
    "see all", "view all", "load additional", "show additional", "display more",
    # de
    "mehr laden", "mehr anzeigen", "mehr zeigen", "mehr ergebnisse", "weitere laden",
    "weitere anzeigen", "weitere ergebnisse", "weitere bilder", "weitere fotos", "alle anzeigen",
    # fr
    "charger plus", "afficher plus", "voir plus", "plus de résultats", "plus de photos",
    "charger la suite", "voir la suite", "afficher la suite", "tout afficher", "voir tout",
    # es
    "cargar más", "mostrar más", "ver más", "más resultados", "cargar mas", "mostrar mas", "ver mas",
    # it
    "carica altri", "carica altro", "mostra altri", "mostra altro", "mostra di più", "vedi altri",
    "vedi altro", "vedi di più", "altri risultati", "carica di più",
    # pt
    "carregar mais", "mostrar mais", "ver mais", "mais resultados", "exibir mais",
    # nl
    "meer laden", "toon meer", "meer tonen", "bekijk meer", "meer resultaten", "laad meer",
    # sv, da, no, fi, pl, cs, tr, ru, uk, ja, zh, ko
    "visa fler", "visa mer", "ladda fler", "vis flere", "vis mere", "indlæs flere", "last inn flere",
    "näytä lisää", "lataa lisää", "pokaż więcej", "załaduj więcej", "wczytaj więcej",
    "načíst další", "zobrazit více", "zobrazit další", "daha fazla", "показать ещё", "показать еще",
    "загрузить ещё", "загрузить еще", "показати ще", "もっと見る", "さらに表示", "もっと読み込む",
    "加载更多", "查看更多", "显示更多", "載入更多", "顯示更多", "더보기", "더 보기",
)
# "More" alone: a control saying only this counts when it sits right after the repeated items
# (elsewhere it is usually a menu).
MORE_WORDS = ("more", "mehr", "plus", "más", "mas", "mais", "altri", "meer", "fler", "więcej", "ещё", "еще")
# "Next page" wordings, matched as the whole text (arrows and punctuation stripped) or at the
# start of an aria-label/title.
NEXT_WORDS = (
    "next", "next page", "next results", "older", "older posts", "weiter", "nächste",
    "nächste seite", "vor", "suivant", "suivante", "page suivante", "siguiente", "página siguiente",
    "successivo", "successiva", "pagina successiva", "avanti", "próximo", "próxima", "seguinte",
    "volgende", "volgende pagina", "nästa", "næste", "neste", "seuraava", "następna", "następny",
    "další", "sonraki", "следующая", "далее", "次へ", "次のページ", "下一页", "下一頁", "다음",
)
# Class/id names of such controls (often English even on other-language sites).
MORE_NAMES = r"load[-_ ]?more|show[-_ ]?more|more[-_ ]?(results|items|posts|products|photos|images)|loadmore|showmore"
NEXT_NAMES = r"(^|[-_ ])next([-_ ]|$)|pagination[-_]*next|page[-_]?next"

# In the page: the control of `kind` ("more" or "next") to press, or null. `selector` (the
# user's more_selector) wins; otherwise candidates are clickable elements (by role) without a
# usable href, scored by wording (text, aria-label, title, value; class/id names), and, for
# "more", by position: right after the element that holds the most repeated image items.
FIND_CONTROL = r"""
([kind, selector, phrases, words, nextWords, moreNames, nextNames]) => {
  const shown = (el) => {
    if (el.disabled || el.getAttribute("aria-disabled") === "true") return false;
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && style.visibility !== "hidden" && style.display !== "none";
  };
  if (selector) {
    for (const el of document.querySelectorAll(selector)) if (shown(el)) return el;
    return null;
  }
  const here = location.href.split("#")[0];
  const usableHref = (el) => {
    const href = (el.getAttribute("href") || "").trim();
    if (el.tagName !== "A" || !href || href.startsWith("#") || /^javascript:/i.test(href)) return false;
    try { return new URL(href, location.href).href.split("#")[0] !== here; } catch (e) { return true; }
  };
  const clean = (text) => (text || "").normalize("NFKC").toLowerCase().replace(/\s+/g, " ")
    .replace(/[\s.…:()\[\]\d+›»>→↓⌄▾▼❯→…-]+$/u, "").replace(/^[\s‹«<←❮+↓-]+/u, "").trim();
  const texts = (el) => [el.innerText, el.getAttribute("aria-label"), el.getAttribute("title"),
                         el.getAttribute("value")].map(clean).filter(Boolean);
  const startsWithAny = (text, list) => list.some((p) => text === p || text.startsWith(p + " ")
    || (/[^\x00-\x7f]/.test(p) && text.startsWith(p)));
  const clickable = "button, [role=button], [role=link], a, input[type=button], [onclick], [data-action]";
  const candidates = [...document.querySelectorAll(clickable)].filter((el) =>
    !usableHref(el) && shown(el) && !el.closest("select")
    // A form's submit button sends the form: another page, not more of this one.
    && !(el.tagName === "BUTTON" && el.type === "submit" && el.form));
  // The element with the most direct children holding an image: the repeated items' holder.
  let grid = null, most = 0;
  const checked = new Set();
  for (const img of document.querySelectorAll("img, picture, [data-src], [data-bg]")) {
    for (let node = img.parentElement, depth = 0; node && depth < 6; node = node.parentElement, depth++) {
      if (checked.has(node)) continue;
      checked.add(node);
      const count = node.childElementCount;
      const items = ":scope > * img, :scope > img, :scope > * [data-src], :scope > [data-src]";
      if (count > most && node.querySelectorAll(items).length >= Math.min(count, 3)) {
        most = count; grid = node;
      }
    }
  }
  const afterGrid = (el) => grid && !grid.contains(el) && !el.contains(grid)
    && (grid.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING);
  const name = (el) => `${el.id} ${typeof el.className === "string" ? el.className : el.getAttribute("class")}`;
  let best = null, bestScore = 0;
  for (const el of candidates) {
    const said = texts(el);
    let score = 0;
    if (kind === "more") {
      if (said.some((t) => startsWithAny(t, phrases)) || new RegExp(moreNames, "i").test(name(el))) score = 3;
      else if (said.some((t) => words.includes(t)) && afterGrid(el)) score = 2;
      if (score && afterGrid(el)) score += 1;
      if (score && el.closest("header, nav, [role=navigation], footer")) score -= 2;
    } else {
      const rel = (el.getAttribute("rel") || "").split(/\s+/).includes("next");
      const label = [el.getAttribute("aria-label"), el.getAttribute("title")].map(clean).filter(Boolean);
      const arrowOnly = /^\s*[›»>→❯]+\s*$/.test(el.innerText || "");
      if (rel || said.some((t) => nextWords.includes(t)) || label.some((t) => startsWithAny(t, nextWords))
          || new RegExp(nextNames, "i").test(name(el))
          || (arrowOnly && el.closest("nav, [class*=pag], [role=navigation]"))) score = 3;
    }
    if (score > bestScore) { best = el; bestScore = score; }
  }
  if (best || kind !== "next") return best;
  // Numbered pages without a "next": the number after the current one.
  const current = document.querySelector(
    "[aria-current=page], [aria-current=true], .pagination .active, .pagination .current, "
    + "[class*=pag] .active, [class*=pag] .current, [class*=pag] [aria-selected=true]");
  const numberOf = (el) => parseInt((el.innerText || "").trim(), 10);
  const number = current && numberOf(current);
  if (!number) return null;
  const holder = current.closest("nav, ul, ol, [class*=pag]") || current.parentElement;
  for (const el of holder.querySelectorAll(clickable)) {
    if (numberOf(el) === number + 1 && !usableHref(el) && shown(el)) return el;
  }
  return null;
}
"""

# In the page: every image-bearing element not seen yet passes through the viewport (jumping a
# screenful at a time, two animation frames per jump so IntersectionObserver callbacks run),
# then the page is scrolled to the bottom. Returns the number of jumps.
REVEAL_SCRIPT = r"""
async ([budgetMs]) => {
  const key = Symbol.for("imageclf.revealed");
  const seen = window[key] || (window[key] = new WeakSet());
  const deadline = Date.now() + budgetMs;
  const frame = () => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  const lazy = "img, picture, video[poster], iframe[loading=lazy], [data-src], [data-srcset], [data-bg], "
    + "[data-background], [data-original], [data-lazy], [data-lazy-src]";
  let jumps = 0;
  while (Date.now() < deadline) {
    const next = [...document.querySelectorAll(lazy)].find((el) => !seen.has(el) && el.getClientRects().length);
    if (!next) break;
    next.scrollIntoView({block: "start", inline: "nearest"});
    jumps += 1;
    await frame();
    const height = window.innerHeight, width = window.innerWidth;
    for (const el of document.querySelectorAll(lazy)) {
      if (seen.has(el)) continue;
      const box = el.getBoundingClientRect();
      if (box.bottom >= 0 && box.top <= height && box.right >= 0 && box.left <= width) seen.add(el);
    }
    seen.add(next);  // one in a hidden overflow box never reaches the viewport: do not retry it
  }
  const root = document.scrollingElement || document.documentElement;
  window.scrollTo(0, root.scrollHeight);
  await frame();
  return jumps;
}
"""

# In the page: the image URLs it shows (for "anything new?" only; the spider extracts from the
# HTML with its own rules).
IMAGE_KEYS_SCRIPT = r"""
() => {
  const keys = new Set();
  const add = (value) => {
    if (!value || value.startsWith("data:")) return;
    try { keys.add(new URL(value, document.baseURI).href); } catch (e) { keys.add(value); }
  };
  const addSet = (srcset) => (srcset || "").split(/,\s+/).forEach((c) => add(c.trim().split(/\s+/)[0]));
  for (const img of document.images) {
    add(img.currentSrc || img.src);
    for (const attr of img.attributes) {
      if (attr.name.endsWith("srcset")) addSet(attr.value);
      else if (attr.name.startsWith("data-") && /[/.]/.test(attr.value)) add(attr.value);
    }
  }
  for (const source of document.querySelectorAll("source")) {
    addSet(source.getAttribute("srcset") || source.getAttribute("data-srcset"));
  }
  for (const el of document.querySelectorAll("[data-src], [data-bg], [data-background]")) {
    add(el.getAttribute("data-src") || el.getAttribute("data-bg") || el.getAttribute("data-background"));
  }
  for (const link of document.querySelectorAll("a[href]")) {
    if (/\.(jpe?g|png|gif|webp|avif|bmp|tiff?)([?#]|$)/i.test(link.href)) add(link.href);
  }
  return [...keys];
}
"""


async def expand_page(page: Any, options: RenderOptions, outcome: RenderOutcome, busy: Callable[[], int]) -> None:
    """Run the rounds of the module docstring on a Playwright ``page``, filling ``outcome``.

    ``busy()`` is the number of the page's XHR/fetch requests in flight. Playwright errors (a
    page that navigates away, a control that vanished) end the loop with what was found.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout
    seen: set[str] = set(await page.evaluate(IMAGE_KEYS_SCRIPT))
    idle = 0
    try:
        while outcome.scrolls < options.max_scrolls and idle < options.idle_rounds:
            budget = deadline - loop.time()
            if budget <= 0:
                break
            jumps = await page.evaluate(REVEAL_SCRIPT, [int(budget * 1000)])
            outcome.scrolls += 1
            pressed = await _press(page, "more", options)
            before = len(seen)
            if await _new_images(page, seen, options, deadline, busy):
                outcome.clicks += pressed
                idle = 0
                logger.debug("round %d: %d jumps, %s: +%d image URLs (%.1f s left)", outcome.scrolls, jumps,
                             "'load more' pressed" if pressed else "scrolled", len(seen) - before,
                             deadline - loop.time())
                continue
            url = page.url
            snapshot = await page.content()
            if await _press(page, "next", options) and await _new_images(page, seen, options, deadline, busy):
                logger.debug("round %d: 'next' pressed: +%d image URLs (%.1f s left)", outcome.scrolls,
                             len(seen) - before, deadline - loop.time())
                outcome.snapshots.append(snapshot)
                outcome.pages += 1
                idle = 0
                if page.url.split("#")[0] != url.split("#")[0]:
                    outcome.stopped = "navigated"
                    logger.info("a 'next' control loaded another document (%s): rendering stops there", page.url)
                    break
                continue
            idle += 1
            logger.debug("round %d: nothing new (%.1f s left)", outcome.scrolls, deadline - loop.time())
        if outcome.stopped != "navigated" and idle < options.idle_rounds:
            outcome.timed_out = loop.time() >= deadline
            if outcome.timed_out or idle == 0:  # the last round still found images
                outcome.stopped = "scroll_timeout" if outcome.timed_out else "max_scrolls"
    except PlaywrightError as exc:  # keep what the page showed
        outcome.stopped = "page error"
        logger.warning("rendering stopped early on %s: %s", page.url, str(exc).splitlines()[0])
    try:
        seen |= set(await page.evaluate(IMAGE_KEYS_SCRIPT))
    except PlaywrightError:
        pass
    outcome.images = len(seen)
    outcome.shown_urls = seen


async def _press(page: Any, kind: str, options: RenderOptions) -> int:
    """Click the page's ``kind`` control; 1 when one was clicked, else 0."""
    selector = options.more_selector if kind == "more" else None
    handle = await page.evaluate_handle(
        FIND_CONTROL, [kind, selector, list(MORE_PHRASES), list(MORE_WORDS), list(NEXT_WORDS), MORE_NAMES, NEXT_NAMES]
    )
    element = handle.as_element()
    if element is None:
        await handle.dispose()
        return 0
    try:
        # A real click (pointer events, scrolled into view); a banner over it gets a DOM click.
        await element.click(timeout=2000)
    except PlaywrightError:
        await element.evaluate("(el) => el.click()")
    finally:
        await element.dispose()
    return 1


async def _new_images(
    page: Any, seen: set[str], options: RenderOptions, deadline: float, busy: Callable[[], int]
) -> bool:
    """Wait until the page shows an image URL not in ``seen`` (added to it); False on time-out."""
    loop = asyncio.get_running_loop()
    quiet_until = min(loop.time() + options.pause, deadline)
    busy_until = min(loop.time() + options.pause * options.busy_factor, deadline)
    while True:
        keys = set(await page.evaluate(IMAGE_KEYS_SCRIPT))
        if keys - seen:
            seen |= keys
            return True
        now = loop.time()
        if now >= busy_until or (now >= quiet_until and not busy()):
            return False
        await asyncio.sleep(0.1)
