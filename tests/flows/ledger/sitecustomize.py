"""Test instrument (tests/flows/test_distributed_synthesis.py): with TOAFLOW_TEST_LEDGER set and this folder on
PYTHONPATH, every Python process of a test (workers, their flow runs, orchestrator processes) appends one line
to that file per completion request the in-process transformers backend serves. Appends of one short line are
atomic, so the file counts the generations requested across all processes, including ones later killed."""
import importlib.abc
import importlib.util
import os
import sys

_LEDGER = os.environ.get("TOAFLOW_TEST_LEDGER")
_MODULE = "toa_core.backends.transformers_local"


def _patch(module) -> None:
    original = module.TransformersChatModel.generate

    async def generate(self, messages, params):
        fd = os.open(_LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {self.name}\n".encode())
        finally:
            os.close(fd)
        return await original(self, messages, params)

    module.TransformersChatModel.generate = generate


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch(module)


if _LEDGER:
    sys.meta_path.insert(0, _PatchOnImport())
