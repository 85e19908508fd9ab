"""Class names and colour palettes of the supported data sets, palette files, and ``colorize``.

Index conventions are those of the loaders (after remapping): ADE20K 0..149 (raw value k+1; the
dontcare index 150 is raw 0), COCO-Stuff 0..181 (the stuff-164k ids minus one; dontcare 182 is
raw 255), Cityscapes 0..33 by labelId plus index 34 for "license plate" (id -1 in the official
table, never written to labelIds files) so that the paper's label_nc of 35 has a name per channel.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ccfpse.errors import DataError

# SceneParsing (ADE20K challenge 2016) classes 1..150, in file order.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

# COCO-Stuff 164k ids 1..182 (things 1..91 including the 11 ids COCO dropped, stuff 92..182).
COCO_STUFF_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window",
    "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush", "banner", "blanket",
    "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light",
    "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

DONTCARE_NAME = "dontcare"
DONTCARE_COLOR = (0, 0, 0)


def label_colormap(n: int) -> np.ndarray:
    """``n`` distinct colours (n, 3) uint8 by spreading the bits of the index over R, G, B
    (the PASCAL VOC scheme): neighbouring indices get clearly different colours."""
    idx = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _cityscapes_table() -> tuple[tuple[str, ...], np.ndarray]:
    try:
        # Only the label table: the package's other modules pull in matplotlib and friends.
        from cityscapesscripts.helpers.labels import labels as cs_labels
    except ImportError:
        raise DataError(
            "Cityscapes class names come from the cityscapesscripts package; "
            "install it with: pip install cityscapesscripts"
        ) from None
    by_id = {lab.id: lab for lab in cs_labels if lab.id >= 0}
    extra = [lab for lab in cs_labels if lab.id < 0]  # license plate
    ordered = [by_id[i] for i in sorted(by_id)] + extra
    names = tuple(lab.name for lab in ordered)
    colors = np.array([lab.color for lab in ordered], dtype=np.uint8)
    return names, colors


def cityscapes_classes() -> tuple[str, ...]:
    return _cityscapes_table()[0]


def cityscapes_palette() -> np.ndarray:
    return _cityscapes_table()[1].copy()


def class_names(dataset: str) -> tuple[str, ...]:
    """Class names by index for ``ade20k``, ``coco_stuff``, ``cityscapes`` or ``landscapes``."""
    if dataset == "ade20k":
        return ADE20K_CLASSES
    if dataset == "coco_stuff":
        return COCO_STUFF_CLASSES
    if dataset == "cityscapes":
        return cityscapes_classes()
    if dataset == "landscapes":
        from ccfpse.data.landscapes import CLASS_NAMES

        return tuple(CLASS_NAMES)
    raise DataError(f"no built-in class names for data set {dataset!r}")


def get_palette(dataset: str, dontcare: bool = True) -> np.ndarray:
    """(K, 3) uint8 colours by class index; with ``dontcare`` the ADE20K/COCO-Stuff palettes get
    one more entry (black) for their dontcare index."""
    if dataset in ("ade20k", "coco_stuff"):
        n = len(class_names(dataset))
        # Skip entry 0 of the colormap (black) so that only dontcare is black.
        colors = label_colormap(n + 1)[1:]
        if dontcare:
            colors = np.concatenate([colors, np.array([DONTCARE_COLOR], dtype=np.uint8)])
        return colors
    if dataset == "cityscapes":
        return cityscapes_palette()
    if dataset == "landscapes":
        from ccfpse.data.landscapes import PALETTE

        return np.array(PALETTE, dtype=np.uint8)
    raise DataError(f"no built-in palette for data set {dataset!r}")


def colorize(label_map, palette: "np.ndarray | Sequence | str | Palette | None" = None) -> np.ndarray:
    """(H, W) class indices (numpy or torch, also (1, H, W)) -> (H, W, 3) uint8 RGB.

    ``palette`` is a (K, 3) array/list, a data set name, a ``Palette`` or None (a generic
    colormap of 256 colours). Indices outside the palette are drawn black.
    """
    if hasattr(label_map, "detach"):
        label_map = label_map.detach().cpu().numpy()
    arr = np.asarray(label_map)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) label map, got shape {arr.shape}")
    if palette is None:
        colors = label_colormap(256)
    elif isinstance(palette, str):
        colors = get_palette(palette)
    elif isinstance(palette, Palette):
        colors = palette.as_array()
    else:
        colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    arr = arr.astype(np.int64)
    valid = (arr >= 0) & (arr < len(colors))
    out = colors[np.where(valid, arr, 0)]
    out[~valid] = 0
    return out.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Palette files: colour -> class id (and name), for colour-coded label masks and for display.


@dataclass(frozen=True)
class PaletteEntry:
    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """Class ids, names and colours read from a palette file (JSON or CSV)."""

    entries: tuple[PaletteEntry, ...]
    path: str = ""

    def __post_init__(self) -> None:
        codes = np.array([_rgb_code(e.color) for e in self.entries], dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        object.__setattr__(self, "_codes", codes[order])
        object.__setattr__(self, "_ids", np.array([e.id for e in self.entries], np.int64)[order])

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.entries]

    def names(self) -> dict[int, str]:
        return {e.id: e.name for e in self.entries}

    def as_array(self) -> np.ndarray:
        """(max id + 1, 3) colours by class id (ids without an entry are black)."""
        size = max(self.ids) + 1 if self.entries else 0
        out = np.zeros((size, 3), dtype=np.uint8)
        for e in self.entries:
            out[e.id] = e.color
        return out

    def colors_to_ids(self, rgb: np.ndarray, path: str | Path = "") -> np.ndarray:
        """(H, W, 3) uint8 colour mask -> (H, W) int64 class ids; unknown colours raise."""
        code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        pos = np.searchsorted(self._codes, code).clip(0, max(len(self._codes) - 1, 0))
        found = self._codes[pos] == code if len(self._codes) else np.zeros(code.shape, bool)
        if not found.all():
            bad, counts = np.unique(code[~found], return_counts=True)
            order = np.argsort(-counts)[:8]
            shown = ", ".join(
                f"({b >> 16},{(b >> 8) & 255},{b & 255}) x{c}px" for b, c in zip(bad[order], counts[order])
            )
            more = f" and {len(bad) - len(order)} more" if len(bad) > len(order) else ""
            raise DataError(
                f"{path}: {len(bad)} colour(s) of this label mask are not in the palette "
                f"{self.path or ''}: {shown}{more}; add them to the palette file (or save the mask "
                "without anti-aliasing/JPEG compression)"
            )
        return self._ids[pos]


def _rgb_code(color: Sequence[int]) -> int:
    r, g, b = (int(c) for c in color)
    return (r << 16) | (g << 8) | b


def _parse_color(value, where: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        text = value.strip().strip("()[]").strip()
        if text.startswith("#") and len(text) == 7:
            try:
                return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
            except ValueError:
                pass
        value = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        rgb = tuple(int(c) for c in value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: colour {value!r} is not [r, g, b] or '#rrggbb'") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise DataError(f"{where}: colour {value!r} must be three integers 0..255")
    return rgb  # type: ignore[return-value]


def _is_color(value) -> bool:
    if isinstance(value, str):
        text = value.strip()
        if not (text.startswith("#") or "," in text or text.startswith("(")):
            return False
    elif not (isinstance(value, (list, tuple)) and len(value) == 3):
        return False
    try:
        _parse_color(value, "")
        return True
    except DataError:
        return False


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


# Accepted spellings of the columns/keys of a palette entry.
_ID_KEYS = ("id", "class_id", "label_id", "index", "value", "trainid")
_NAME_KEYS = ("name", "class", "label", "class_name", "category")
_COLOR_KEYS = ("color", "colour", "rgb")
_Row = tuple  # (id or None, name or None, (r, g, b))


def _row_from_mapping(row: dict, where: str) -> _Row:
    low = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    color = next((low[k] for k in _COLOR_KEYS if k in low and low[k] not in ("", None)), None)
    if color is None:
        for r, g, b in (("r", "g", "b"), ("red", "green", "blue")):
            if all(k in low for k in (r, g, b)):
                color = [low[r], low[g], low[b]]
                break
    if color is None:
        raise DataError(f"{where}: missing the colour ('color': [r, g, b] or '#rrggbb', or r, g, b columns)")
    cid = next((low[k] for k in _ID_KEYS if k in low and low[k] not in ("", None)), None)
    if cid is not None and _as_int(cid) is None:
        raise DataError(f"{where}: class id {cid!r} is not an integer")
    name = next((low[k] for k in _NAME_KEYS if k in low and low[k] not in ("", None)), None)
    return (_as_int(cid) if cid is not None else None, None if name is None else str(name), _parse_color(color, where))


def _rows_from_json(data, where: str) -> list[_Row]:
    if isinstance(data, dict):
        for key in ("classes", "palette", "labels", "categories"):
            if isinstance(data.get(key), (list, dict)):
                return _rows_from_json(data[key], where)
        rows = []
        for key, value in data.items():
            at = f"{where} entry {key!r}"
            if _is_color(key):  # {"#ff0000": 3} / {"255,0,0": "road"} / {"#ff0000": {...}}
                if isinstance(value, dict):
                    cid, name, _ = _row_from_mapping({**value, "color": key}, at)
                else:
                    cid, name = _as_int(value), (value if isinstance(value, str) and _as_int(value) is None else None)
                rows.append((cid, name, _parse_color(key, at)))
            elif _is_color(value):  # {"road": [128, 64, 128]} / {"7": "#804080"}
                rows.append((_as_int(key), None if _as_int(key) is not None else str(key), _parse_color(value, at)))
            elif isinstance(value, dict):  # {"7": {"name": "road", "color": [...]}}
                cid, name, color = _row_from_mapping(value, at)
                if cid is None:
                    cid = _as_int(key)
                if name is None and _as_int(key) is None:
                    name = str(key)
                rows.append((cid, name, color))
            else:
                raise DataError(f"{at}: cannot read a class colour from {value!r}")
        return rows
    if isinstance(data, list):
        rows = []
        for i, item in enumerate(data):
            at = f"{where} entry {i}"
            if isinstance(item, dict):
                rows.append(_row_from_mapping(item, at))
            elif _is_color(item):  # a bare list of colours: the id is the position
                rows.append((None, None, _parse_color(item, at)))
            else:
                raise DataError(f"{at}: expected {{\"id\", \"name\", \"color\"}} or [r, g, b], got {item!r}")
        return rows
    raise DataError(f"{where}: expected a list of classes or {{\"classes\": [...]}}")


def _rows_from_text(text: str, where: str) -> list[_Row]:
    """CSV/TXT: with a header naming the columns (id, name, r, g, b or color), or headerless
    lines of ``r g b [name]``, ``id r g b [name]``, ``name r g b`` or ``#rrggbb [id] [name]``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    delimiter = next((d for d in (",", "\t", ";") if d in lines[0]), None)
    table = list(csv.reader(lines, delimiter=delimiter)) if delimiter else [ln.split() for ln in lines]
    known = set(_ID_KEYS + _NAME_KEYS + _COLOR_KEYS + ("r", "g", "b", "red", "green", "blue"))
    header = [t.strip().lower() for t in table[0]]
    if any(t in known for t in header):
        return [
            _row_from_mapping(dict(zip(header, (v.strip() for v in row))), f"{where} line {i + 2}")
            for i, row in enumerate(table[1:])
        ]
    rows = []
    for i, line in enumerate(lines):
        at = f"{where} line {i + 1}"
        tokens = [t for t in line.replace(",", " ").replace(";", " ").replace("\t", " ").split() if t]
        hexes = [t for t in tokens if t.startswith("#") and _is_color(t)]
        ints = [int(t) for t in tokens if t.lstrip("-").isdigit()]
        words = [t for t in tokens if t not in hexes and not t.lstrip("-").isdigit()]
        name = " ".join(words) or None
        if hexes:
            rows.append((ints[0] if ints else None, name, _parse_color(hexes[0], at)))
        elif len(ints) == 3:
            rows.append((None, name, _parse_color(ints, at)))
        elif len(ints) == 4:
            rows.append((ints[0], name, _parse_color(ints[1:], at)))
        else:
            raise DataError(f"{at}: expected 'r g b [name]', 'id r g b [name]' or a header row, got {line!r}")
    return rows


