"""``python -m appliance`` runs the ``nightbox`` command."""

import sys

from appliance.cli import main

sys.exit(main())
