"""Evaluation on the built-in shapes data: the attribute reader (`reader`), adherence / diversity maths
(`metrics`) and the fidelity/diversity plot (`plot`). No pipeline imports: `pipelines.evaluate` drives
them."""
