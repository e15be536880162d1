"""A Triton model repository: the one typed description of the served models, the configs rendered
from it, the writer that lays a repository out (and swaps it in whole), and the edge's request limit.

May import: `model`, `triton_models`.
"""
