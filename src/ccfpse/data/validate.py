"""Scan a data set before training: pairing, readable files, matching sizes, label values.

``validate_dataset`` decodes every label (PIL + numpy bincount, in a thread pool since PIL
releases the GIL while decoding), fully decodes the images of sets up to a few thousand samples
(so truncated files show up now; larger sets get a header read), and checks every label value
against label_nc / dontcare. Its ``DataReport`` is what ``ccfpse data check`` prints; the
trainer calls ``validate_dataset(ds).raise_for_problems()`` so that bad data stops before the
first step instead of as a device-side "index out of bounds" assert hours later.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ccfpse.config import Config
from ccfpse.data.datasets import (
    LabelRemap,
    PairedDataset,
    SampleFiles,
    build_dataset,
    channel_names,
    image_size,
    load_instance_image,
    load_rgb,
    read_raw_label,
)
from ccfpse.data.labels import Palette
from ccfpse.errors import DataError

# label_nc of the paper layouts (the files cannot tell, e.g. an ADE20K subset may miss classes).
FIXED_LABEL_NC = {"ade20k": 150, "coco_stuff": 182, "cityscapes": 35}
# Fully decoding images costs ~1-5 ms each: do it by default only for sets up to this size.
DECODE_IMAGES_UP_TO = 5000


@dataclass
class _FileScan:
    sample: SampleFiles
    label_size: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    problems: list[str] = field(default_factory=list)


def _value_counts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if raw.dtype == np.uint8:
        bc = np.bincount(raw.ravel(), minlength=256)
        values = np.flatnonzero(bc)
        return values.astype(np.int64), bc[values].astype(np.int64)
    values, counts = np.unique(raw, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _scan(s: SampleFiles, palette: Palette | None, decode_images: bool, labels_only: bool) -> _FileScan:
    out = _FileScan(s)
    try:
        raw = read_raw_label(s.label, palette)
        out.label_size = (raw.shape[1], raw.shape[0])
        out.values, out.counts = _value_counts(raw)
    except DataError as e:
        out.problems.append(str(e))
    if labels_only:
        return out
    for path, what in ((s.image, "image"), (s.instance, "instance map")):
        if path is None:
            continue
        try:
            if decode_images:
                img = load_rgb(path) if what == "image" else load_instance_image(path)
                size = img.size
            else:
                size = image_size(path, what)
        except DataError as e:
            out.problems.append(str(e))
            continue
        if what == "image":
            out.image_size = size
        if out.label_size is not None and size != out.label_size:
            out.problems.append(
                f"label {s.label} is {out.label_size[0]}x{out.label_size[1]} but {what} {path} is "
                f"{size[0]}x{size[1]}; a label and its {what} must have the same size"
            )
    return out


def _run_scans(ds: PairedDataset, decode_images: bool, labels_only: bool, num_threads: int | None) -> list[_FileScan]:
    threads = num_threads or min(8, (os.cpu_count() or 1) * 2)

    def job(s: SampleFiles) -> _FileScan:
        return _scan(s, ds.palette, decode_images, labels_only)

    if threads <= 1 or len(ds.samples) < 4:
        return [job(s) for s in ds.samples]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(job, ds.samples, chunksize=8))


def _infer(ds: PairedDataset, values_present: set[int]) -> tuple[int, str]:
    """label_nc the data implies, and why."""
    if ds.dataset_mode in FIXED_LABEL_NC:
        return FIXED_LABEL_NC[ds.dataset_mode], f"fixed by the {ds.dataset_mode} layout"
    dontcare = ds.remap.raw_dontcare
    if ds.palette is not None:
        ids = [i for i in ds.palette.ids if i != dontcare]
        if ids:
            return max(ids) + 1, f"from the palette {ds.palette.path} (largest class id {max(ids)})"
    real = sorted(v for v in values_present if v != dontcare)
    if not real:
        return 1, "no label values other than the dontcare value"
    note = f"; value {dontcare} is taken as unlabeled" if dontcare in values_present else ""
    return real[-1] + 1, f"largest label value {real[-1]} + 1{note}"


def infer_label_nc(source: Config | PairedDataset, split: str = "train") -> int:
    """label_nc for data that does not state it.

    Paper layouts: their fixed number (150, 182, 35). Custom data with a palette: the largest class
    id in the palette + 1. Otherwise the largest value found in the label files + 1, not counting
    the dontcare value (``data.ignore_label``, 255 by default).
    """
    ds = source if isinstance(source, PairedDataset) else build_dataset(
        source, split, train=False, images_required=False, allow_unpaired=True
    )
    if ds.dataset_mode in FIXED_LABEL_NC or ds.palette is not None:
        return _infer(ds, set())[0]
    values: set[int] = set()
    for scan in _run_scans(ds, False, True, None):
        if scan.problems:
            raise DataError(scan.problems[0])
        values.update(int(v) for v in scan.values)
    return _infer(ds, values)[0]


@dataclass
class DataReport:
    dataset_mode: str
    split: str
    where: str
    palette: str | None
    num_pairs: int
    unpaired: list[str]
    image_sizes: Counter
    value_pixels: dict[int, int]
    value_files: dict[int, int]
    label_nc: int
    contain_dontcare: bool
    use_instance: bool
    inferred_label_nc: int
    inferred_from: str
    remap: LabelRemap
    class_names: list[str]
    decoded_images: bool
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise one DataError with the first problems (each names its file)."""
        if self.problems:
            first = "; ".join(self.problems[:3])
            more = f" (and {len(self.problems) - 3} more problems; run `ccfpse data check`)" if len(self.problems) > 3 else ""
            raise DataError(f"{len(self.problems)} data problem(s): {first}{more}")

    def format(self, max_listed: int = 20) -> str:
        lines = [f"data set: {self.dataset_mode} (split {self.split})", f"  files: {self.where}"]
        if self.palette:
            lines.append(f"  palette: {self.palette}")
        lines.append(f"pairs found: {self.num_pairs}")
        if self.unpaired:
            lines.append(f"unpaired files: {len(self.unpaired)}")
            lines += [f"  {u}" for u in self.unpaired[:max_listed]]
            if len(self.unpaired) > max_listed:
                lines.append(f"  ... and {len(self.unpaired) - max_listed} more")
        else:
            lines.append("unpaired files: none")
        how = "fully decoded" if self.decoded_images else "from file headers"
        if self.image_sizes:
            common = self.image_sizes.most_common(8)
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in common)
            extra = f", ... {len(self.image_sizes)} distinct sizes" if len(self.image_sizes) > len(common) else ""
            lines.append(f"image sizes (WxH, {how}): {sizes}{extra}")
        else:
            lines.append("image sizes: no images")
        lines.append("label values (raw value -> class index: pixels, files):")
        targets = self.remap.map_values(np.array(sorted(self.value_pixels), dtype=np.int64))
        for raw, target in zip(sorted(self.value_pixels), targets):
            if target < 0:
                name = "OUT OF RANGE"
            else:
                name = f"{target} {self.class_names[target]}" if target < len(self.class_names) else str(target)
            lines.append(f"  {raw:>5} -> {name}: {self.value_pixels[raw]} px in {self.value_files[raw]} files")
        lines.append(f"label_nc: {self.label_nc}; inferred from the data: {self.inferred_label_nc} ({self.inferred_from})")
        lines.append(f"contain_dontcare_label: {self.contain_dontcare}; use_instance: {self.use_instance}")
        if self.problems:
            lines.append(f"problems: {len(self.problems)}")
            lines += [f"  {p}" for p in self.problems[:max_listed]]
            if len(self.problems) > max_listed:
                lines.append(f"  ... and {len(self.problems) - max_listed} more")
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def validate_dataset(
    source: Config | PairedDataset,
    split: str = "train",
    *,
    infer_label_nc: bool = False,
    decode_images: bool | None = None,
    num_threads: int | None = None,
) -> DataReport:
    """Scan every sample of ``source`` (a data set, or a config to build one for ``split``).

    With ``infer_label_nc`` (custom data whose label_nc is not given) the values are checked
    against the inferred label_nc instead of the configured one. ``decode_images`` fully
    decodes images and instance maps, which finds truncated files before training; the default
    (None) does so for sets of at most ``DECODE_IMAGES_UP_TO`` samples and reads only the headers
    of larger ones (their broken files still stop training with a DataError naming the file).
    Unpaired files are reported as problems when the data set was built with
    ``allow_unpaired=True`` (which a config source does).
    """
    if isinstance(source, PairedDataset):
        ds = source
    else:
        ds = build_dataset(source, split, train=False, allow_unpaired=True)
    if decode_images is None:
        decode_images = len(ds.samples) <= DECODE_IMAGES_UP_TO
    scans = _run_scans(ds, decode_images, False, num_threads)

    pixels: Counter = Counter()
    files: Counter = Counter()
    sizes: Counter = Counter()
    for scan in scans:
        for v, c in zip(scan.values.tolist(), scan.counts.tolist()):
            pixels[v] += c
            files[v] += 1
        if scan.image_size is not None:
            sizes[scan.image_size] += 1

    inferred, why = _infer(ds, set(pixels))
    remap = ds.remap
    if infer_label_nc and ds.dataset_mode not in FIXED_LABEL_NC:
        remap = LabelRemap(inferred, remap.contain_dontcare, remap.shift, remap.dontcare_raw)
    problems = list(ds.unpaired)
    for scan in scans:
        problems += scan.problems
        if scan.values.size:
            bad = scan.values[remap.map_values(scan.values) < 0]
            if bad.size:
                problems.append(remap.describe(bad, scan.sample.label))

    names = channel_names(ds.dataset_mode, ds.palette, remap.label_nc, remap.contain_dontcare)
    return DataReport(
        dataset_mode=ds.dataset_mode,
        split=ds.split,
        where=ds.where,
        palette=ds.palette.path if ds.palette is not None else None,
        num_pairs=len(ds.samples),
        unpaired=list(ds.unpaired),
        image_sizes=sizes,
        value_pixels=dict(pixels),
        value_files=dict(files),
        label_nc=remap.label_nc,
        contain_dontcare=remap.contain_dontcare,
        use_instance=ds.use_instance,
        inferred_label_nc=inferred,
        inferred_from=why,
        remap=remap,
        class_names=names,
        decoded_images=decode_images,
        problems=problems,
    )
