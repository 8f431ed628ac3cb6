"""The one place that names the container image every component runs in (registry-free name;

prefix your registry via `OSTAF_IMAGE`, which overrides it at compile time).
"""

import os

DEFAULT_IMAGE = "ostaf/ostaf:0.1.0"
IMAGE = os.environ.get("OSTAF_IMAGE", DEFAULT_IMAGE)
