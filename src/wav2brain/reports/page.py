"""The pieces of a self-contained HTML report: headline numbers, tables, embedded figures, sections.

Everything a page needs travels inside it: CSS inline, images as ``data:`` URIs, no script and no
network address, so the file opens offline, mails as one attachment and renders the same in any
browser. A headline number is registered once in a :class:`Headline` and written both into the
page (a ``<span data-key=... data-value=...>``, shown rounded) and into ``headline.json``, so the
two cannot disagree and a test can read either.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 4rem}
h1{font-size:1.7rem;margin:.2rem 0 .4rem}h2{font-size:1.3rem;margin:2.2rem 0 .6rem;
border-bottom:2px solid #d7dbe3;padding-bottom:.2rem}h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
.banner{background:#b3261e;color:#fff;font-weight:700;text-align:center;padding:.7rem 1rem;
letter-spacing:.04em;font-size:1.05rem}
.meta{color:#5b6475;font-size:.9rem}
.absent{color:#5b6475;font-style:italic;background:#eceef2;padding:.5rem .8rem;border-radius:4px}
.note{color:#5b6475;font-size:.9rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem;background:#fff}
th,td{border:1px solid #d7dbe3;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#146c2e;font-weight:600}.fail{color:#b3261e;font-weight:600}
figure{margin:.8rem 0 1.4rem;background:#fff;border:1px solid #d7dbe3;padding:.6rem;
display:inline-block;max-width:100%;box-sizing:border-box}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#3c4455;margin-top:.35rem;max-width:900px}
.sim{color:#b3261e;font-weight:700}
nav ol{columns:2;font-size:.9rem}
.scroll{overflow-x:auto;max-width:100%}
.kv td:first-child{font-weight:600;background:#f3f4f7}
"""
"""The page's only style sheet (inline)."""

SIMULATED = "SIMULATED"


def escape(value: Any) -> str:
    """HTML text of ``value`` (quotes escaped too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def format_number(value: Any, digits: int = 3) -> str:
    """How a number is shown: integers whole (thousands separated), floats rounded.

    Floats below 1 in magnitude keep ``digits`` decimals (correlations, shares), larger ones
    ``digits`` significant figures, and very small or very large ones scientific notation.
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    number = float(value)
    if math.isnan(number):
        return "n/a"
    size = abs(number)
    if size == 0:
        return "0"
    if size < 1e-3 or size >= 1e5:
        return f"{number:.2e}"
    if size < 1:
        return f"{number:.{digits}f}"
    if size >= 10**digits:
        return f"{number:,.0f}"
    return f"{number:.{digits}g}"


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar (numpy scalars become int/float/bool; NaN becomes None)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class Headline:
    """The headline numbers of one report: key -> value, each shown once in the page."""

    values: dict[str, Any] = field(default_factory=dict)

    def number(self, key: str, value: Any, digits: int = 3, unit: str = "") -> str:
        """Register ``value`` under ``key`` and return its HTML span.

        ``data-value`` holds the exact value (JSON), the text the rounded one.

        Raises
        ------
        ValueError
            ``key`` was registered already (one number, one place in the page).
        """
        import json

        if key in self.values:
            raise ValueError(f"headline key {key!r} is registered twice")
        plain = _plain(value)
        self.values[key] = plain
        text = format_number(plain, digits) + (f" {unit}" if unit else "")
        return (
            f'<span data-key="{escape(key)}" data-value="{escape(json.dumps(plain))}">'
            f"{escape(text)}</span>"
        )


def data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path, caption: str, simulated: bool, name: str) -> str:
    """An embedded PNG with its caption (which starts with SIMULATED for simulated data)."""
    label = f'<span class="sim">{SIMULATED}.</span> ' if simulated else ""
    return (
        f'<figure><img src="{data_uri(path)}" alt="{escape(caption)}" data-file="{escape(name)}">'
        f'<figcaption>{label}{escape(caption)} <span class="note">({escape(name)})</span>'
        "</figcaption></figure>"
    )


def table(
    frame,
    columns: Sequence[str] | None = None,
    digits: int = 3,
    max_rows: int = 40,
    headers: Mapping[str, str] | None = None,
    verdicts: Sequence[str] = (),
) -> str:
    """An HTML table of a DataFrame (the first ``max_rows`` rows; the rest counted below it).

    Booleans read yes/no; those of the ``verdicts`` columns (a check's ``passed``) are coloured.
    """
    columns = list(columns or frame.columns)
    headers = headers or {}
    head = "".join(f"<th>{escape(headers.get(c, c))}</th>" for c in columns)
    rows = []
    for record in frame[columns].head(max_rows).itertuples(index=False):
        cells = []
        for column, value in zip(columns, record, strict=True):
            plain = _plain(value)
            if isinstance(plain, (int, float)) and not isinstance(plain, bool):
                cells.append(f'<td class="num">{escape(format_number(plain, digits))}</td>')
            elif isinstance(plain, bool):
                style = ("pass" if plain else "fail") if column in verdicts else "num"
                cells.append(f'<td class="{style}">{format_number(plain)}</td>')
            else:
                cells.append(f"<td>{escape('' if plain is None else plain)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f'<p class="note">{len(frame) - max_rows} more rows in the Parquet table.</p>'
        if len(frame) > max_rows
        else ""
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{more}"
    )


def key_values(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table of (label, HTML) rows."""
    body = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def absent(what: str) -> str:
    """The paragraph of a section whose step did not run."""
    return f'<p class="absent">{escape(what)}</p>'


@dataclass
class Section:
    """One section of the page: an anchor id, a title and its HTML body."""

    id: str
    title: str
    body: str


def document(title: str, subtitle: str, sections: Sequence[Section], simulated: bool) -> str:
    """The whole page: banner (simulated data), title, contents, sections."""
    banner = (
        f'<div class="banner" role="alert">{SIMULATED} DATA: every number and figure below comes '
        "from the toolkit's simulator and says only that the parts fit together and recover "
        "planted ground truth, nothing about real brains.</div>"
        if simulated
        else ""
    )
    contents = "".join(f'<li><a href="#{s.id}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'{banner}<main><h1>{escape(title)}</h1><p class="meta">{subtitle}</p>'
        f"<nav><ol>{contents}</ol></nav>{body}</main></body></html>\n"
    )
