"""Build step: a Hugging Face speech emotion classifier (wav2vec2, HuBERT, WavLM, data2vec-audio)
-> TorchScript -> Triton model repository."""

__all__: list[str] = []
