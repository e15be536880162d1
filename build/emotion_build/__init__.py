"""Build step: Hugging Face wav2vec2 emotion classifier -> TorchScript -> Triton model repository."""

__all__: list[str] = []
