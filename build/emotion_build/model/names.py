"""What the command line offers and prints before any model is loaded, free of torch and transformers:
the families' names, the default checkpoint, the untrained model's banner."""

from __future__ import annotations

from typing import Literal

__all__ = ["DEFAULT_MODEL", "FAMILY_NAMES", "UNTRAINED_BANNER", "FamilyName"]

FamilyName = Literal["wav2vec2", "hubert", "wavlm", "data2vec-audio"]
FAMILY_NAMES: tuple[FamilyName, ...] = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
"""The supported families (families.FAMILIES), by the names `--family` takes."""
DEFAULT_MODEL = "superb/wav2vec2-base-superb-er"

UNTRAINED_BANNER = """\
################################################################################
#  UNTRAINED MODEL: random weights stand in for {source}.
#  Served labels are real, the scores are noise. Use --model with real weights.
################################################################################"""
"""Printed before and after anything made of an untrained stand-in (the export, the demo's results)."""
