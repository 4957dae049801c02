"""``torch.nn.Module`` (``torch.save`` of the module and of its ``state_dict``) and tensors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import Written, versions

FORMAT = "torch"


def claims(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, (torch.nn.Module, torch.Tensor))


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import torch

    if isinstance(obj, torch.Tensor):
        torch.save(obj, directory / "tensor.pt")
        return {"kind": "tensor"}, versions("torch"), {}
    meta: dict = {"kind": "module"}
    if any(type(m).__module__ == "__main__" for m in obj.modules()):  # notebook-defined classes: kept by value
        import dill

        torch.save(obj, directory / "module.pt", pickle_module=dill)
        meta["pickle_module"] = "dill"
    else:
        torch.save(obj, directory / "module.pt")
    torch.save(obj.state_dict(), directory / "state_dict.pt")
    return meta, versions("torch", "dill"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import torch

    if meta.get("kind") == "tensor":
        return torch.load(directory / "tensor.pt", weights_only=True)
    kw: dict = {}
    if meta.get("pickle_module") == "dill":
        import dill

        kw["pickle_module"] = dill
    module = torch.load(directory / "module.pt", weights_only=False, **kw)
    module.load_state_dict(torch.load(directory / "state_dict.pt", weights_only=True))
    return module
