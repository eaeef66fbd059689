"""mkdocs hook: the docs' TeX becomes MathML when the site is built.

Browsers render MathML natively, so formulas show offline, with no script and
no CDN. ``pymdownx.arithmatex`` (generic mode) wraps each formula as
``<span class="arithmatex">\\(…\\)</span>`` or ``<div class="arithmatex">\\[…\\]</div>``;
``latex2mathml`` converts it. A formula it cannot convert fails the build,
naming the page and the formula.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_FORMULA = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)
_UNCONVERTED = re.compile(r">(\\[^<]*)<")  # a TeX command left as an element's text


def _to_mathml(match: re.Match, page: str) -> str:
    tag, body = match.groups()
    tex = html.unescape(body).strip()[2:-2]  # drop \( \) or \[ \]
    try:
        mathml = convert(tex, display="block" if tag == "div" else "inline")
    except Exception as error:  # latex2mathml raises many kinds
        raise ValueError(f"{page}: cannot render {tex!r} as MathML ({error})") from error
    left = _UNCONVERTED.search(mathml)
    if left:  # e.g. \Big\{ comes out as the text "\{": write \left\{ … \right\}
        raise ValueError(f"{page}: {tex!r} left {left.group(1)!r} unconverted in its MathML")
    return mathml


def on_page_content(html_text: str, page, **_) -> str:
    return _FORMULA.sub(lambda match: _to_mathml(match, page.file.src_uri), html_text)
