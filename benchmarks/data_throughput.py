"""Images per second of every data source through a DataLoader, at 64 px, with 0 and 2 workers.

    python benchmarks/data_throughput.py [--n 512] [--resolution 64] [--workers 0 2] [--sources shapes tar]

User-data sources are built in a temporary folder from the same images: 320 x 256 JPEGs (resized and cropped,
as real photos are). Shapes and emoji are rendered on the fly. Prints one line per (source, workers).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from ldm.data import open_dataset
from ldm.data.shapes import render_scene, scene_for_index

BATCH_SIZE = 32
PHOTO_SIZE = (320, 256)  # wider than tall, so every sample pays for a resize and a crop


def _photos(n: int) -> list[bytes]:
    photos = []
    for i in range(n):
        image = render_scene(scene_for_index(i), 256).resize(PHOTO_SIZE)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def build_sources(root: Path, n: int) -> dict[str, str]:
    """Write the same n photos as a caption folder, a metadata folder, 4 tar shards and a HF dataset."""
    photos = _photos(n)
    (root / "folder").mkdir()
    (root / "metadata").mkdir()
    (root / "shards").mkdir()
    rows = []
    for i, data in enumerate(photos):
        (root / "folder" / f"{i:05d}.jpg").write_bytes(data)
        (root / "folder" / f"{i:05d}.txt").write_text(f"photo {i}")
        (root / "metadata" / f"{i:05d}.jpg").write_bytes(data)
        rows.append(json.dumps({"file_name": f"{i:05d}.jpg", "text": f"photo {i}"}))
    (root / "metadata" / "metadata.jsonl").write_text("\n".join(rows))
    for shard in range(4):
        with tarfile.open(root / "shards" / f"{shard:03d}.tar", "w") as tar:
            for i in range(shard, n, 4):
                for name, data in ((f"{i:05d}.jpg", photos[i]), (f"{i:05d}.txt", f"photo {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    sources = {
        "folder": str(root / "folder"),
        "metadata": str(root / "metadata"),
        "tar": str(root / "shards"),
    }
    try:
        import datasets

        table = datasets.Dataset.from_dict(
            {"image": [Image.open(io.BytesIO(p)) for p in photos], "text": [f"photo {i}" for i in range(n)]}
        )
        table.cast_column("image", datasets.Image()).save_to_disk(str(root / "hf"))
        sources["hf"] = str(root / "hf")
    except ImportError:
        logging.warning("datasets is not installed: skipping the HF source")
    return sources


def images_per_second(source: str, *, resolution: int, workers: int, n: int) -> float:
    dataset = open_dataset(source, resolution=resolution, random_flip=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        num_workers=workers,
        shuffle=not isinstance(dataset, torch.utils.data.IterableDataset),
    )
    seen, start = 0, time.perf_counter()  # worker start-up is included: a training epoch pays it too
    for batch in loader:
        seen += batch["pixel_values"].shape[0]
        if seen >= n:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="images per measurement")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--sources", nargs="+", default=None, help="subset, e.g. shapes tar (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"shapes": "shapes", "emoji": "emoji"}
        if args.sources is None or set(args.sources) - set(sources):
            sources.update(build_sources(Path(tmp), args.n))
        sources = {k: v for k, v in sources.items() if args.sources is None or k in args.sources}
        print(f"{'source':<10} {'workers':>7} {'images/s':>9}   ({args.resolution} px, batch {BATCH_SIZE})")
        for name, source in sources.items():
            for workers in args.workers:
                try:
                    rate = images_per_second(source, resolution=args.resolution, workers=workers, n=args.n)
                except (FileNotFoundError, ImportError) as err:
                    print(f"{name:<10} skipped: {err}")
                    break
                print(f"{name:<10} {workers:>7} {rate:>9.0f}")


if __name__ == "__main__":
    main()
