"""mlm.corpus.clean: text cleaning and the drop filters."""
from __future__ import annotations

import html
import importlib.metadata
import re
import time

from markdown_it import MarkdownIt

from mlm.config import CleanConfig
from mlm.corpus.clean import clean_text, drop_reason
from tests.corpus.conftest import all_texts, build


def test_clean_text_and_filters():
    cfg = CleanConfig()
    assert clean_text("a\u200bb\x07c   d\n\n\n\n e\u0301", cfg) == "abc d\n\n\u00e9"
    assert clean_text("ﬁne", CleanConfig(normalization="NFKC")) == "fine"
    assert drop_reason("short", cfg) == "too_short"
    assert drop_reason("x" * 100, CleanConfig(max_chars=50)) == "too_long"
    assert drop_reason("12 34 56 78 90 | 11 22 33 44 | 55.66 77.88 ab", cfg) == "non_alphabetic"
    assert drop_reason("A normal sentence, with 3 numbers: 1, 2.", cfg) is None


def test_drop_counts_per_reason(tmp_path, articles):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.txt").write_text(articles[0])
    (d / "short.txt").write_text("tiny")
    (d / "numbers.txt").write_text("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 ab")
    (d / "empty.txt").write_text("")
    (d / "blob.txt").write_bytes(b"\x00\x01\x02binary" * 20)
    (d / "ok2.md").write_text(articles[1])
    ds, stats = build(tmp_path, [{"path": str(d)}])
    assert stats["dropped"] == {"too_short": 1, "non_alphabetic": 1, "empty_file": 1,
                                "binary_file": 1}
    assert len(all_texts(ds)) == 2
    assert any("binary file" in w for w in stats["warnings"])


def test_markdown_keeps_identifiers_of_the_issue(tmp_path):
    """Issue #17: a `.md` source came out as `piitypes`, `loadfrom_disk`, `myhelperfunction`."""
    text = ("Set `pii_types` to an empty list, then call `load_from_disk`; my_helper_function "
            "returns user_id.")
    assert clean_text(text, CleanConfig(), "md") == text.replace("`", "")
    (tmp_path / "notes.md").write_text(f"# Privacy settings\n\n{text}\n")
    ds, _ = build(tmp_path, [{"path": str(tmp_path / "notes.md"), "document": "paragraph"}],
                  clean={"min_chars": 5})
    assert sorted(all_texts(ds)) == ["Privacy settings", text.replace("`", "")]


MARKDOWN = """---
title: Notes
---
# Loading a *saved* corpus

Edit src/my_pkg/__init__.py, define __init__ and snake_case_name, compute a*b*c, and type
`Map<String, List<Integer>>` where x < 3 and y > 4. **Bold**, _em_, ~~old~~ and
[the `datasets` docs](https://huggingface.co/docs/datasets) ![a diagram](img/flow.png).

- first item with `num_proc`
- second item

| setting | default |
|---|---|
| `max_seq_length` | 128 |

```python
def load(*args, **kwargs):
    return load_from_disk(path_or_dir)
```

<div align="center"><b>Note:</b> &lt;tags&gt; go</div>
"""


def test_markdown_to_plain_text():
    """Markers, link targets and tags go; identifiers, code spans and code blocks stay as written
    (the old regexes read `<...>` in code or `x < 3 and y >` as a tag, and dropped code blocks)."""
    assert clean_text(MARKDOWN, CleanConfig(normalize_whitespace=False), "md") == (
        "Loading a saved corpus\n\n"
        "Edit src/my_pkg/__init__.py, define __init__ and snake_case_name, compute a*b*c, and type\n"
        "Map<String, List<Integer>> where x < 3 and y > 4. Bold, em, old and\n"
        "the datasets docs a diagram.\n\n"
        "first item with num_proc\nsecond item\n\n"
        "setting default\nmax_seq_length 128\n\n"
        "def load(*args, **kwargs):\n    return load_from_disk(path_or_dir)\n\n"
        "Note: <tags> go")


def _markdown_readmes() -> dict[str, str]:
    """Long Markdown READMEs of installed dependencies: real technical docs, offline."""
    return {name: importlib.metadata.metadata(name).get_payload()
            for name in ("datasets", "accelerate", "transformers", "huggingface_hub", "torch")}


def test_markdown_real_readmes_keep_code_identifiers():
    """Every identifier with an underscore in a code span or code block of a real README survives
    cleaning, and the text of every emphasis survives without its markers."""
    parser = MarkdownIt("commonmark").enable("table")
    checked = 0
    for name, readme in _markdown_readmes().items():
        out = clean_text(readme, CleanConfig(), "md")
        words = set(re.findall(r"\w+", out))
        tokens = parser.parse(readme)
        code = [t.content for t in tokens if t.type in ("fence", "code_block")]
        for inline in (t for t in tokens if t.type == "inline"):
            children = inline.children or []
            code += [c.content for c in children if c.type == "code_inline"]
            for i, c in enumerate(children[:-2]):
                if c.type in ("em_open", "strong_open") and children[i + 1].type == "text" \
                        and children[i + 2].type == c.type.replace("open", "close"):
                    inner = children[i + 1].content
                    assert inner in out and f"{c.markup}{inner}{c.markup}" not in out, (name, inner)
        identifiers = {w for text in code for w in re.findall(r"\w*_\w*", text)
                       if re.search("[A-Za-z]", w)}
        assert identifiers <= words, (name, sorted(identifiers - words))
        checked += len(identifiers)
    assert checked > 50


