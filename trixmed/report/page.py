"""One report page, rendered twice: a self-contained HTML file (figures embedded as PNG data URIs,
inline CSS, no script, no external resource) and Markdown (figures as PNG files beside it).

Every report (`trixmed report --run`, and later `--tune`) builds a `Page` from the same blocks,
so they share one look. Figures are matplotlib figures drawn with the Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1f2933;
       background: #ffffff; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #d9e2ec; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p, li { font-size: 14px; line-height: 1.5; }
.subtitle { color: #52606d; font-size: 14px; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d9e2ec; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e7eb; }
figcaption { color: #52606d; font-size: 13px; margin-top: 4px; max-width: 1000px; }
.note { background: #f0f4f8; border-left: 4px solid #627d98; padding: 8px 12px; font-size: 13px; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.kpi { border: 1px solid #d9e2ec; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.kpi .v { font-size: 22px; font-weight: 600; }
.kpi .l { font-size: 12px; color: #52606d; }
"""


@dataclass
class Figure:
    name: str        # file stem: figures/<name>.png
    png: bytes
    caption: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Page:
    title: str
    subtitle: str = ""
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def section(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def subsection(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def kpis(self, items: list[tuple[str, str]]) -> None:
        """Headline figures: (value, label) boxes (a bullet list in Markdown)."""
        self.blocks.append(("kpis", items))

    def table(self, headers: list[str], rows: list[list[Any]], caption: str = "") -> None:
        self.blocks.append(("table", Table(headers, rows, caption)))

    def figure(self, name: str, fig: Any, caption: str, dpi: int = 96) -> None:
        """Add a matplotlib figure (closed once rendered)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        self.blocks.append(("figure", Figure(name, buf.getvalue(), caption)))

    @property
    def figures(self) -> list[Figure]:
        return [b for kind, b in self.blocks if kind == "figure"]

    # ---------------------------------------------------------------------------------------

    def to_html(self) -> str:
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{_esc(self.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
               f"<h1>{_esc(self.title)}</h1>"]
        if self.subtitle:
            out.append(f'<p class="subtitle">{_inline_html(self.subtitle)}</p>')
        for kind, block in self.blocks:
            if kind in ("h2", "h3"):
                out.append(f"<{kind}>{_esc(block)}</{kind}>")
            elif kind == "p":
                out.append(f"<p>{_inline_html(block)}</p>")
            elif kind == "note":
                out.append(f'<p class="note">{_inline_html(block)}</p>')
            elif kind == "kpis":
                out.append('<div class="kpis">' + "".join(
                    f'<div class="kpi"><div class="v">{_esc(v)}</div><div class="l">{_esc(label)}</div></div>'
                    for v, label in block) + "</div>")
            elif kind == "table":
                out.append(_table_html(block))
            elif kind == "figure":
                data = base64.b64encode(block.png).decode("ascii")
                out.append(f'<figure><img alt="{_esc(block.name)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>")
        out += ["</main>", "</body>", "</html>", ""]
        return "\n".join(out)

    def to_markdown(self, figure_dir: str = "figures") -> str:
        out = [f"# {self.title}", ""]
        if self.subtitle:
            out += [self.subtitle, ""]
        for kind, block in self.blocks:
            if kind == "h2":
                out += [f"## {block}", ""]
            elif kind == "h3":
                out += [f"### {block}", ""]
            elif kind == "p":
                out += [block, ""]
            elif kind == "note":
                out += [f"> {block}", ""]
            elif kind == "kpis":
                out += [f"- **{v}** {label}" for v, label in block] + [""]
            elif kind == "table":
                out += _table_markdown(block)
            elif kind == "figure":
                out += [f"![{block.name}]({figure_dir}/{block.name}.png)", "", f"*{block.caption}*", ""]
        return "\n".join(out)

    def write(self, html_path: Path, markdown_path: Path, figure_dir: Path) -> None:
        """The HTML file, the Markdown file and its figures (figure_dir must sit beside the Markdown
        or below it: the Markdown links to it relatively)."""
        from trixmed.io import atomic_file

        figure_dir.mkdir(parents=True, exist_ok=True)
        names = {f"{f.name}.png" for f in self.figures}
        for old in figure_dir.glob("*.png"):   # a figure an earlier report had and this one lacks
            if old.name not in names:
                old.unlink()
        for f in self.figures:
            with atomic_file(figure_dir / f"{f.name}.png", "wb") as fh:
                fh.write(f.png)
        rel = figure_dir.relative_to(markdown_path.parent).as_posix()
        with atomic_file(markdown_path) as fh:
            fh.write(self.to_markdown(rel))
        with atomic_file(html_path) as fh:
            fh.write(self.to_html())


# ------------------------------------------------------------------------------------------------


def cell(value: Any, digits: int = 3) -> str:
    """A table cell as text: floats to `digits` decimals, NaN/None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or bool(
        isinstance(value, str) and re.fullmatch(r"[-+]?[\d.,]+( ± [\d.,]+)?( ?[%×])?", value))


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in t.headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_esc(cell(v))}</td>' if _is_num(v) else f"<td>{_esc(cell(v))}</td>" for v in row)
        + "</tr>" for row in t.rows)
    caption = f"<caption style='caption-side:bottom;text-align:left;color:#52606d;font-size:13px'>{_inline_html(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_markdown(t: Table) -> list[str]:
    def md(v: Any) -> str:
        return cell(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(md(h) for h in t.headers) + " |",
             "|" + "|".join("---:" if t.rows and _is_num(t.rows[0][i]) else "---" for i in range(len(t.headers))) + "|"]
    lines += ["| " + " | ".join(md(v) for v in row) + " |" for row in t.rows]
    lines.append("")
    if t.caption:
        lines += [f"*{t.caption}*", ""]
    return lines


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline_html(text: str) -> str:
    """Escape, then turn Markdown's **bold** and `code` into HTML (the only inline markup used)."""
    out = _esc(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)
