"""The self-contained HTML gallery."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from ccfpse.gallery import GalleryRow, save_image, to_uint8_image, write_gallery


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text())
    return page


def test_mixed_cells_reference_only_existing_files(tmp_path):
    out = tmp_path / "gal"
    (out / "inputs").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out / "inputs" / "0 label.png")
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(outside)
    rows = [
        GalleryRow("input <1>", ["inputs/0 label.png", str(outside), None]),
        GalleryRow("step 10", [np.zeros((8, 8, 3), np.uint8), torch.zeros(3, 8, 8), Image.new("RGB", (8, 8))]),
        GalleryRow("step 20", ["inputs/gone.png"], note="a note & more"),
    ]
    index = write_gallery(out, rows, title="t & t", columns=["a", "b", "c"],
                          extra_header_html="<p id='extra'>loss 0.5</p>")
    assert index == out / "index.html"
    page = parse(index)
    refs = {unquote(r) for r in page.refs}
    assert len(refs) == 5  # two paths + three in-memory images; the missing one is not linked
    assert all((out / r).resolve().is_file() for r in refs)
    assert not any(r.startswith(("http:", "https:", "/")) for r in refs)  # relative, no external assets
    assert "../elsewhere.png" in refs
    text = "".join(page.text)
    assert "input <1>" in text and "a note & more" in text and "missing: gone.png" in text
    assert "script" not in page.tags and "link" not in page.tags
    assert "loss 0.5" in text  # trusted header markup goes in verbatim
    assert not list(out.glob(".index.*"))  # no temp file left behind


def test_rewriting_keeps_earlier_assets(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    write_gallery(tmp_path, [GalleryRow("step 1", [red])], title="g", columns=["x"])
    first = parse(tmp_path / "index.html").refs
    write_gallery(tmp_path, [GalleryRow("step 1", [red]), GalleryRow("step 2", [red // 2])],
                  title="g", columns=["x"])
    refs = parse(tmp_path / "index.html").refs
    assert set(first) <= set(refs) and len(set(refs)) == 2
    assert all((tmp_path / unquote(r)).is_file() for r in refs)
    assert np.array_equal(np.asarray(Image.open(tmp_path / unquote(first[0]))), red)


def test_duplicate_titles_get_distinct_assets(tmp_path):
    rows = [GalleryRow("same", [np.zeros((4, 4), np.uint8)]), GalleryRow("same", [np.ones((4, 4), np.uint8)])]
    write_gallery(tmp_path, rows, title="g", columns=["x"])
    refs = parse(tmp_path / "index.html").refs
    assert len(set(refs)) == 2


def test_too_many_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="columns"):
        write_gallery(tmp_path, [GalleryRow("r", [None, None])], title="g", columns=["only"])


def test_image_conversions(tmp_path):
    t = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    arr = to_uint8_image(t)
    assert arr.shape == (2, 2, 3) and arr[0, 0].tolist() == [0, 128, 255]
    assert to_uint8_image(t[None]).shape == (2, 2, 3)
    assert to_uint8_image(np.full((2, 3), 7, np.uint8)).shape == (2, 3, 3)
    with pytest.raises(ValueError):
        to_uint8_image(np.zeros((2, 2, 4), np.uint8))
    path = save_image(tmp_path / "sub" / "x.png", t)
    assert np.array_equal(np.asarray(Image.open(path)), arr)
