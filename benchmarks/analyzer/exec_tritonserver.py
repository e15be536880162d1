"""Replace this process with the pip tritonserver, prepared as `python -m emotion_build serve` prepares it.

Model Analyzer launches `--triton-server-path` with its own flags and measures that process, so
this execs the binary (no Python parent left behind) with the backend directory, stub and library
path of emotion_build.server.install, which are the one source of how the wheel's server runs.
"""

from __future__ import annotations

import os
import sys

from emotion_build.server.install import find_tritonserver, server_environment


def main(argv: list[str]) -> None:
    install = find_tritonserver()
    command = [str(install.binary), f"--backend-directory={install.backends_dir}", *argv]
    if install.caches_dir is not None:
        command.append(f"--cache-directory={install.caches_dir}")
    os.execve(command[0], command, server_environment(install, os.environ))


if __name__ == "__main__":
    main(sys.argv[1:])
