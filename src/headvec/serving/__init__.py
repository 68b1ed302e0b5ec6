"""HTTP servers: a reward model (``headvec serve rm``) and an OpenAI-compatible chat model
(``headvec serve chat``), sharing one dynamic batcher, one error shape and one image decoder
(:mod:`headvec.serving.core`). Needs the ``serve`` extra (FastAPI, uvicorn), imported on first use.
"""

DEFAULT_HOST = "127.0.0.1"

__all__ = ["DEFAULT_HOST"]
