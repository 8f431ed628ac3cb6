"""The one place that names the container image every component runs in.

`OSTAF_IMAGE` overrides it at compile time (the image build script sets it to the tag it pushed).
"""

import os

DEFAULT_IMAGE = "ghcr.io/ostaf/ostaf:0.1.0"
IMAGE = os.environ.get("OSTAF_IMAGE", DEFAULT_IMAGE)
