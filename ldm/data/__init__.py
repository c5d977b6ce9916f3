"""Every image–caption source behind one entry point, `open_dataset` (see ldm/data/dataset.py)."""

from .dataset import ShapesDataset, open_dataset, parse_source

__all__ = ["ShapesDataset", "open_dataset", "parse_source"]
