"""A self-contained HTML gallery: one table, a title column and image columns, images referenced
by relative paths to PNG files next to ``index.html`` (no scripts, no external assets).

Used by ``ccfpse synthesize`` (rows = layouts: colourised label | samples | real image) and by the
trainer (rows = steps, refreshed every epoch). ``index.html`` is replaced atomically, so a browser
or a crash never sees half a page.

A cell is one of:
- a path (``str`` or ``Path``) to an existing image; relative paths are relative to the gallery
  directory, absolute ones are referenced relative to it;
- an image in memory, written as PNG under ``<out_dir>/<assets_dir>/``: a numpy ``uint8`` array
  (H, W, 3) or (H, W), a PIL image, or a torch tensor (3, H, W) / (1, 3, H, W); float arrays and
  tensors are taken to be in [-1, 1], the networks' range;
- ``None`` for an empty cell.
A path that does not exist is shown as a "missing" note instead of a broken image, so the page
only ever references files that exist.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image

from ccfpse.atomic import atomic_file, atomic_write_text

INDEX_NAME = "index.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 4px; vertical-align: top; text-align: center; }
th { background: #eee; font-weight: 600; }
td.title { text-align: left; font-family: monospace; white-space: nowrap; }
td.title .note { color: #666; font-family: system-ui, sans-serif; white-space: normal; }
img { width: %(width)dpx; height: auto; image-rendering: pixelated; display: block; }
.missing { color: #a00; font-size: 0.85em; }
"""


@dataclass
class GalleryRow:
    """One table row: ``title`` in the first column, then one cell per entry of ``images``."""

    title: str
    images: Sequence[Any] = field(default_factory=list)
    note: str = ""


def to_uint8_image(image: Any) -> np.ndarray:
    """An image in memory (numpy, PIL or torch; see the module docstring) -> (H, W, 3) uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch tensor, channels first
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"gallery images must be uint8 or float in [-1, 1], got dtype {arr.dtype}")
        arr = np.round((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"gallery images must be (H, W, 3), (H, W) or (3, H, W), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def save_image(path: str | Path, image: Any) -> Path:
    """Write ``image`` (anything ``to_uint8_image`` takes) as an RGB PNG, atomically."""
    path = Path(path)
    with atomic_file(path, "wb") as f:
        Image.fromarray(to_uint8_image(image)).save(f, format="PNG")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "row"


def _cell_html(cell: Any, out_dir: Path, asset_stem: str, assets_dir: str) -> str:
    if cell is None:
        return "<td></td>"
    if isinstance(cell, (str, os.PathLike)):
        path = Path(cell)
        target = path if path.is_absolute() else out_dir / path
        if not target.is_file():
            return f'<td><span class="missing">missing: {html.escape(path.name)}</span></td>'
        rel = os.path.relpath(target, out_dir)
    else:
        rel = os.path.join(assets_dir, f"{asset_stem}.png")
        save_image(out_dir / rel, cell)
    src = html.escape(quote(Path(rel).as_posix()), quote=True)
    return f'<td><a href="{src}"><img src="{src}" alt="" loading="lazy"></a></td>'


def write_gallery(
    out_dir: str | Path,
    rows: Sequence[GalleryRow],
    title: str,
    columns: Sequence[str],
    extra_header_html: str | None = None,
    assets_dir: str = "assets",
    image_width: int = 192,
) -> Path:
    """Write ``out_dir/index.html`` (atomically) and the PNGs of in-memory cells; return its path.

    ``columns`` are the headers of the image columns (the first, title column has none); every
    row needs at most that many images (shorter rows are padded with empty cells).
    ``extra_header_html`` is inserted verbatim under the title (trusted markup, e.g. a table of
    metrics); every other text is escaped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(columns)
    body = []
    used: set[str] = set()
    for i, row in enumerate(rows):
        images = list(row.images)
        if len(images) > len(columns):
            raise ValueError(
                f"gallery row {row.title!r} has {len(images)} images but there are {len(columns)} columns"
            )
        images += [None] * (len(columns) - len(images))
        # In-memory cells are saved under a name derived from the row title, so that a gallery
        # rewritten with more rows (e.g. every epoch) keeps the files of the earlier rows.
        slug = _slug(row.title)
        if slug in used:
            slug = f"{slug}_{i}"
        used.add(slug)
        note = f'<div class="note">{html.escape(row.note)}</div>' if row.note else ""
        cells = "".join(_cell_html(c, out_dir, f"{slug}_{j}", assets_dir) for j, c in enumerate(images))
        body.append(f'<tr><td class="title">{html.escape(row.title)}{note}</td>{cells}</tr>')
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE % {'width': image_width}}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        extra_header_html or "",
        f"<table>\n<thead><tr><th></th>{header}</tr></thead>\n<tbody>",
        *body,
        "</tbody></table>",
        "</body></html>",
        "",
    ])
    index = out_dir / INDEX_NAME
    atomic_write_text(index, page)
    return index
