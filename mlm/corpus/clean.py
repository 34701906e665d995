"""Cleaning: markup stripping, Unicode normalisation, control characters, whitespace, filters.

`clean_text` turns a raw document into the text that is kept; `drop_reason` says which filter
(if any) removes it. Both are pure functions of the text and the CleanConfig.
"""
from __future__ import annotations

import itertools
import re
import textwrap
import unicodedata
from html.parser import HTMLParser

from markdown_it import MarkdownIt

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

# Markdown: parsed by markdown-it-py (CommonMark, plus GFM tables and strikethrough) rather than
# rewritten by regexes, which took the underscores of `user_id` and `load_from_disk` for emphasis.
_MD_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_MD_BLANK_AFTER = {"paragraph_close", "heading_close", "bullet_list_close", "ordered_list_close",
                   "blockquote_close", "table_close", "fence", "code_block", "html_block"}
_MD_OPEN = {"em_open", "strong_open", "s_open"}
_MD_CLOSE = {"em_close", "strong_close", "s_close"}
_WORD = re.compile(r"\w+")


class _TextOnly(MarkdownIt):
    """A CommonMark parser for text extraction: link targets are neither checked nor
    percent-encoded, since they are dropped anyway (that work was 40 % of the parse time)."""

    def validateLink(self, url: str) -> bool:  # noqa: N802 (markdown-it's method names)
        return True

    def normalizeLink(self, url: str) -> str:  # noqa: N802
        return url

    def normalizeLinkText(self, link: str) -> str:  # noqa: N802
        return link


