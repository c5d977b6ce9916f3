"""ldm/bucket_grid.py: the grid rows are the most-used buckets (widest first), and each row is what the
pipeline draws at that size from the seeded noise."""
import numpy as np
import pytest
import torch
from tiny_components import tiny_pipeline_folder

from ldm.bucket_grid import grid_sizes, sample_rows
from pipelines.pipeline_text_to_image import TextToImagePipeline


def test_the_most_used_buckets_in_pixels_widest_first():
    counts = {"8x8": 9, "6x10": 5, "10x6": 5, "16x4": 5, "4x16": 1}  # latent 'HxW' -> images
    # 8x8 has most images; of the three with 5, 16x4 has the largest area, and 6x10 is wider than 10x6.
    assert grid_sizes(counts, vae_factor=4) == [(40, 24), (32, 32), (16, 64)]
    assert grid_sizes(counts, vae_factor=8, n=1) == [(64, 64)]
    assert grid_sizes({"8x8": 3}, vae_factor=4) == [(32, 32)]  # square-only: one row
    with pytest.raises(ValueError, match="at least one row"):
        grid_sizes(counts, vae_factor=4, n=0)


def test_each_row_is_the_pipeline_at_that_size_from_the_same_noise(tmp_path):
    pipe = TextToImagePipeline.from_pretrained(str(tiny_pipeline_folder(tmp_path / "pipe")))
    pipe.set_progress_bar_config(disable=True)
    prompts, sizes = ["a red circle", "a blue square"], [(40, 24), (24, 40)]
    images, captions = sample_rows(pipe, prompts, sizes, seed=3, num_inference_steps=2, guidance_scale=2.0)
    assert captions == ["40x24: a red circle", "40x24: a blue square", "24x40: a red circle", "24x40: a blue square"]
    assert [image.size for image in images] == [(40, 24), (40, 24), (24, 40), (24, 40)]
    for row, (width, height) in enumerate(sizes):
        reference = pipe(prompts, width=width, height=height, generator=torch.Generator().manual_seed(3),
                         num_inference_steps=2, guidance_scale=2.0).images
        for column in range(2):
            assert np.array_equal(np.asarray(images[2 * row + column]), np.asarray(reference[column]))