RST = """=========
Loading
=========

Use ``x_y`` and :func:`load_from_disk`, :py:meth:`~mlm.Corpus.save_to_disk`, see
:ref:`the guide <guide-label>` and `Python <https://python.org>`_; *emph*, **strong**,
a*b*c, snake_case_name [1]_.

.. note:: Keep my_note_text
   continued here.

.. code-block:: python
   :linenos:

   def f(*args, **kwargs):
       return a*b*c

.. image:: pic.png
   :alt: gone_alt

.. _guide-label: https://example.org/guide

.. a comment
   with a body

Example::

    x = *y* + ``z``

>>> f(*args, **kwargs)

Section
-------
"""


def test_rst_to_plain_text():
    """Literals and roles become their names, directive markers and options go while bodies stay
    (code verbatim), literal and doctest blocks are not read as markup."""
    assert clean_text(RST, CleanConfig(), "rst") == (
        "Loading\n\n"
        "Use x_y and load_from_disk, save_to_disk, see\n"
        "the guide and Python; emph, strong,\n"
        "a*b*c, snake_case_name.\n\n"
        "Keep my_note_text\ncontinued here.\n\n"
        "def f(*args, **kwargs):\nreturn a*b*c\n\n"
        "Example:\n\nx = *y* + ``z``\n\n>>> f(*args, **kwargs)\n\nSection")


def _rst_docs() -> dict[str, str]:
    """Real reST READMEs and dataset descriptions of installed dependencies."""
    docs = {name: importlib.metadata.metadata(name).get_payload()
            for name in ("tqdm", "datasketch", "scikit-learn")}
    shipped = importlib.metadata.files("scikit-learn") or []  # without importing sklearn (2 s)
    docs.update({str(f): f.read_text() for f in shipped if f.suffix == ".rst"})
    return docs


def test_rst_real_docs_keep_literals_and_code():
    """Identifiers in inline literals, roles and code directives of real reST docs survive
    (the old cleaner dropped `.. code::` bodies), and no role or directive marker is left."""
    checked = 0
    for name, doc in _rst_docs().items():
        out = clean_text(doc, CleanConfig(), "rst")
        words = set(re.findall(r"\w+", out))
        code = re.findall(r"``(\S.*?\S|\S)``|:\w+:`~?([^`<]+)`", doc)
        code = [a or b for a, b in code]
        code += re.findall(r"^\.\. code(?:-block)?::.*\n((?:[ \t]+.*\n|[ \t]*\n)+)", doc, re.M)
        identifiers = {w for text in code for w in re.findall(r"\w*_\w*", text)
                       if re.search("[A-Za-z]", w)}
        assert identifiers <= words, (name, sorted(identifiers - words))
        assert not re.search(r"^\.\. |:\w+:`", out, re.M), name
        checked += len(identifiers)
    assert checked > 50


def test_html_to_plain_text():
    """Scripts, styles, the head and comments go; entities are decoded; cells and blocks stay
    apart (the old regexes glued `<td>a_b</td><td>c</td>` into `a_bc`)."""
    page = ('<html><head><title>T</title><style>p {color: red}</style><body>'
            '<h1>Use &amp; reuse</h1><p title="a>b">Call <code>load_from_disk</code> if a &lt; b'
            '<br/>then stop</p><script>if (a<b) {x("</p>")}</script><!-- note -->'
            '<table><tr><td>user_id</td><td>int</td></tr></table></body></html>')
    assert clean_text(page, CleanConfig(), "html") == (
        "Use & reuse\n\nCall load_from_disk if a < b\nthen stop\n\nuser_id int")


def test_html_real_docs_keep_code_identifiers():
    """Real READMEs rendered to HTML: code identifiers survive, no tag or entity is left."""
    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    for name, readme in _markdown_readmes().items():
        page = renderer.render(readme)
        out = clean_text(page, CleanConfig(), "html")
        code = re.findall(r"<code[^>]*>(.*?)</code>", page, re.S)
        identifiers = {w for text in code for w in re.findall(r"\w*_\w*", html.unescape(text))
                       if re.search("[A-Za-z]", w)}
        assert identifiers <= set(re.findall(r"\w+", out)), name
        assert not re.search(r"</?(p|code|a|td|li|h\d)\b|&(amp|lt|gt|quot);", out), name


def test_unclosed_markup_takes_linear_time():
    """300 KB of markup openers that never close (a regex that searched the rest of the document
    for each, or html.parser doing so, took minutes here)."""
    doc = "word *open and ``lit and :x:`y and `z <a \n" * 8000
    start = time.perf_counter()
    for fmt in ("md", "rst", "html"):
        assert "open and" in clean_text(doc, CleanConfig(), fmt)
    assert time.perf_counter() - start < 10
