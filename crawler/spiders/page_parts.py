"""What part of a web page an image belongs to: site chrome, an item card, or a detail page's
main image.

Pure functions over parsel selectors, shared by the ``gallery`` spider. No site or theme is
special-cased: the rules read the markup's own vocabulary (HTML5 sectioning elements, ARIA
landmark roles, BEM block names) and the page's repeated structure.

- Chrome (:func:`chrome_reason`): an image inside ``nav``/``aside``, the site's (not an
  article's) ``header``/``footer``, a landmark role (``banner``, ``navigation``,
  ``contentinfo``, ``complementary``), or a container whose class/id block names a site part
  (menu, cart, sidebar, breadcrumbs, social, brands, payment badges, "recently viewed"); a logo;
  an icon or sprite.
- Item cards (:func:`card_of`): the smallest element around an image that holds a link to
  another page of the site (the item's detail page) and no other image; a page *lists items*
  when at least :data:`MIN_CARDS` cards share one structure (tag and class of the card).
- A detail page's main image (:func:`detail_image_candidates`): JSON-LD ``Product`` /
  ``ImageObject`` ``image``, then ``og:image`` / ``twitter:image``, then the first linked
  original (``<a href>`` to an image file) outside chrome, then the largest ``srcset``
  candidate of the first content ``<img>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from parsel import Selector

__all__ = [
    "MIN_CARDS",
    "card_of",
    "chrome_reason",
    "detail_image_candidates",
    "element_signature",
    "is_page_link",
    "json_ld_images",
    "nearest_link_href",
]

# Fewer cards of one structure than this are not a listing (a page's two promo tiles are not).
MIN_CARDS = 3
# Images this small (declared width and height, CSS pixels) are icons, not content. 64 px is the
# largest common icon size (favicons and touch icons go to 64; thumbnails start around 100).
ICON_MAX_SIDE = 64
# How far up from an image a card may be: cards nest the image a few levels deep (Dawn: 4).
CARD_MAX_DEPTH = 8
# Most distinct pictures (main + hover, a swatch) and page links (item, vendor, compare) a card
# holds; more, and the element is a grid of cards.
CARD_MAX_IMAGES = 3
CARD_MAX_LINKS = 3

_CHROME_TAGS = frozenset({"header", "nav", "footer", "aside"})
_CHROME_ROLES = frozenset({"banner", "navigation", "contentinfo", "complementary", "menu", "menubar"})
# Words of class/id block names that name a part of the site around the content.
# ("widget" is not one: page builders such as Elementor wrap all content in "widgets".)
_CHROME_WORDS = frozenset({
    "header", "masthead", "footer", "nav", "navbar", "navigation", "menu", "megamenu", "sidebar",
    "cart", "minicart", "basket", "breadcrumb", "breadcrumbs", "logo", "brands", "badges",
    "payment", "payments", "social", "share", "sharing", "newsletter", "recently", "announcement",
    "cookie",
})
# A header or footer inside an article or the main content is that content's own (a post's
# title and featured image), not the site's: HTML-AAM maps only the others to banner/contentinfo.
_SECTION_WORDS = frozenset({"header", "masthead", "footer"})
_SECTIONING = frozenset({"article", "main", "section", "aside", "nav"})
_NOT_CONTAINERS = frozenset({"html", "body", "main"})
# "has-sidebar" or "with-header" describe the page's layout, not a part of it.
_LAYOUT_PREFIXES = frozenset({"has", "with", "no", "is", "without"})
_ICON_WORDS = frozenset({"icon", "icons", "sprite", "sprites", "favicon", "emoji", "spinner", "loader", "pixel"})
_LOGO_WORDS = frozenset({"logo", "logos"})
_WORD = re.compile(r"[a-z]+")
_NOT_PAGES = ("#", "javascript:", "mailto:", "tel:", "data:")
_JSON_LD_TYPES = frozenset({"product", "imageobject", "photograph", "visualartwork", "individualproduct"})


def nearest_link_href(element: Any) -> str | None:
    """The ``href`` of the nearest ``<a href>`` around an lxml element (``ancestor::a[@href][1]/@href``
    walked with lxml: a crawl asks it of every image, and an XPath evaluation per image cost
    the reactor more than the walk)."""
    for link in element.iterancestors("a"):
        href = link.get("href")
        if href is not None:
            return href
    return None


def _words(name: str) -> set[str]:
    return set(_WORD.findall(name.lower()))


def _block_words(value: str) -> Iterator[set[str]]:
    """The words of each class/id name's BEM block (``header__logo`` -> header), layout
    modifiers (``has-sidebar``) left out."""
    for name in value.split():
        block = name.lower().split("__", 1)[0]
        words = _WORD.findall(block)
        if words and words[0] not in _LAYOUT_PREFIXES:
            yield set(words)


def chrome_reason(img: Selector, url: str) -> str | None:
    """Why the image ``img`` (resolved URL ``url``) is site chrome, or ``None`` for content.

    Reasons (stable, used in ``gallery/skipped/<reason>`` stats): ``icon`` (``.svg``/``.ico``,
    an icon/sprite file or class, or declared at most :data:`ICON_MAX_SIDE` px both ways),
    ``logo`` (the image's own class, id, alt or file name says logo), ``container`` (inside
    ``header``/``nav``/``footer``/``aside``, a landmark role, or a container named after a
    site part such as menu, cart, sidebar, widget, brands, payment).
    """
    attrib = img.attrib
    path = PurePosixPath(urlparse(url).path.lower()) if not url.startswith("data:") else PurePosixPath("")
    file_words = _words(path.stem)
    own_class = " ".join(attrib.get(key, "") for key in ("class", "id"))
    own_words = set().union(*_block_words(own_class)) if own_class.strip() else set()
    if path.suffix in (".svg", ".ico", ".cur") or file_words & _ICON_WORDS or own_words & _ICON_WORDS:
        return "icon"
    if _declared_side(attrib.get("width")) <= ICON_MAX_SIDE and _declared_side(attrib.get("height")) <= ICON_MAX_SIDE:
        return "icon"
    if (file_words | own_words | _words(attrib.get("alt", ""))) & _LOGO_WORDS:
        return "logo"
    # The ancestors outermost first (document order), as lxml elements: the XPath
    # ``ancestor::*[not(self::html) and not(self::body) and not(self::main)]`` walked by hand.
    ancestors = [node for node in img.root.iterancestors() if node.tag not in _NOT_CONTAINERS]
    for node in reversed(ancestors):
        tag = (node.tag if isinstance(node.tag, str) else "").lower()
        if node.get("role", "").lower() in _CHROME_ROLES:
            return "container"
        names = f"{node.get('class', '')} {node.get('id', '')}"
        found = set().union(*_block_words(names)) & _CHROME_WORDS
        if tag in ("header", "footer"):
            found.add(tag)
        elif tag in _CHROME_TAGS:
            return "container"
        if found - _SECTION_WORDS:
            return "container"
        if found and not any(up.tag in _SECTIONING for up in node.iterancestors()):
            return "container"
    return None


def _declared_side(value: str | None) -> float:
    """A declared ``width``/``height`` attribute in pixels; infinity when absent or relative."""
    try:
        return float(str(value).strip().removesuffix("px"))
    except (TypeError, ValueError):
        return float("inf")


def is_page_link(href: str, page_url: str, host: str, is_image: Any) -> bool:
    """Whether ``href`` (absolute) leads to another page of the site ``host``: not an image
    file, not a fragment, script or mail link, not ``page_url`` itself (an "add to cart" link
    back to the listing)."""
    if not href or href.lower().startswith(_NOT_PAGES) or is_image(href):
        return False
    parts, here = urlparse(href), urlparse(page_url)
    if parts.scheme not in ("http", "https") or parts.hostname != host:
        return False
    return parts.path != here.path


def card_of(img: Selector, page_url: str, host: str, urljoin: Any, is_image: Any) -> tuple[Selector, str] | None:
    """The item card around ``img`` and its detail page URL, or ``None``.

    The card is the nearest ancestor (at most :data:`CARD_MAX_DEPTH` levels up, the image's own
    ``<a>`` included) that holds a link to another page of the site; the link wrapping the
    image wins, else the card's first such link. A card may show a few pictures (a second one
    on hover) and a few links (item, vendor, "compare"); an ancestor with more of either
    (:data:`CARD_MAX_IMAGES`, :data:`CARD_MAX_LINKS`) is a grid or a page, not a card.
    """
    # The ancestors nearest first, as lxml elements (``ancestor::*`` walked by hand).
    for depth, element in enumerate(img.root.iterancestors()):
        tag = element.tag if isinstance(element.tag, str) else ""
        if depth >= CARD_MAX_DEPTH or tag.lower() in ("body", "html", "main"):
            return None
        if len({_img_key(i) for i in element.iterdescendants("img")}) > CARD_MAX_IMAGES:
            return None
        hrefs = [urljoin(h.strip()) for h in (a.get("href") for a in element.iter("a")) if h is not None]
        pages = list(dict.fromkeys(h for h in hrefs if is_page_link(h, page_url, host, is_image)))
        if len(pages) > CARD_MAX_LINKS:
            return None
        if pages:
            wrapping = nearest_link_href(img.root)
            wrapping = urljoin(wrapping.strip()) if wrapping else None
            node = type(img)(root=element, type=img.type, namespaces=img.namespaces)
            return node, (wrapping if wrapping in pages else pages[0])
    return None


def _img_key(img: Any) -> str:
    # A card may show one picture twice (a second, hover rendition): count distinct sources.
    return img.get("src") or img.get("data-src") or img.get("srcset") or ""


def card_signature(node: Selector) -> tuple[str, str]:
    """The structure cards of one listing share: tag and sorted class names."""
    return element_signature(node.root)


def element_signature(element: Any) -> tuple[str, str]:
    """``card_signature`` of an lxml element."""
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag.lower(), " ".join(sorted(element.get("class", "").split()))


def json_ld_images(selector: Selector) -> list[str]:
    """The ``image`` URLs of the page's JSON-LD ``Product``/``ImageObject`` (and photo) nodes,
    in document order (``@graph`` and nested nodes included; a list, an ``ImageObject``'s
    ``url``/``contentUrl`` or a plain string)."""
    urls: list[str] = []
    for text in selector.xpath('//script[@type="application/ld+json"]/text()').getall():
        try:
            data = json.loads(text)
        except ValueError:
            continue
        for node in _nodes(data):
            types = node.get("@type")
            types = {str(t).lower() for t in (types if isinstance(types, list) else [types])}
            if not types & _JSON_LD_TYPES:
                continue
            if "imageobject" in types:
                urls.extend(_image_urls(node))
            urls.extend(_image_urls(node.get("image")))
    return urls


def _nodes(data: Any) -> Iterator[dict[str, Any]]:
    if isinstance(data, list):
        for value in data:
            yield from _nodes(value)
    elif isinstance(data, dict):
        yield data
        for key, value in data.items():
            if key != "image" and isinstance(value, dict | list):
                yield from _nodes(value)


def _image_urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [url for entry in value for url in _image_urls(entry)]
    if isinstance(value, dict):
        for key in ("contentUrl", "url"):
            if isinstance(value.get(key), str) and value[key].strip():
                return [value[key].strip()]
    return []


def detail_image_candidates(selector: Selector, urljoin: Any, img_url: Any, is_image: Any) -> list[str]:
    """A detail page's main image URLs, most trusted first, without repeats (see the module
    docstring for the order); ``[]`` when the page shows no content image."""
    found: list[str] = []
    for url in json_ld_images(selector):
        found.append(url)
        # The same file as the page itself shows it: a site mirror or a CDN may not serve the
        # JSON-LD's URL, while the page's own renditions of that file (same name, a size or
        # version suffix added: `x_800x.jpg`, `x-1024x768.jpg`) are served.
        found.extend(_renditions(selector, urljoin(url), urljoin))
    for css in ('meta[property="og:image"]::attr(content)', 'meta[property="og:image:url"]::attr(content)',
                'meta[name="twitter:image"]::attr(content)', 'meta[property="twitter:image"]::attr(content)',
                'meta[name="twitter:image:src"]::attr(content)'):
        found.extend(v.strip() for v in selector.css(css).getall() if v.strip())
    for link in selector.css("a[href]"):
        href = urljoin(link.attrib["href"].strip())
        if is_image(href) and link.css("img") and not _in_chrome(link):
            found.append(href)
            break
    for img in selector.css("img"):
        url = img_url(img)
        if url and not chrome_reason(img, urljoin(url)):
            found.append(url)
            break
    seen: set[str] = set()
    ordered = []
    for url in found:
        absolute = urljoin(url)
        if absolute.startswith(("http://", "https://")) and absolute not in seen:
            seen.add(absolute)
            ordered.append(absolute)
    return ordered


def _renditions(selector: Selector, url: str, urljoin: Any) -> list[str]:
    """The page's image URLs (``srcset`` candidates widest first, then ``src`` and links)
    whose file name extends the file name of ``url``, with the same extension."""
    target = PurePosixPath(urlparse(url).path)
    stem, suffix = target.stem.lower(), target.suffix.lower()
    if not stem:
        return []
    sized: list[tuple[float, str]] = []
    plain: list[str] = []
    for img in selector.css("img, source"):
        for name in ("srcset", "data-srcset"):
            for part in img.attrib.get(name, "").split(","):
                bits = part.split()
                if bits:
                    width = bits[1][:-1] if len(bits) > 1 and bits[1].endswith("w") else "0"
                    sized.append((float(width) if width.replace(".", "", 1).isdigit() else 0.0, bits[0]))
        for name in ("src", "data-src"):
            if img.attrib.get(name):
                plain.append(img.attrib[name].strip())
    plain.extend(a.strip() for a in selector.css("a::attr(href)").getall())
    found = []
    for candidate in [u for _, u in sorted(sized, key=lambda c: -c[0])] + plain:
        path = PurePosixPath(urlparse(urljoin(candidate)).path)
        if path.suffix.lower() == suffix and path.stem.lower().startswith(stem) and path != target:
            found.append(candidate)
    return found


def _in_chrome(node: Selector) -> bool:
    img = node.css("img")
    return bool(img) and chrome_reason(img[0], "") is not None
