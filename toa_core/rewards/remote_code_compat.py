"""Lets remote modelling code written for transformers 4.x import under transformers 5.

transformers 5 dropped the per-model docstring constants (`LLAMA_INPUTS_DOCSTRING`, `LLAMA_START_DOCSTRING`, ...)
that 4.x modelling files re-exported. Code that only used them to decorate `forward` with documentation, as
ArmoRM's `modeling_custom.py` does

    from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel, LLAMA_INPUTS_DOCSTRING

now fails at import with ImportError, before a single weight is read. The constants are documentation text and
nothing else, so `apply()` puts a short placeholder string back under each missing name; it never replaces a name
the installed transformers still defines, and it changes no behaviour. Call it before any
`from_pretrained(..., trust_remote_code=True)` (the in-process reward does, and so does tools/reward_server.py
through it). Idempotent and cheap; `missing_names()` says what it would add (the preflight reports it).

If a remote model needs more than docstrings (a removed function or class), the shim does not pretend: its import
still fails, and `toa preflight` names the module and the missing symbol.
"""
from __future__ import annotations

import importlib
import threading

# module -> constant names that transformers 4.x defined there and 5.x removed; all were docstring text.
REMOVED_DOCSTRING_CONSTANTS: dict[str, tuple[str, ...]] = {
    "transformers.models.llama.modeling_llama": ("LLAMA_INPUTS_DOCSTRING", "LLAMA_START_DOCSTRING"),
    "transformers.models.mistral.modeling_mistral": ("MISTRAL_INPUTS_DOCSTRING", "MISTRAL_START_DOCSTRING"),
    "transformers.models.qwen2.modeling_qwen2": ("QWEN2_INPUTS_DOCSTRING", "QWEN2_START_DOCSTRING"),
    "transformers.models.gemma2.modeling_gemma2": ("GEMMA2_INPUTS_DOCSTRING", "GEMMA2_START_DOCSTRING"),
}
PLACEHOLDER = "\n    (documentation text removed in transformers 5; restored as a placeholder by toaflow)\n"

_lock = threading.Lock()


def missing_names() -> dict[str, list[str]]:
    """{module: [names]} the installed transformers lacks among REMOVED_DOCSTRING_CONSTANTS (modules it does not
    ship at all are left out: nothing imports from them)."""
    missing: dict[str, list[str]] = {}
    for module_name, names in REMOVED_DOCSTRING_CONSTANTS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        absent = [name for name in names if not hasattr(module, name)]
        if absent:
            missing[module_name] = absent
    return missing


def apply() -> dict[str, list[str]]:
    """Add a placeholder string under every missing docstring constant; returns what was added (empty when the
    installed transformers still has them all, or when they were added before)."""
    with _lock:
        added = missing_names()
        for module_name, names in added.items():
            module = importlib.import_module(module_name)
            for name in names:
                setattr(module, name, PLACEHOLDER)
        return added
