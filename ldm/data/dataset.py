"""`open_dataset`: one entry point for every image–caption source, built-in or yours, format guessed."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from . import shapes
from .transforms import flip, to_tensor

SHAPES_SIZES = {"train": 20_000, "test": 1_000, "heldout": 1_000}  # default lengths: an epoch, not a limit
BUILTIN_OPTIONS = {"shapes": {"objects", "size", "seed", "simple", "allpairs", "novelcolour", "novelshape",
                              "novelshare", "novelall"}, "emoji": {"size", "heldouttones"}}


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural shapes rendered on the fly; item i is a pure function of (seed, split, i, max_objects,
    simple). `simple`: the variant with one large centred object, captioned by colour and shape only.

    `scene(i)` is the ground truth of item i (before any random flip, which mirrors the scene and swaps
    "left"/"right" in the caption, so the caption stays true).
    """

    def __init__(
        self,
        *,
        resolution: int,
        split: str = "train",
        seed: int = 0,
        size: int | None = None,
        max_objects: int = shapes.DEFAULT_MAX_OBJECTS,
        random_flip: bool = False,
        simple: bool = False,
        all_pairs: bool = False,
        novel: str = "",
        novel_share: float = 1.0,
    ):
        if split not in shapes.SPLITS:
            raise ValueError(f"Unknown shapes split {split!r}; expected one of {', '.join(shapes.SPLITS)}.")
        shapes.check_variant(max_objects=max_objects, simple=simple)
        self.resolution, self.split, self.seed = resolution, split, seed
        self.max_objects, self.random_flip, self.simple = max_objects, random_flip, simple
        self.all_pairs, self.novel, self.novel_share = all_pairs, novel, novel_share
        if novel:
            shapes.novel_pairs(novel, split)  # raises for an unknown kind
        self.size = SHAPES_SIZES[split] if size is None else size
        if self.size < 1:
            raise ValueError(f"shapes size must be at least 1, got {self.size}.")
        self.skipped: dict[str, int] = {}  # procedural data is never bad

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} shapes")
        return np.random.default_rng([self.seed, shapes.SPLITS[self.split], index])

    def scene(self, index: int) -> shapes.Scene:
        """Ground-truth attributes of item `index`."""
        return shapes.sample_scene(self._rng(index), split=self.split, max_objects=self.max_objects,
                                   simple=self.simple, all_pairs=self.all_pairs, novel=self.novel,
                                   novel_share=self.novel_share)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        scene = shapes.sample_scene(rng, split=self.split, max_objects=self.max_objects, simple=self.simple,
                                    all_pairs=self.all_pairs, novel=self.novel, novel_share=self.novel_share)
        caption = shapes.caption_scene(scene, rng)
        image = shapes.render_scene(scene, self.resolution)
        if self.random_flip and random.random() < 0.5:
            image, caption = flip(image, caption)
        return {"pixel_values": to_tensor(image), "caption": caption}


def parse_source(source: str) -> tuple[str, dict[str, int]]:
    """'shapes:objects=1,size=6000' → ('shapes', {'objects': 1, 'size': 6000}); a path → (path, {})."""
    name, _, options_text = source.partition(":")
    if name not in BUILTIN_OPTIONS:
        return source, {}
    options = {}
    for item in filter(None, options_text.split(",")):
        key, _, value = item.partition("=")
        if key not in BUILTIN_OPTIONS[name] or not value.strip().isdigit():
            allowed = ", ".join(f"{k}=N" for k in sorted(BUILTIN_OPTIONS[name]))
            raise ValueError(f"Bad option {item!r} for {name!r}; allowed: {allowed}.")
        options[key] = int(value)
    return name, options