# html: HTML is recognised as such (and reduced to its text), not kept as literal tags.
_MARKDOWN = _TextOnly("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _written_as_is(children: list, i: int, j: int) -> bool:
    """Whether the emphasis delimiters children[i] (open) and children[j] (close) belong to an
    identifier or expression, so they are kept as written: `a*b*c` (inside a word), `__init__`
    (a dunder name, which CommonMark reads as bold "init") and `_private_x or y_` (underscores
    inside the span)."""
    before = children[i - 1].content[-1:] if i and children[i - 1].type == "text" else ""
    after = children[j + 1].content[:1] if (j + 1 < len(children)
                                            and children[j + 1].type == "text") else ""
    if before.isalnum() and after.isalnum():
        return True
    markup = children[i].markup
    if "_" not in markup:
        return False
    inner = "".join(c.content for c in children[i + 1:j] if c.type in ("text", "code_inline"))
    return "_" in inner or (markup == "__" and j == i + 2 and _WORD.fullmatch(inner) is not None)


def _markdown_inline(children: list) -> str:
    """Text of an inline token: code spans, link text and image alt text verbatim; link targets,
    emphasis markers and HTML tags dropped."""
    kept: set[int] = set()  # emphasis delimiters written back as they were
    opened: list[int] = []
    for k, child in enumerate(children):
        if child.type in _MD_OPEN:
            opened.append(k)
        elif child.type in _MD_CLOSE and opened:
            i = opened.pop()
            if _written_as_is(children, i, k):
                kept.update((i, k))
    parts = []
    for k, child in enumerate(children):
        kind = child.type
        if kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "image":
            parts.append(_markdown_inline(child.children or []))
        elif kind == "html_inline" and child.content[:3].lower() == "<br":
            parts.append("\n")
        elif k in kept:
            parts.append(child.markup)
    return "".join(parts)


def strip_markdown(text: str) -> str:
    """Plain text of a Markdown document: headings, paragraphs, list items and table rows as
    lines; code spans and code blocks verbatim; link and image text kept, link targets, front
    matter and emphasis markers dropped; HTML reduced to its text."""
    text = _MD_FRONT_MATTER.sub("", text)
    out: list[str] = []
    cells: list[str] | None = None  # the table row being read
    for token in _MARKDOWN.parse(text):
        kind = token.type
        if kind == "inline":
            line = _markdown_inline(token.children or [])
            if cells is not None:
                cells.append(line)
            else:
                out.append(line + "\n")
        elif kind in ("fence", "code_block"):
            out.append(token.content)
        elif kind == "html_block":
            out.append(strip_html(token.content) + "\n")
        elif kind == "tr_open":
            cells = []
        elif kind == "tr_close" and cells is not None:
            out.append(" ".join(cells) + "\n")
            cells = None
        if kind in _MD_BLANK_AFTER and not token.hidden:
            out.append("\n")
    return _BLANK_LINES.sub("\n\n", "".join(out)).strip()


# reStructuredText: a line scanner for the blocks (explicit markup with its indented body,
# literal blocks after "::", doctest blocks, section adornments), then one left-to-right regex
# pass over each paragraph for inline markup, so the text of a literal is never read twice.
_RST_EXPLICIT = re.compile(r"[ \t]*\.\.(?:[ \t]+(.*))?$")
_RST_DIRECTIVE = re.compile(r"([\w:+.-]+)::(?:[ \t]+(.*))?$")
_RST_FOOTNOTE = re.compile(r"\[[^\]]+\][ \t]*(.*)$")
_RST_OPTION = re.compile(r"^:[\w-][\w .-]*:(?:[ \t]|$)")
_RST_ADORNMENT = re.compile(  # section adornments, simple-table and grid-table borders
    r"^(?:([=\-~`:'\"^_*+#<>.])\1{2,}(?:[ \t]+\1{2,})*|\+(?:[-=]+\+)+)[ \t]*$")
_RST_CODE = {"code", "code-block", "sourcecode", "doctest", "testcode", "testoutput", "math",
             "parsed-literal", "productionlist", "ipython"}  # bodies kept verbatim
_RST_DROP = {"image", "include", "literalinclude", "raw", "toctree", "contents", "meta",
             "highlight", "sectnum", "index", "module", "currentmodule", "default-role", "role",
             "tabularcolumns", "target-notes"}  # no text of their own
_RST_START = r"(?<![^\s'\"(\[{<\-/:])"  # inline markup opens at the start or after these
_RST_END = r"(?![^\s'\")\]}>\-/:.,;!?\\])"  # and closes at the end or before these
_RST_INLINE = re.compile(
    r"[ \t]?\[(?:\d+|#[\w-]*|\*|[A-Za-z][\w.-]*)\]_" + _RST_END  # a footnote reference: dropped
    + "|" + _RST_START + r"(?:``(?P<literal>\S(?:[^`]|`(?!`))*?)(?<=\S)``"
    r"|:[\w:+.-]+:`(?P<role>[^`]+)`"
    r"|`(?P<ref>[^`]+)`_{0,2}"
    r"|\*\*(?P<strong>\S(?:[^*]|\*(?!\*))*?)(?<=\S)\*\*"
    r"|\*(?P<em>[^\s*][^*]*?)(?<=\S)\*"
    r"|\|\S(?:[^|\n]*?\S)?\|_{0,2})"  # a substitution reference (mostly badges): dropped
    + _RST_END)  # a span never crosses its own delimiter: linear time on unclosed markup
_RST_TARGET = re.compile(r"^(.*?\S)\s*<[^<>]*>$", re.S)  # "title <target>" -> title


def _rst_inline_text(match: re.Match) -> str:
    kind = match.lastgroup
    text = match.group(kind) if kind else ""  # footnote and substitution references: dropped
    if kind in ("role", "ref"):
        text = _RST_TARGET.sub(r"\1", text)
        if kind == "role" and text[0] in "~!":  # Sphinx: ~a.b.c shows c, !x is x unlinked
            text = text[1:].rsplit(".", 1)[-1] if text[0] == "~" else text[1:]
    return text


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """End of the block from `start` whose lines are blank or indented more than `indent`."""
    end = start
    for k in range(start, len(lines)):
        line = lines[k]
        if line.strip():
            if len(line) - len(line.lstrip()) <= indent:
                break
            end = k + 1
    return end


def _rst_explicit(head: str, body: str) -> str:
    """Text of an explicit markup block, `.. head` and its (dedented) indented body: comments,
    targets and substitution definitions give nothing; a footnote its text; a directive its
    argument and body without its options (code bodies verbatim)."""
    if head.startswith("["):
        note = _RST_FOOTNOTE.match(head)
        return strip_rst((note.group(1) if note else "") + "\n" + body)
    directive = _RST_DIRECTIVE.match(head)
    if directive is None or head.startswith(("|", "_")):
        return ""
    name = directive.group(1).rsplit(":", 1)[-1].lower()
    if name in _RST_DROP:
        return ""
    lines = body.split("\n")
    first = 0
    while first < len(lines) and _RST_OPTION.match(lines[first]):
        first += 1
    body = "\n".join(lines[first:])
    if name in _RST_CODE:
        return body.strip("\n")
    argument = "" if name == "figure" else directive.group(2) or ""
    return strip_rst(argument + "\n" + body)


def strip_rst(text: str) -> str:
    """Plain text of a reStructuredText document: inline literals, roles, references and
    emphasis reduced to their text (``user_id`` and :func:`load_from_disk` to the names);
    literal, doctest and code blocks verbatim; directive markers and options, comments, targets
    and section adornments dropped."""
    lines = text.split("\n")
    out: list[str] = []
    para: list[str] = []  # the prose paragraph being read
    para_indent = 0
    literal_after: int | None = None  # indent of a paragraph that ended with "::"

    def flush() -> None:
        if para:
            out.append(_RST_INLINE.sub(_rst_inline_text, "\n".join(para)))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        end = i + 1
        if not line.strip():
            flush()
            out.append("")
        elif literal_after is not None and indent > literal_after:  # the literal block
            end = _block_end(lines, i, literal_after)
            out.append(textwrap.dedent("\n".join(lines[i:end])))
        elif _RST_ADORNMENT.match(line):
            flush()
        elif para:
            para.append(line)
        elif (explicit := _RST_EXPLICIT.match(line)) is not None:
            if explicit.group(1) or (i + 1 < len(lines) and lines[i + 1].strip()):
                end = _block_end(lines, i + 1, indent)  # (a bare ".." owns no following block)
            body = textwrap.dedent("\n".join(lines[i + 1:end]))
            out.append(_rst_explicit((explicit.group(1) or "").strip(), body))
        elif line.lstrip().startswith(">>>"):  # a doctest block, verbatim to the blank line
            end = next((k for k in range(i, len(lines)) if not lines[k].strip()), len(lines))
            out.append(textwrap.dedent("\n".join(lines[i:end])))
        else:
            para.append(line)
            para_indent = indent
        literal_after = None if line.strip() else literal_after
        if para and para[-1].rstrip().endswith("::"):  # "text::" -> "text:"; " ::" goes
            head = para[-1].rstrip()[:-2]
            para[-1] = head if not head.strip() or head[-1] in " \t" else head + ":"
            flush()
            literal_after = para_indent
        i = end
    flush()
    return _BLANK_LINES.sub("\n\n", "\n".join(out)).strip()


# HTML: the standard library's tokenizer (html.parser), which knows that a script's "<" is not a
# tag and decodes entities, rather than tag-shaped regexes.
_HTML_HIDDEN = {"script", "style", "head", "noscript", "template"}
_HTML_BLOCK = {"p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5",
               "h6", "tr", "table", "section", "article", "header", "footer", "nav", "aside",
               "main", "blockquote", "pre", "hr", "figure", "figcaption", "details", "summary",
               "title", "form", "caption"}
_HTML_LONE_LT = re.compile(r"<(?!!)(?=[^<>]*(?:<|\Z))")  # not "<!": a comment may hold tags


class _HTMLText(HTMLParser):
    """Collects the text of an HTML document: hidden elements dropped, block tags as newlines,
    table cells separated by spaces."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden: list[str] = []  # open elements whose text is dropped

    def handle_starttag(self, tag, attrs):
        if tag in _HTML_HIDDEN:
            self.hidden.append(tag)
        elif tag == "body":
            self.hidden.clear()  # a <head> left open (HTML allows it) ends where <body> starts
        elif tag in _HTML_BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):  # <br/>: one break, not an open and a close
        if tag not in _HTML_HIDDEN:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in self.hidden:
            while self.hidden.pop() != tag:
                pass
        elif tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Plain text of an HTML document: scripts, styles, the head and comments dropped, block
    elements as lines, entities decoded; the text of <code> and <pre> verbatim."""
    parser = _HTMLText()
    # A "<" with no ">" before the next "<" cannot open a tag: as "&lt;" it is text at once,
    # where html.parser would search the rest of the document for each (quadratic time).
    parser.feed(_HTML_LONE_LT.sub("&lt;", text))
    parser.close()
    return "".join(parser.parts)


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
