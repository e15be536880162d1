"""The commands about which models a server holds: ``models`` lists them, ``load`` and ``unload`` roll a
model's versions on a server started with explicit model control (docs/serving.md, "Several models")."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..client import EmotionClient
from ..results import ServedModel
from .output import info_dict, render_rows
from .status import EXIT_OK

__all__ = ["add_model_parsers", "list_models", "load", "unload"]


def add_model_parsers(commands: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    listing = commands.add_parser(
        "models",
        parents=[common],
        help="list the emotion models the server holds",
        description="List every emotion model the server holds ready: name, versions, family, precision, "
        "labels and limits (call one with --model NAME).",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    load_parser = commands.add_parser(
        "load",
        parents=[common],
        help="serve --model as its repository now says (a new or pinned version)",
        description="Have the server read --model again from its repository and serve it with its stream "
        "model; the old version answers until the new one is ready. Needs a server started with "
        "`python -m emotion_build serve --model-control explicit`.",
    )
    unload_parser = commands.add_parser(
        "unload",
        parents=[common],
        help="stop serving --model",
        description="Stop serving --model and its live-stream model (explicit model control).",
    )
    return {"models": listing, "load": load_parser, "unload": unload_parser}


def model_dict(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "versions": list(model.versions), **info_dict(model.info)}


def list_models(client: EmotionClient, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        json.dump([model_dict(model) for model in models], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    rows = [("MODEL", "VERSIONS", "FAMILY", "WEIGHTS", "ENGINE", "CLIP S", "LABELS")]
    for model in models:
        info = model.info
        rows.append(
            (
                model.name + (" (UNTRAINED)" if info.untrained else ""),
                ",".join(map(str, model.versions)),
                info.family or "?",
                info.weights_dtype,
                info.engine or "?",
                f"{info.min_duration_s:g}-{info.max_duration_s:g}",
                " ".join(info.labels),
            )
        )
    sys.stdout.write(render_rows(rows))
    return EXIT_OK


def load(client: EmotionClient, args: argparse.Namespace) -> int:
    client.load_model()
    info = client.model_info()
    print(f"model '{client.model_name}' loaded: labels {' '.join(info.labels)}, {info.weights_dtype} weights")
    return EXIT_OK


def unload(client: EmotionClient, args: argparse.Namespace) -> int:
    client.unload_model()
    print(f"model '{client.model_name}' unloaded")
    return EXIT_OK
