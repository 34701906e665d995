"""Regenerate the flag table of README.md from the config dataclasses (`make docs`)."""
import re
from pathlib import Path

from mlm.config import flags_markdown

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
table = "| flag | default | meaning |\n|---|---|---|\n" + flags_markdown()
text = re.sub(r"<!-- flags:start -->.*?<!-- flags:end -->",
              lambda _: f"<!-- flags:start -->\n{table}\n<!-- flags:end -->", text, flags=re.S)
readme.write_text(text)
