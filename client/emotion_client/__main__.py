"""``python -m emotion_client`` runs the ``emotion-client`` CLI."""

import sys

from .cli import main

sys.exit(main())
