"""``emotion-client``: classify audio files and live audio, check health, list labels, write load-test data.

::

    emotion-client classify PATH... [--recursive] [--top-k K] [--json | --csv] [--concurrency N]
    emotion-client timeline FILE [--window-s S] [--hop-s S] [--json | --csv] [--plot OUT.png]
    emotion-client evaluate (--manifest CSV | --iemocap DIR [--fold N]) [--report OUT.json]
                            [--confusion-png OUT.png]
    emotion-client health [--json]
    emotion-client labels [--json]
    emotion-client perf-data PATH... -o CLIPS.json [--lengths-s S...]
    emotion-client live (- | FILE) [--rate HZ] [--window-s S] [--hop-s S] [--realtime]
    emotion-client models [--json]
    emotion-client load | unload

Every command takes ``--url`` (repeatable, or a comma list: requests go round-robin),
``--timeout``, ``--retries``, ``--header KEY=VALUE``, ``--model`` (``--model-version``) and the TLS
options.
Results go to stdout; the progress bar, warnings and errors to stderr.

Exit status: 0 when everything succeeded, 1 when any file failed (or, for ``health``, any endpoint
is not ready, or the server could not be used at all), 2 for a usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import EmotionClientError
from .commands import classify, evaluate, health, labels, timeline
from .live import run_live
from .models import list_models, load, unload
from .parser import build_client, build_parser
from .perf_data import run_perf_data
from .status import EXIT_FAILED, EXIT_INTERRUPTED, UsageError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    command = commands[args.command]
    try:
        client = build_client(args)
    except (ValueError, TypeError) as e:
        command.error(str(e))
    try:
        with client:
            handler = {
                "classify": classify,
                "timeline": timeline,
                "evaluate": evaluate,
                "health": health,
                "labels": labels,
                "perf-data": run_perf_data,
                "live": run_live,
                "models": list_models,
                "load": load,
                "unload": unload,
            }[args.command]
            return handler(client, args)
    except UsageError as e:
        command.error(str(e))
    except EmotionClientError as e:
        print(f"emotion-client: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:  # an option the SDK refused, e.g. --top-k 0 or --concurrency 0
        command.error(str(e))
    except KeyboardInterrupt:
        print("emotion-client: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
