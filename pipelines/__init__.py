"""Sampling: text-to-image and editing pipelines (diffusers-compatible), samplers by name, pipeline folders, CLIs."""

from pipelines.pipeline_image_to_image import ImageToImagePipeline
from pipelines.pipeline_inpaint import InpaintPipeline
from pipelines.pipeline_text_to_image import TextToImagePipeline

__all__ = ["ImageToImagePipeline", "InpaintPipeline", "TextToImagePipeline"]
