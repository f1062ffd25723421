"""The documentation's generated parts (an MkDocs hook, named in mkdocs.yml), made from the code at every build so
they cannot go stale: a page's `<!-- generated: settings -->` becomes every setting with its default and
documentation (the list `carrystate config` prints, from `carrystate.config.settings`), `<!-- generated: metrics -->`
the metrics table of `carrystate config --metrics`. EXPERIMENTS.md's plots (`experiments/plots/`) join the site under
`plots/`, where its image links point from the page that includes it."""

from __future__ import annotations

import html
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "experiments" / "plots"


def _text(doc: str) -> str:
    """A docstring as one line of Markdown for a table cell: code spans kept as written; outside them `<`, `>`, `*`
    and `|` are escaped, so `<run>` shows and a `|` stays in its cell."""
    parts = " ".join(doc.split()).split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = html.escape(parts[i], quote=False).replace("*", r"\*").replace("|", r"\|")
    return "`".join(parts)


def settings_markdown() -> str:
    """Every setting of a run as Markdown: a heading and a table per section (`env`, `policy`, ...), a row per
    setting with its default and documentation, in the order `carrystate config` prints them; each row is
    linkable as `settings.md#<name>` (e.g. `#trainer.bptt_horizon`)."""
    from carrystate.config import settings

    lines: list[str] = []
    for s in settings(sections=True):
        if s.section and "." not in s.name:  # a top-level section
            lines += ["", f"## `{s.name}`", "", _text(s.doc), "", "| setting | default | meaning |", "|---|---|---|"]
        elif s.section:  # a nested section: a row that introduces its settings
            lines.append(f"| **`{s.name}.*`** | | {_text(s.doc)} |")
        else:
            lines.append(f'| <a id="{s.name}"></a>`{s.name}` | `{s.default!r}` | {_text(s.doc)} |')
    return "\n".join(lines).strip() + "\n"


def metrics_markdown() -> str:
    """The metrics table, as `carrystate config --metrics` prints it."""
    from carrystate.metrics import table

    return table() + "\n"


GENERATED = {"settings": settings_markdown, "metrics": metrics_markdown}
MARKER = re.compile(r"<!-- generated: (\w+) -->")


def render(markdown: str) -> str:
    """`markdown` with each `<!-- generated: NAME -->` replaced by what it names; an unknown name fails the build."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise ValueError(f"docs: unknown generated block {name!r}; known: {', '.join(GENERATED)}")
        return GENERATED[name]()

    return MARKER.sub(fill, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return render(markdown)


def on_files(files, config):
    from mkdocs.structure.files import File

    for png in sorted(PLOTS.glob("*.png")):
        files.append(File.generated(config, f"plots/{png.name}", abs_src_path=str(png)))
    return files
