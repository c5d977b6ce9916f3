"""Sampling: the diffusers-compatible `TextToImagePipeline`, samplers by name, pipeline folders, CLIs."""

from pipelines.pipeline_text_to_image import TextToImagePipeline

__all__ = ["TextToImagePipeline"]
