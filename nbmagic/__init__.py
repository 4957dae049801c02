"""nbmagic: mark notebook cells as Kubeflow pipeline steps, run them locally or on a cluster, tune and serve.

``%load_ext nbmagic`` registers the magics; nothing heavy is imported here.
"""
from __future__ import annotations

__version__ = "0.1.0"
