"""The classifier as PyTorch modules: the supported families and how they load, the ragged module that
batches clips of any length without changing an answer, the guard every target serves it behind, and
the int8 products. Knows nothing of Triton, of exports or of servers.

May import: `triton_models` (the runner-side helpers, which import nothing of this package).
"""
