"""The export: a checkpoint traced (or converted for OpenVINO), checked against eager Hugging Face in
fp32 or through the precision gate on speech in a reduced precision, and written as a repository.

May import: `model`, `repository`, `triton_models`; never `server`. Nothing is re-exported here:
`export.speech` and `export.precision` stay importable without torch (`export.pipeline` loads it).
"""