def load_palette(path: str | Path) -> Palette:
    """Read a palette file: colour -> class id (and name).

    JSON: ``{"classes": [{"id": 0, "name": "sky", "color": [r, g, b]}, ...]}`` (what we write),
    the bare list, a list of colours (id = position), or a mapping ``{name or id: colour}`` /
    ``{colour: id or name}``; colours are ``[r, g, b]``, ``"#rrggbb"`` or ``"r,g,b"``.
    CSV/TXT: a header naming the columns (``id``, ``name``, ``r``, ``g``, ``b`` or ``color``) or
    headerless lines ``r g b [name]`` / ``id r g b [name]``. Missing ids follow the entry order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"palette file {path} does not exist")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            rows = _rows_from_json(json.loads(text), str(path))
        else:
            rows = _rows_from_text(text, str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read palette file ({e})") from None
    entries = []
    for i, (cid, name, color) in enumerate(rows):
        cid = i if cid is None else cid
        if cid < 0:
            raise DataError(f"{path} entry {i}: class id {cid} must be >= 0")
        entries.append(PaletteEntry(cid, name or f"class_{cid}", color))
    if not entries:
        raise DataError(f"{path}: the palette has no classes")
    seen: dict[int, int] = {}
    for e in entries:
        code = _rgb_code(e.color)
        if code in seen and seen[code] != e.id:
            raise DataError(f"{path}: colour {e.color} is given to both class {seen[code]} and {e.id}")
        seen[code] = e.id
    return Palette(tuple(entries), str(path))


def write_palette(path: str | Path, names: Sequence[str], colors: Sequence[Sequence[int]]) -> None:
    """Write a JSON palette file (class i has ``names[i]`` and ``colors[i]``)."""
    classes = [
        {"id": i, "name": name, "color": [int(c) for c in color]}
        for i, (name, color) in enumerate(zip(names, colors))
    ]
    Path(path).write_text(json.dumps({"classes": classes}, indent=1) + "\n")
