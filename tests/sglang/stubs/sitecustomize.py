"""Test-tier shim for running SGLang on a CPU: empty modules for the GPU-only packages sgl_kernel and
torchvision, and Tensor.pin_memory as a no-op without CUDA. Only tests/sglang puts this on PYTHONPATH."""

import importlib.abc
import importlib.machinery
import sys
import types

_STUBBED = ("sgl_kernel", "torchvision")


class _Placeholder:
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()

    def __call__(self, *args, **kwargs):
        return _Placeholder()


def _placeholder(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Placeholder()


def _availability_probe() -> bool:
    """True when the lookup comes from importlib.util.find_spec (a "is it installed?" check), not an import."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_code.co_filename.replace("\\", "/").endswith(("importlib/util.py", "<frozen importlib.util>")):
            return True
        frame = frame.f_back
    return False


class _EmptyModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if not (name in _STUBBED or name.startswith(tuple(f"{s}." for s in _STUBBED))):
            return None
        if name == "torchvision" and _availability_probe():
            return None  # transformers must keep treating torchvision as absent (its image code would run)
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        # sglang reads names from these at import time (scalar types, InterpolationMode, ...), never on
        # the CPU path that runs: answer any attribute with an inert placeholder.
        module.__getattr__ = _placeholder
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _EmptyModules())

try:
    import torch

    if not torch.cuda.is_available():
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
except ImportError:
    pass

try:
    # Settle transformers' cached "is torchvision installed?" answer to no, before anything imports the stub.
    from transformers.utils import import_utils as _transformers_imports

    _transformers_imports.is_torchvision_available()
except ImportError:
    pass
