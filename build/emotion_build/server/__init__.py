"""Running tritonserver on a repository: finding and preparing the pip server and its backends (and
building Triton's libtorch backend), launching it with bounded memory, watching its processes and
its log, its endpoints, TLS and token auth, and `serve`'s supervision; perf_analyzer's command line.

May import: `repository`, `triton_models`; never `export` or `model` (torch stays off this path).
"""

from .launcher import TritonServer

__all__ = ["TritonServer"]
