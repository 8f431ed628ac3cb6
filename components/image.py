"""The one place that names the container image every component runs in.

The name carries no registry: set `OSTAF_IMAGE` (e.g. REGISTRY/ostaf:TAG) at compile time.
"""

import os

DEFAULT_IMAGE = "ostaf/ostaf:0.1.0"
IMAGE = os.environ.get("OSTAF_IMAGE", DEFAULT_IMAGE)
