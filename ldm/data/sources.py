"""Map-style sources of users' data: folder with sidecar captions, imagefolder with metadata, HF dataset.

Every source indexes its samples once at construction, checking what is cheap to check (caption present,
non-empty and UTF-8; image header readable, not a decompression bomb, not too small: shorter side below the
resolution, or with buckets, smaller than its bucket, see `images.probe_image`) and
counting each rejected sample in `skipped` (reason → count). Images that fail only on full decode
(truncated files) are counted when first met in `__getitem__`, which then serves the next usable sample, so a
run never crashes on one bad file and never trains on it; `item_or_skip` instead hands back a marked skip for
its caller to count (the latent-cache encoder, whose DataLoader workers cannot count into this object).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from pathlib import Path

import torch

from .images import (
    IMAGE_EXTENSIONS,
    MISSING_IMAGE,
    NOT_UTF8,
    SKIPPED_KEY,
    BadSample,
    NoUsableSamples,
    decode_caption,
    decode_image,
    probe_image,
    skip_marker,
)
from .transforms import image_to_item

logger = logging.getLogger(__name__)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Records (image reference, caption) → {"pixel_values": (3, R, R) in [-1, 1], "caption": str}."""

    def __init__(
        self, records: list, skipped: Counter, *, resolution: int, crop: str, random_flip: bool, name: str,
        buckets=None,
    ):
        self.records, self.skipped, self.buckets = records, skipped, buckets
        self.resolution, self.crop, self.random_flip = resolution, crop, random_flip
        if not records:
            reasons = (
                ", ".join(f"{reason}: {count}" for reason, count in skipped.items()) or "no images found"
            )
            raise NoUsableSamples(f"{name} has no usable image–caption sample ({reasons}).", skipped)
        if skipped:
            logger.warning("%s: %d usable samples, skipped %s", name, len(records), dict(skipped))

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int):
        """Decoded PIL image of record `index` (raises BadSample)."""
        return decode_image(self.records[index][0], min_size=self.resolution, buckets=self.buckets)

    def item_or_skip(self, index: int) -> dict:
        """Item `index`, or `skip_marker(reason)` when its image fails to decode, counted by the caller: in a
        DataLoader worker `self.skipped` is the worker's copy, which the main process never sees."""
        try:
            image = self.load(index)
        except BadSample as bad:
            logger.warning("skipping sample %d (%s)", index, bad)
            return skip_marker(bad.reason)
        return image_to_item(image, self.records[index][1], resolution=self.resolution, crop=self.crop,
                             random_flip=self.random_flip, buckets=self.buckets)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.records)):
            item = self.item_or_skip((index + offset) % len(self.records))
            if SKIPPED_KEY not in item:
                return item
            self.skipped[item[SKIPPED_KEY]] += 1
        raise ValueError("No sample of this data set could be decoded.")


def _check_image(path: Path, skipped: Counter, resolution: int, buckets) -> bool:
    try:
        probe_image(path, min_size=resolution, buckets=buckets)
    except FileNotFoundError:
        skipped[MISSING_IMAGE] += 1
        return False
    except BadSample as bad:
        skipped[bad.reason] += 1
        logger.info("skipping %s (%s)", path, bad)
        return False
    return True


def index_caption_folder(root: Path, *, resolution: int, caption_ext: str, buckets=None) -> tuple[list, Counter]:
    """Records for every image under `root` (recursive) with a sidecar caption `<stem><caption_ext>`; too small
    is judged by `buckets` (a `BucketSpec`) when given, else by `resolution` (`images.probe_image`)."""
    records, skipped = [], Counter()
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        caption_path = path.with_suffix(caption_ext)
        try:
            caption = decode_caption(caption_path.read_bytes() if caption_path.is_file() else None)
        except BadSample as bad:
            skipped[bad.reason] += 1
            continue
        if _check_image(path, skipped, resolution, buckets):
            records.append((path, caption))
    return records, skipped


def _metadata_rows(path: Path) -> list[dict]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad caption is skipped, not the file.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path} line {number} is not valid JSON.") from None
    return rows


def index_metadata_folder(
    root: Path, metadata: Path, *, resolution: int, caption_column: str, buckets=None
) -> tuple[list, Counter]:
    """Records from `metadata` (jsonl or csv with `file_name` and `caption_column`), paths relative to it."""
    rows = _metadata_rows(metadata)
    if rows and not any(caption_column in row for row in rows):
        columns = ", ".join(sorted(rows[0]))
        raise ValueError(
            f"{metadata} has no caption column {caption_column!r} (columns: {columns}); set caption_column."
        )
    if rows and not any("file_name" in row for row in rows):
        raise ValueError(f"{metadata} has no 'file_name' column, which names each image.")
    records, skipped = [], Counter()
    for row in rows:
        try:
            caption = decode_caption(row.get(caption_column))
            caption.encode("utf-8")  # lone surrogates (bytes that were not UTF-8) fail here
        except UnicodeEncodeError:
            skipped[NOT_UTF8] += 1
            continue
        except BadSample as bad:
            skipped[bad.reason] += 1
            continue
        if not row.get("file_name"):
            skipped[MISSING_IMAGE] += 1
            continue
        path = metadata.parent / row["file_name"]
        if _check_image(path, skipped, resolution, buckets):
            records.append((path, caption))
    return records, skipped


class HFDiskDataset(ImageCaptionDataset):
    """A Hugging Face `datasets` dataset saved with `save_to_disk`; records are (row, caption), images are
    fetched per row undecoded and decoded by our safe decoder."""

    def __init__(self, hf_dataset, image_column: str, records: list, skipped: Counter, **options):
        self.hf_dataset, self.image_column = hf_dataset, image_column
        super().__init__(records, skipped, **options)

    def load(self, index: int):
        image = self.hf_dataset[int(self.records[index][0])][self.image_column]
        if image is None:
            raise BadSample(MISSING_IMAGE)
        data = image.get("bytes") or Path(image["path"]).read_bytes()
        return decode_image(data, min_size=self.resolution, buckets=self.buckets)


def _image_column(dataset) -> str:
    from datasets import Image as ImageFeature

    columns = [name for name, feature in dataset.features.items() if isinstance(feature, ImageFeature)]
    if not columns:
        raise ValueError(f"The dataset has no Image column (columns: {', '.join(dataset.column_names)}).")
    return columns[0]


def open_hf_dataset(
    path: Path, *, split: str, caption_column: str, resolution: int, **options
) -> HFDiskDataset:
    """A `save_to_disk` folder (Dataset, or DatasetDict from which `split` is taken)."""
    try:
        from datasets import DatasetDict, load_from_disk
        from datasets import Image as ImageFeature
    except ImportError:
        raise ImportError(
            f'{path} is a Hugging Face dataset; install datasets: pip install "ldm-t2i[datasets]".'
        ) from None
    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"{path} has no split {split!r} (splits: {', '.join(dataset)}).")
        dataset = dataset[split]
    if caption_column not in dataset.column_names:
        columns = ", ".join(dataset.column_names)
        raise ValueError(
            f"{path} has no caption column {caption_column!r} (columns: {columns}); set caption_column."
        )
    image_column = _image_column(dataset)
    dataset = dataset.cast_column(image_column, ImageFeature(decode=False))  # decode ourselves, safely
    records, skipped = [], Counter()
    for row, raw in enumerate(dataset[caption_column]):
        try:
            records.append((row, decode_caption(raw)))
        except BadSample as bad:
            skipped[bad.reason] += 1
    return HFDiskDataset(
        dataset, image_column, records, skipped, resolution=resolution, name=str(path), **options
    )
