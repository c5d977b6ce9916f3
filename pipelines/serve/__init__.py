"""`ldm-serve`: the web page and AUTOMATIC1111-compatible API over one loaded pipeline.

engine (requests → images, previews, cancel) → jobs (the queue and its worker) → a1111 (the API's shapes)
→ app (routes, token) → cli (the command).
"""
