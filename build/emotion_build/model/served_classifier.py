"""The module every target serves: the traced classifier behind a scripted guard, saved without source paths.

The classifier is reachable without the ensemble, and Triton's libtorch backend can only fail a whole
batch: an exception in forward() answers every request of the execution with the same error. So the
served forward() never raises for anything a request can carry, and never lets one request touch
another's answer:

- A clip the model cannot compute (fewer samples than one frame needs, or a NaN or infinite sample)
  is left out of the model's batch and answered with an all-zero row: logits, probabilities and
  embedding all 0. A classified clip's probabilities sum to 1, so the zero row is unmistakable,
  and it is the defined answer of the libtorch classifier (the Python runner refuses such clips
  with INVALID_ARGUMENT before the model, so there it never appears). A row that still comes out
  non-finite (samples so large that the model's float32 sums overflow) gets the same zero row.
- A clip longer than the export's maximum duration gets the zero row too, without the model running
  on it: straight at the libtorch classifier a request of millions of samples would otherwise cost
  attention over every frame of it, on the GPU its batch-mates share.
- A request carrying several clips ([n, samples]) is n clips of `samples` each. Triton's
  accumulated element count gives one end per request, but its responder hands each request as
  many rows as its first dimension: without the per-item lengths (the `waveform_items` batch
  input, BATCH_ITEM_SHAPE) such a request took its neighbours' rows and shifted every answer after it.

TorchScript error messages quote the source behind each traced operation, file paths included
(the export machine's checkout and site-packages); `strip_source_paths` removes that debug
information from the saved file, so no error text a client can provoke carries a build path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .geometry import receptive_field

__all__ = ["UNLIMITED_SAMPLES", "ServedClassifier", "serve_form", "strip_source_paths"]

_DEBUG_SUFFIX = ".debug_pkl"


class ServedClassifier(nn.Module):
    """Scripted around the traced classifier, so that its branches stay dynamic in the export."""

    def __init__(
        self,
        classifier: torch.jit.ScriptModule,
        *,
        min_samples: int,
        max_samples: int,
        classes: int,
        embedding_size: int,
    ):
        super().__init__()
        self.classifier = classifier
        self.min_samples = min_samples
        """The receptive field: fewer samples give the model no frame to pool."""
        self.max_samples = max_samples
        """The export's --max-duration-s in samples, the limit the preprocess and the Python runner refuse at."""
        self.classes = classes
        self.embedding_size = embedding_size

    def forward(
        self,
        waveform: Tensor,
        waveform_ends: Tensor,
        waveform_items: Tensor = torch.tensor(0, dtype=torch.int32),  # noqa: B008 (TorchScript needs the literal)
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`waveform_items` is left out by callers that pass one clip per end (the Python runner, the export
        check); Triton's libtorch backend fills it with each batch item's length, [items, 1]. The default is
        a scalar: a constant with dimensions would be frozen on the CPU and meet CUDA tensors on a GPU."""
        flat = waveform.reshape(-1)
        if waveform_items.dim() > 0:
            ends = torch.cumsum(waveform_items.reshape(-1).to(torch.long), 0)
        else:
            ends = waveform_ends.reshape(-1).to(torch.long)
        starts = torch.cat([torch.zeros(1, dtype=torch.long, device=ends.device), ends[:-1]])
        lengths = ends - starts
        # int32 counts: a Triton request is under 2 GiB, so under 2**29 samples.
        bad_samples = torch.cat(
            [torch.zeros(1, dtype=torch.int32, device=flat.device), (~torch.isfinite(flat)).to(torch.int32).cumsum(0)]
        )
        answerable = (
            (lengths >= self.min_samples) & (lengths <= self.max_samples) & (bad_samples[ends] == bad_samples[starts])
        )
        rows = int(lengths.shape[0])
        logits = torch.zeros(rows, self.classes, dtype=torch.float32, device=flat.device)
        probabilities = torch.zeros(rows, self.classes, dtype=torch.float32, device=flat.device)
        embedding = torch.zeros(rows, self.embedding_size, dtype=torch.float32, device=flat.device)
        if bool(answerable.all()):
            logits, probabilities, embedding = self.classifier(flat, ends.to(torch.int32))
        elif bool(answerable.any()):
            # Slices, not a per-sample index: an oversized clip must not cost eight bytes a sample again.
            pieces: list[Tensor] = []
            for row in range(rows):
                if bool(answerable[row]):
                    pieces.append(flat[int(starts[row]) : int(ends[row])])
            kept = torch.cat(pieces)
            kept_ends = torch.cumsum(lengths[answerable], 0).to(torch.int32)
            kept_logits, kept_probabilities, kept_embedding = self.classifier(kept, kept_ends)
            logits[answerable] = kept_logits.float()
            probabilities[answerable] = kept_probabilities.float()
            embedding[answerable] = kept_embedding.float()
        finite = (
            torch.isfinite(logits).all(dim=1)
            & torch.isfinite(probabilities).all(dim=1)
            & torch.isfinite(embedding).all(dim=1)
        ).unsqueeze(1)
        return (
            torch.where(finite, logits, torch.zeros_like(logits)),
            torch.where(finite, probabilities, torch.zeros_like(probabilities)),
            torch.where(finite, embedding, torch.zeros_like(embedding)),
        )


UNLIMITED_SAMPLES = 2**31 - 1
"""For modules traced outside an export (benchmarks, tests of other behaviour): no upper length."""


def serve_form(traced: torch.jit.ScriptModule, config: Any, *, max_samples: int) -> torch.jit.ScriptModule:
    """`traced` behind the guard, sized from the Hugging Face model's config and the export's longest clip."""
    guarded: torch.jit.ScriptModule = torch.jit.script(
        ServedClassifier(
            traced,
            min_samples=receptive_field(config.conv_kernel, config.conv_stride),
            max_samples=max_samples,
            classes=int(config.num_labels),
            embedding_size=int(config.classifier_proj_size),
        )
    )
    return guarded


def strip_source_paths(path: Path) -> None:
    """Rewrite a saved TorchScript file without its debug records (each `.debug_pkl` maps code to the
    Python source it was traced from, paths and all). The code and weights are copied record by record
    with torch's own archive writer; errors then quote only the serialized code inside the file."""
    reader = torch._C.PyTorchFileReader(str(path))
    stripped = path.with_name(f".{path.name}.stripped")
    writer = torch._C.PyTorchFileWriter(str(stripped))
    for name in reader.get_all_records():
        if name.endswith(_DEBUG_SUFFIX):
            continue
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer, reader
    stripped.replace(path)