def _open_path(path: str, *, split: str, caption_column: str, caption_ext: str, options: dict):
    from . import sources, webdataset

    root = Path(path)
    is_tar_spec = path.endswith(".tar") or any(ch in path for ch in "{*?[")
    if is_tar_spec or (root.is_dir() and any(root.glob("*.tar"))):
        shards = webdataset.expand_shards(path)
        webdataset.check_has_pairs(shards)
        return webdataset.TarShardDataset(shards, **options)
    if not root.exists():
        raise FileNotFoundError(
            f"Data source {path!r} is neither a built-in name (shapes, emoji) nor an existing path."
        )
    if not root.is_dir():
        raise ValueError(f"{path} is a file; pass a folder of images, a .tar shard, or a built-in name.")
    if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
        return sources.open_hf_dataset(root, split=split, caption_column=caption_column, **options)
    if split != "train":
        raise ValueError(f"{path} has no splits; split={split!r} applies only to built-in and HF datasets.")
    metadata = next((root / m for m in ("metadata.jsonl", "metadata.csv") if (root / m).is_file()), None)
    if metadata is not None:
        records, skipped = sources.index_metadata_folder(
            root, metadata, resolution=options["resolution"], caption_column=caption_column,
            buckets=options["buckets"],
        )
    else:
        records, skipped = sources.index_caption_folder(
            root, resolution=options["resolution"], caption_ext=caption_ext, buckets=options["buckets"]
        )
    return sources.ImageCaptionDataset(records, skipped, name=path, **options)


def _percent(value: int, name: str) -> float:
    if not 1 <= value <= 100:
        raise ValueError(f"shapes {name} is a percentage from 1 to 100, got {value}.")
    return value / 100


def open_dataset(
    source: str | Path,
    *,
    resolution: int,
    split: str = "train",
    crop: str = "center",
    random_flip: bool = False,
    caption_column: str = "text",
    caption_ext: str = ".txt",
    seed: int = 0,
    size: int | None = None,
    buckets=None,
) -> torch.utils.data.Dataset:
    """Open any image–caption source; items: {"pixel_values": FloatTensor (3, R, R) in [-1, 1], "caption"}.

    source: "shapes[:objects=N,size=N,seed=N,simple=1,allpairs=1,novelcolour=1,novelshape=1,novelall=1,novelshare=P]",
    "emoji[:size=N,heldouttones=1]", a folder (sidecar captions or metadata.jsonl / metadata.csv), a HF `save_to_disk` folder, or .tar shards (a file, a folder, a
    `{000..009}` range, or a glob).
    size: length of shapes, or at most this many samples of other map-style sources.
    buckets: an `ldm.data.buckets.BucketSpec`: images of folders, tar shards and HF datasets are resized to the
    bucket nearest their aspect ratio instead of a square crop (built-in sets are square already). Tar shards stream
    (IterableDataset); all others are map-style with `skipped` (reason → count).
    """
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 pixels, got {resolution}.")
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}.")
    name, builtin = parse_source(str(source))
    if name == "shapes":
        simple, all_pairs = builtin.get("simple", 0), builtin.get("allpairs", 0)
        novel_colour, novel_shape = builtin.get("novelcolour", 0), builtin.get("novelshape", 0)
        novel_all = builtin.get("novelall", 0)
        for key, value in (("simple", simple), ("allpairs", all_pairs), ("novelcolour", novel_colour),
                           ("novelshape", novel_shape), ("novelall", novel_all)):
            if value not in (0, 1):
                raise ValueError(f"shapes {key} must be 0 or 1, got {value}.")
        if novel_all and (novel_colour or novel_shape):
            raise ValueError("shapes novelall=1 already draws the novel colour and shape; "
                             "drop novelcolour/novelshape.")
        return ShapesDataset(
            resolution=resolution,
            split=split,
            seed=builtin.get("seed", seed),
            size=builtin.get("size", size),
            max_objects=builtin.get("objects", 1 if simple else shapes.DEFAULT_MAX_OBJECTS),
            random_flip=random_flip,
            simple=bool(simple),
            all_pairs=bool(all_pairs),
            # "", colour, shape, both; or all
            novel="all" if novel_all else shapes.NOVEL_KINDS[novel_colour + 2 * novel_shape],
            novel_share=_percent(builtin.get("novelshare", 100), "novelshare"),
        )
    if name == "emoji":
        from .emoji import EmojiDataset

        heldout_tones = builtin.get("heldouttones", 0)
        if heldout_tones not in (0, 1):
            raise ValueError(f"emoji heldouttones must be 0 or 1, got {heldout_tones}.")
        return EmojiDataset(
            resolution=resolution, split=split, random_flip=random_flip, size=builtin.get("size", size),
            heldout_tones=bool(heldout_tones),
        )
    options = {"resolution": resolution, "crop": crop, "random_flip": random_flip, "buckets": buckets}
    dataset = _open_path(
        name, split=split, caption_column=caption_column, caption_ext=caption_ext, options=options
    )
    if size is not None:
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise ValueError("size applies to map-style sources; tar shards stream every sample.")
        dataset.records = dataset.records[:size]
    return dataset
