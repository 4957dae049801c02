"""The container image cluster-side nbmagic code runs in (Katib trial runner, KServe transformer/predictor).

It is built from the repository's ``Dockerfile`` (``docker build -t REGISTRY/nbmagic:VERSION .``, then pushed)
and named by ``$NBMAGIC_IMAGE``; the default name is the local tag that build gives.
"""

from __future__ import annotations

import os

from .config import VERSION

IMAGE_ENV = "NBMAGIC_IMAGE"


def nbmagic_image() -> str:
    return os.environ.get(IMAGE_ENV) or f"nbmagic:{VERSION}"
