"""The command line's exit statuses and its one usage error."""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError"]

EXIT_OK = 0
"""Everything succeeded."""
EXIT_FAILED = 1
"""Some input failed, an endpoint is not ready, or the server could not be used."""
EXIT_USAGE = 2
"""Bad arguments (argparse's own status for them)."""
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the arguments found after parsing (e.g. a directory without --recursive)."""
