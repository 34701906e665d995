"""Cleaning: markup stripping, Unicode normalisation, control characters, whitespace, filters.

`clean_text` turns a raw document into the text that is kept; `drop_reason` says which filter
(if any) removes it. Both are pure functions of the text and the CleanConfig.
"""
from __future__ import annotations

import html
import itertools
import re
import unicodedata

from mlm.config import CleanConfig


def _control_class() -> str:
    """A regex class of control (Cc) and invisible format (Cf) characters, except \\t and \\n."""
    ranges: list[tuple[int, int]] = []
    for cp in itertools.chain(range(0x20000), range(0xE0000, 0xE0080)):  # where Cc/Cf live
        if cp in (9, 10) or unicodedata.category(chr(cp)) not in ("Cc", "Cf"):
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)


_CONTROL = re.compile(f"[{_control_class()}]")
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_BLANK_LINES = re.compile(r"\n{3,}")

# Markdown
_MD_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_MD_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_MD_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]+\S+.*$", re.M)
_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_MD_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$", re.M)
_MD_QUOTE = re.compile(r"^ {0,3}>\s?", re.M)
_MD_LIST = re.compile(r"^([ \t]*)(?:[-*+]|\d+[.)])[ \t]+", re.M)
_MD_RULE = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.M)
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
_MD_CODE = re.compile(r"`+([^`]+)`+")
_MD_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.M)
_MD_TABLE_PIPE = re.compile(r"\s*\|\s*")

# reStructuredText
_RST_DIRECTIVE = re.compile(r"^\.\. .*(?:\n(?:[ \t]+.*|[ \t]*)(?=\n))*", re.M)
_RST_ADORNMENT = re.compile(r"^([=\-~`:'\"^_*+#<>.])\1{2,}[ \t]*$", re.M)
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")
_RST_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_INTERPRETED = re.compile(r"`([^`]+)`_{0,2}")
_RST_EMPHASIS = re.compile(r"(\*\*|\*)(?=\S)(.+?)(?<=\S)\1")
_RST_DOUBLE_COLON = re.compile(r"::[ \t]*$", re.M)

# HTML
_HTML_DROP = re.compile(r"<(script|style|head|noscript|template)\b.*?</\1\s*>", re.S | re.I)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BLOCK = re.compile(r"</?(p|div|br|li|ul|ol|h[1-6]|tr|table|section|article|header|footer|"
                         r"blockquote|pre|hr)\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]+>")


def strip_markdown(text: str) -> str:
    """Plain text of a Markdown document (code blocks, link targets and markers removed)."""
    text = _MD_FRONT_MATTER.sub("", text)
    text = _MD_FENCE.sub("", text)
    text = _MD_LINK_DEF.sub("", text)
    text = strip_html(text) if "<" in text else text
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_REF_LINK.sub(r"\1", text)
    text = _MD_HEADING.sub(r"\1", text)
    text = _MD_RULE.sub("", text)
    text = _MD_SETEXT.sub("", text)
    text = _MD_QUOTE.sub("", text)
    text = _MD_LIST.sub(r"\1", text)
    text = _MD_TABLE_RULE.sub("", text)
    text = "\n".join(_MD_TABLE_PIPE.sub(" ", line).strip() if line.lstrip().startswith("|")
                     else line for line in text.split("\n"))
    text = _MD_CODE.sub(r"\1", text)
    return _MD_EMPHASIS.sub(r"\2", text)


def strip_rst(text: str) -> str:
    """Plain text of a reStructuredText document (directives, comments and roles removed)."""
    text = _RST_DIRECTIVE.sub("", text)
    text = _RST_ADORNMENT.sub("", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_INTERPRETED.sub(r"\1", text)
    text = _RST_EMPHASIS.sub(r"\2", text)
    return _RST_DOUBLE_COLON.sub(":", text)


def strip_html(text: str) -> str:
    """Plain text of an HTML document: scripts and styles dropped, tags removed, entities decoded."""
    text = _HTML_DROP.sub("", text)
    text = _HTML_COMMENT.sub("", text)
    text = _HTML_BLOCK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text)


STRIPPERS = {"md": strip_markdown, "rst": strip_rst, "html": strip_html}


def clean_text(text: str, clean: CleanConfig, fmt: str = "txt") -> str:
    """Strip markup (by format), normalise Unicode, drop control characters, tidy whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if clean.strip_markup and fmt in STRIPPERS:
        text = STRIPPERS[fmt](text)
    if clean.normalization != "none":
        text = unicodedata.normalize(clean.normalization, text)
    if clean.remove_control_chars:
        text = _CONTROL.sub("", text)
    if clean.normalize_whitespace:
        text = "\n".join(line.strip() for line in _SPACES.sub(" ", text).split("\n"))
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def drop_reason(text: str, clean: CleanConfig) -> str | None:
    """The filter that removes this cleaned document, or None to keep it."""
    if not text:
        return "empty"
    if len(text) < clean.min_chars:
        return "too_short"
    if clean.max_chars and len(text) > clean.max_chars:
        return "too_long"
    if clean.max_non_alpha_fraction is not None:
        visible = len(text) - text.count(" ") - text.count("\n") - text.count("\t")
        letters = sum(map(str.isalpha, text))
        if visible and (visible - letters) / visible > clean.max_non_alpha_fraction:
            return "non_alphabetic"
    return None
