"""Class names, palettes, palette files and ``colorize``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccfpse.data.labels import class_names, colorize, get_palette, label_colormap, load_palette
from ccfpse.errors import DataError


def test_class_tables_have_the_paper_sizes():
    ade = class_names("ade20k")
    coco = class_names("coco_stuff")
    assert len(ade) == 150 and ade[0] == "wall" and ade[149] == "flag"
    assert len(coco) == 182 and coco[0] == "person" and coco[181] == "wood" and coco[156] == "sky-other"
    assert len(class_names("landscapes")) == 10


def test_cityscapes_table_comes_from_cityscapesscripts():
    pytest.importorskip("cityscapesscripts")
    names = class_names("cityscapes")
    pal = get_palette("cityscapes")
    assert len(names) == 35 and pal.shape == (35, 3)
    assert names[7] == "road" and tuple(pal[7]) == (128, 64, 128)
    assert names[26] == "car" and names[34] == "license plate"


def test_palettes_are_distinct_and_dontcare_is_black():
    for name, n in (("ade20k", 150), ("coco_stuff", 182)):
        pal = get_palette(name)
        assert pal.shape == (n + 1, 3) and pal.dtype == np.uint8
        assert len({tuple(c) for c in pal}) == n + 1
        assert tuple(pal[n]) == (0, 0, 0) and (pal[:n].sum(1) > 0).all()
    assert len({tuple(c) for c in label_colormap(256)}) == 256


def test_colorize_numpy_and_torch():
    lab = np.array([[0, 1], [2, 99]])
    out = colorize(lab, [(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 0].tolist() == [70, 80, 90]
    assert out[1, 1].tolist() == [0, 0, 0]  # outside the palette
    t = torch.tensor([[[150, 3]]])
    ade = colorize(t, "ade20k")
    assert ade.shape == (1, 2, 3) and ade[0, 0].tolist() == [0, 0, 0]
    assert colorize(np.zeros((4, 4), np.int64)).shape == (4, 4, 3)


def test_palette_files_json_csv(tmp_path):
    (tmp_path / "p.json").write_text('{"classes": [{"id": 3, "name": "x", "color": "#0a141e"}, {"id": 0, "name": "y", "color": [1, 2, 3]}]}')
    pal = load_palette(tmp_path / "p.json")
    assert pal.names() == {3: "x", 0: "y"}
    assert pal.as_array().shape == (4, 3) and pal.as_array()[3].tolist() == [10, 20, 30]
    rgb = np.array([[[10, 20, 30], [1, 2, 3]]], np.uint8)
    assert pal.colors_to_ids(rgb, "m.png").tolist() == [[3, 0]]
    (tmp_path / "p.csv").write_text("r,g,b,id,name\n5,5,5,1,road\n9,9,9,2,car\n")
    pal2 = load_palette(tmp_path / "p.csv")
    assert pal2.ids == [1, 2] and pal2.names()[2] == "car"
    (tmp_path / "bad.csv").write_text("id,name\n1,road\n")
    with pytest.raises(DataError, match="bad.csv"):
        load_palette(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="m.png"):
        pal2.colors_to_ids(rgb, "m.png")


@pytest.mark.parametrize(
    "name, text",
    [
        ("map.json", '{"sky": [1, 2, 3], "road": "#804080"}'),
        ("inv.json", '{"#010203": 0, "128,64,128": 1}'),
        ("ids.json", '{"0": {"name": "sky", "colour": "1,2,3"}, "1": {"label": "road", "rgb": [128, 64, 128]}}'),
        ("list.json", "[[1, 2, 3], [128, 64, 128]]"),
        ("camvid.txt", "1 2 3\tsky\n128 64 128\troad\n"),
        ("plain.csv", "0,sky,1,2,3\n1,road,128,64,128\n"),
        ("spaces.txt", "id name r g b\n0 sky 1 2 3\n1 road 128 64 128\n"),
    ],
)
def test_palette_file_variants(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    pal = load_palette(tmp_path / name)
    rgb = np.array([[[1, 2, 3], [128, 64, 128]]], np.uint8)
    assert pal.colors_to_ids(rgb, "x.png").tolist() == [[0, 1]]
    if "list" not in name and "inv" not in name:
        assert pal.names() == {0: "sky", 1: "road"}
