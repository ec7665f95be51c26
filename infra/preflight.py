"""`toa preflight`: everything about a run config that can be checked on a CPU host, before a GPU is reserved.

One `Check` per line: ok, problem (with the fix) or note (could not be checked here, and why). The checks:

- versions:  installed packages against the `==` pins in pyproject.toml.
- models:    for each model a config names (servers, agents, reward, training base model), its own files
             (local folder or hub cache; never downloaded): architecture known to the installed transformers (and
             vLLM when installed), trained context vs `max_model_len`/`max_tokens`/`max_length`, a chat template,
             {% generation %} markers where assistant-only loss is on, a pad token for sequence classifiers, and
             remote-code modules that import against the installed transformers (no weights loaded; with the
             toa_core.rewards.remote_code_compat shim the reward applies).
- servers:   the command lines toaflow would run, parsed by the installed vLLM's / vllm-router's own argument
             parsers (a note when one is not installed here), and a rough GPU-memory estimate (parameters x dtype)
             against the GPUs each server declares; no GPU claimed by two servers.
- reward:    the shape of a scoring batch (pairs x tokens) against the reward model's context and the responses.

A model whose files are not on this machine gets one note ("not checkable offline"), never a problem: the
preflight never touches the network. `problems(checks)` is what the exit code and the nightly flow act on.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from infra.config import ServerSpec
from infra.model_metadata import GENERATION_MARKER, ModelMetadata, local_metadata, parameters_from_name

REPO = Path(__file__).resolve().parents[1]
GPU_MEMORY_GB = 80.0  # an H100/A100 80 GB, what the shipped GPU configs are written for
VLLM_READ_AGAINST = "0.34"  # the vLLM version whose source the server command lines were read against
MAX_SHARED_UTILIZATION = 0.95  # servers sharing a GPU: vLLM reserves each one's share at start-up
KV_HEADROOM = 0.85  # weights may take at most this share of a server's GPU memory budget (the rest: KV cache)

Status = Literal["ok", "problem", "note"]


@dataclass(frozen=True)
class Check:
    """One line of the report."""
    status: Status
    subject: str  # what was checked, e.g. "server qwen2.5-math-rm-72b: context"
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status:<7}] {self.subject}: {self.detail}"
        return text + (f" -> fix: {self.fix}" if self.fix else "")


def problems(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if check.status == "problem"]


def report(checks: list[Check]) -> str:
    """The report as printed: one line per check, then a summary line."""
    found = problems(checks)
    notes = sum(check.status == "note" for check in checks)
    summary = (f"preflight: {len(found)} problem(s), {len(checks) - len(found) - notes} ok, {notes} note(s)")
    return "\n".join([check.line() for check in checks] + [summary])


# -- the config ------------------------------------------------------------------------------------------------

@dataclass
class _Config:
    """What the checks read: a full RunConfig, or only `training` for a training-only file."""
    run: Any | None  # runconfig.RunConfig
    training: Any  # training.config.TrainingConfig


def _load(path: str | Path, overrides: dict[str, Any] | None = None) -> _Config:
    from runconfig import load_config, read_config_mapping
    from training.config import load_stage_settings

    if "models" in read_config_mapping(path, overrides):
        run = load_config(path, overrides)
        return _Config(run=run, training=run.training)
    return _Config(run=None, training=load_stage_settings(path).training)


def run_preflight(config_path: str | Path, *, gpu_memory_gb: float = GPU_MEMORY_GB,
                  overrides: dict[str, Any] | None = None) -> list[Check]:
    """Every check for the config at `config_path` with `overrides` (dotted keys) applied; the config must
    validate (a config error raises ConfigError)."""
    config = _load(config_path, overrides)
    checks = check_versions()
    checks += check_models(config)
    if config.run is not None:
        checks += check_server_flags(config.run.servers.servers)
        checks += check_gpu_memory(config.run.servers.servers, gpu_memory_gb)
        checks += check_reward_batches(config.run)
    return checks


# -- versions --------------------------------------------------------------------------------------------------

def check_versions(pyproject: Path = REPO / "pyproject.toml") -> list[Check]:
    """Installed versions against the exact pins of the project's dependencies."""
    from packaging.requirements import Requirement

    if not pyproject.is_file():
        return [Check("note", "versions", f"{pyproject} not found: pins not checked (installed from a wheel?)")]
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = [Requirement(line) for line in project["dependencies"]]
    # extras (gpu, router, ...) are checked where they are installed: a CPU host has none of them
    extras = [Requirement(line) for lines in project.get("optional-dependencies", {}).values() for line in lines]
    pins = [req for req in pins if any(spec.operator == "==" for spec in req.specifier)]
    pins += [req for req in extras if any(spec.operator == "==" for spec in req.specifier) and _installed(req.name)]
    checks, matching = [], 0
    for req in pins:
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check("problem", f"versions: {req.name}", f"not installed (pinned {req.specifier})",
                                f"pip install '{req.name}{req.specifier}'"))
            continue
        if req.specifier.contains(installed, prereleases=True):
            matching += 1
        else:
            checks.append(Check("problem", f"versions: {req.name}", f"{installed} installed, pinned {req.specifier}",
                                f"pip install '{req.name}{req.specifier}' (the pinned set is tested together)"))
    checks = [Check("ok", "versions", f"{matching} of {len(pins)} pinned packages installed at their pins")] + checks
    if _installed("vllm"):
        checks.append(Check("ok", "versions: vllm", f"{importlib.metadata.version('vllm')} installed (toaflow's "
                            f"server command lines were checked against {VLLM_READ_AGAINST}; the flag checks below "
                            "use this one's parser)"))
    return checks


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# -- models ----------------------------------------------------------------------------------------------------

@dataclass
class _ModelUse:
    """One place a config names a model, and what that place asks of it."""
    label: str  # "server llama-3.1-8b", "reward", "agent tiny-a", "training base model"
    model: str
    role: Literal["chat", "classifier", "training"]
    context: int | None = None  # the context length it will be run with (max_model_len / max_length)
    context_key: str = ""  # where that number comes from, for the fix
    generates: int | None = None  # max_tokens it generates (chat)
    remote_code: bool = False  # the config lets this model's own code run (trust_remote_code)
    loaded_here: bool = True  # loaded by toaflow's processes (false: served by a process started by hand)
    server: ServerSpec | None = None
    assistant_only: str | None = None  # training: the SFT assistant_only_loss setting
    chat_template_choice: str = "model"  # training: training.common.chat_template


def model_uses(config: _Config) -> list[_ModelUse]:
    """Every model the config names, with what it is asked to do."""
    uses: list[_ModelUse] = []
    run = config.run
    if run is not None:
        servers = {spec.name: spec for spec in run.servers.servers}
        for spec in run.servers.servers:
            if spec.kind == "router":
                continue
            role = "classifier" if spec.kind == "vllm_reward" else "chat"
            uses.append(_ModelUse(f"server {spec.name}", spec.model, role, context=spec.max_model_len,
                                  context_key=f"servers.servers[{spec.name}].max_model_len",
                                  generates=run.search.max_tokens if role == "chat" else None, server=spec))
        for agent in run.models:
            if agent.served_by in servers:
                continue  # checked as its server
            uses.append(_ModelUse(f"agent {agent.name}", agent.model, "chat",
                                  generates=agent.max_tokens or run.search.max_tokens))
        judge = run.evaluation.judges.reward
        for label, reward in (("reward", run.reward), ("evaluation judge", judge)):
            if reward is None or not reward.model or reward.kind == "plugin":
                continue
            if reward.kind == "http" and reward.served_by in servers:
                continue  # checked as its server
            prefix = "reward" if label == "reward" else "evaluation.judges.reward"
            uses.append(_ModelUse(label, reward.model, "classifier" if reward.kind != "llm_judge" else "chat",
                                  context=reward.max_length, context_key=f"{prefix}.max_length",
                                  remote_code=reward.trust_remote_code, loaded_here=reward.kind != "http"))
    training = config.training
    if run is None or training.sft.enabled or training.dpo.enabled:
        uses.append(_ModelUse("training base model", training.common.base_model, "training",
                              context=training.common.max_length, context_key="training.common.max_length",
                              remote_code=training.common.trust_remote_code,
                              assistant_only=training.sft.assistant_only_loss if training.sft.enabled else None,
                              chat_template_choice=training.common.chat_template))
    return uses


def _merged(uses: list[_ModelUse]) -> list[_ModelUse]:
    """Agents that use the same model in the same way are checked once ("agents a, b, c")."""
    merged: dict[tuple, _ModelUse] = {}
    for use in uses:
        key = (use.model, use.role, use.context, use.generates, use.server is None, use.label.split()[0])
        if key in merged and use.server is None:
            first = merged[key]
            first.label = ("agents " + first.label.removeprefix("agents ").removeprefix("agent ")
                           + ", " + use.label.removeprefix("agent "))
        else:
            merged[key if use.server is None else (*key, use.label)] = use
    return list(merged.values())


def check_models(config: _Config) -> list[Check]:
    checks: list[Check] = []
    seen: set[tuple[str, str]] = set()
    for use in _merged(model_uses(config)):
        metadata = local_metadata(use.model)
        if metadata is None:
            if (use.model, "offline") not in seen:
                seen.add((use.model, "offline"))
                where = ("a built-in model not built on this machine yet (it is built on first use)"
                         if use.model.startswith("builtin:")
                         else "files not on this machine (local folder or hub cache)")
                checks.append(Check("note", f"{use.label} ({use.model})", f"{where}: not checkable offline"))
            continue
        checks += model_checks(use, metadata)
    return checks


def model_checks(use: _ModelUse, metadata: ModelMetadata) -> list[Check]:
    """The checks of one model use against the model's own files."""
    subject = f"{use.label} ({use.model})"
    checks = [_architecture_check(subject, use, metadata), _context_check(subject, use, metadata)]
    if use.role in ("chat", "training") or (use.role == "classifier" and use.server is None):
        checks.append(_template_check(subject, use, metadata))
    if use.role == "classifier" and use.server is None and use.loaded_here:
        checks.append(_pad_check(subject, metadata))  # vLLM does not pad: only in-process batches need one
    if metadata.auto_map:
        checks.append(remote_code_check(subject, use, metadata))
    return [check for check in checks if check is not None]


def _architecture_check(subject: str, use: _ModelUse, metadata: ModelMetadata) -> Check:
    import transformers

    architectures = metadata.architectures
    if not architectures:
        return Check("problem", subject, "config.json names no `architectures`",
                     "use a folder written by save_pretrained (its config.json lists the model class)")
    known = [arch for arch in architectures if hasattr(transformers, arch)]
    if not known and not metadata.auto_map:
        return Check("problem", subject, f"architecture {architectures[0]} is unknown to transformers "
                     f"{transformers.__version__} and the folder has no remote code (auto_map)",
                     "use a transformers version that has it, or a model with a supported architecture")
    detail = f"{architectures[0]} is known to transformers {transformers.__version__}" if known else \
        f"{architectures[0]} is the model's own code (auto_map)"
    if use.server is not None and use.server.kind.startswith("vllm"):
        supported = _vllm_architectures()
        if supported is None:
            detail += "; vLLM not installed here: its architecture list not checked"
        elif architectures[0] not in supported:
            return Check("problem", subject, f"vLLM does not support architecture {architectures[0]}",
                         "serve it with tools/reward_server.py (reward) or pick a model vLLM supports")
        else:
            detail += "; supported by the installed vLLM"
    return Check("ok", subject, detail)


def _vllm_architectures() -> set[str] | None:
    try:
        from vllm import ModelRegistry  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed (the usual case off GPU hosts) or broken
        return None
    return set(ModelRegistry.get_supported_archs())


def _context_check(subject: str, use: _ModelUse, metadata: ModelMetadata) -> Check:
    positions = metadata.positions
    if positions is None:
        return Check("note", subject, "config.json gives no context length: max_model_len not checkable")
    if use.context is not None and use.context > positions and use.role == "classifier" and use.server is None:
        return Check("ok", subject, f"{use.context_key} {use.context} is above the model's {positions} positions: "
                     f"the in-process reward truncates pairs at {positions} tokens")
    if use.context is not None and use.context > positions:
        what = "vLLM refuses it at start-up" if use.server else "positions past it were never trained"
        return Check("problem", subject, f"{use.context_key} {use.context} exceeds the model's {positions} positions "
                     f"({what})", f"set {use.context_key} to at most {positions}")
    window = use.context or positions
    if use.generates is not None and use.generates >= window and not (use.server and use.server.kind == "vllm"):
        return Check("note", subject, f"max_tokens {use.generates} >= the context of {window}: the longest answers "
                     "stop at the model's context (vLLM would refuse such requests; this backend cuts them)")
    if use.generates is not None and use.generates >= window:
        return Check("problem", subject, f"max_tokens {use.generates} leaves no room for the prompt in a context "
                     f"of {window}", f"lower search.max_tokens below {window} (or raise the context)")
    return Check("ok", subject, f"context {use.context or 'derived'} within the model's {positions} positions"
                 + (f", max_tokens {use.generates}" if use.generates is not None else ""))


def _template_check(subject: str, use: _ModelUse, metadata: ModelMetadata) -> Check:
    template, source = metadata.chat_template, "its tokenizer"
    if use.role == "training" and use.chat_template_choice != "model":
        from training.modeling import TrainingSetupError, chat_template_source

        try:
            template, source = chat_template_source(use.chat_template_choice), use.chat_template_choice
        except TrainingSetupError as error:
            return Check("problem", subject, str(error), "fix training.common.chat_template")
    if not template:
        return Check("problem", subject, "no chat template (tokenizer_config.json / chat_template.jinja): "
                     "conversations cannot be rendered", "use an Instruct/chat model, or add a template to its tokenizer")
    if use.role == "training" and use.assistant_only in ("on", "auto"):
        if not GENERATION_MARKER.search(template):
            consequence = ("SFT fails at start" if use.assistant_only == "on"
                           else "SFT silently trains on the prompt too (assistant-only loss turns itself off)")
            return Check("problem", subject, f"the chat template from {source} has no {{% generation %}} markers "
                         f"while training.sft.assistant_only_loss is {use.assistant_only}: {consequence}",
                         "set training.common.chat_template: builtin:llama-3.1 (Llama-3.1 models) or a marked "
                         ".jinja file; or training.sft.assistant_only_loss: off to train on whole conversations")
        return Check("ok", subject, f"chat template from {source}, assistant turns marked for assistant-only loss")
    return Check("ok", subject, f"chat template from {source}")


def _pad_check(subject: str, metadata: ModelMetadata) -> Check:
    if metadata.pad_token_id is None and metadata.tokenizer_pad_token is None:
        candidate = metadata.unused_pad_candidate()
        if candidate:
            return Check("ok", subject, f"no pad token of its own: batches pad with {candidate}, a special token "
                         "the chat template never writes")
        return Check("problem", subject, "sequence classifier without a pad token: batched scoring pads with EOS, "
                     "and the score is read at the last non-pad token, so a pair ending in EOS is scored one token early",
                     "set pad_token_id in config.json and pad_token in tokenizer_config.json to a token the chat "
                     "template never writes (e.g. a reserved special token)")
    return Check("ok", subject, f"pad token set ({metadata.tokenizer_pad_token or metadata.pad_token_id})")


def remote_code_check(subject: str, use: _ModelUse, metadata: ModelMetadata) -> Check:
    """Import every class the folder's auto_map names (its own modelling code) against the installed transformers,
    with the compatibility shim, without loading weights."""
    if not use.remote_code and not use.loaded_here:
        return Check("note", subject, "has remote code and is served by a process started by hand "
                     "(tools/reward_server.py --trust-remote-code); set trust_remote_code: true on this reward to "
                     "have the preflight import-check its code")
    if not use.remote_code:
        if any(hasattr(importlib.import_module("transformers"), arch) for arch in metadata.architectures):
            return Check("ok", subject, "has remote code, not used (trust_remote_code off; the stock class loads)")
        return Check("problem", subject, "the model's class is its own code (auto_map) but trust_remote_code is off",
                     "set trust_remote_code: true where this model is configured (only for code you trust)")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from toa_core.rewards import remote_code_compat

    shimmed = remote_code_compat.apply()
    failures = []
    for reference in sorted(set(metadata.auto_map.values())):
        reference = reference[0] if isinstance(reference, (list, tuple)) else reference
        if not reference:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                get_class_from_dynamic_module(reference, str(metadata.folder), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - any failure of the model's own code is the finding
            failures.append(f"{reference}: {type(error).__name__}: {_one_line(error)}")
    if failures:
        return Check("problem", subject, "remote code does not import against transformers "
                     f"{importlib.metadata.version('transformers')}: " + "; ".join(failures),
                     "pin a model revision whose code supports transformers 5, add the missing names to "
                     "toa_core/rewards/remote_code_compat.py if they are documentation only, or use a model "
                     "without remote code (Skywork/Skywork-Reward-V2-Llama-3.1-8B)")
    note = f" (with the compatibility shim for {', '.join(n for names in shimmed.values() for n in names)})" \
        if shimmed else " (with the compatibility shim)"
    return Check("ok", subject, f"remote code imports: {', '.join(sorted(metadata.auto_map))}{note}")


def _one_line(error: BaseException) -> str:
    return re.sub(r"\s+", " ", str(error)).strip()[:300]


# -- servers ---------------------------------------------------------------------------------------------------

def check_server_flags(specs: list[ServerSpec]) -> list[Check]:
    """Parse each server's command line with the installed vLLM's / vllm-router's argument parser."""
    from infra.servers import server_command

    checks: list[Check] = []
    for spec in specs:
        if spec.kind == "transformers":
            continue
        subject = f"server {spec.name}: flags"
        if spec.kind == "router":
            model = spec.model or next((s.served_model_name or s.model for s in specs if s.name in spec.replicas), "m")
            workers = [f"http://127.0.0.1:{9000 + i}" for i, _ in enumerate(spec.replicas)] + list(spec.worker_urls)
            argv = server_command(spec.model_copy(update={"executable": "vllm-router"}), 8000, model, workers).argv
            checks.append(_parse_with("vllm-router", _router_parser(), argv[1:], subject))
        else:
            argv = _vllm_argv(spec)
            # `vllm serve MODEL ...`: the serve subcommand adds the positional MODEL itself; its shared parser
            # (make_arg_parser) takes the same model as --model
            checks.append(_parse_with("vLLM", _vllm_serve_parser(), ["--model", argv[2], *argv[3:]], subject))
    return checks


def _vllm_argv(spec: ServerSpec) -> list[str]:
    from infra.servers import server_command

    # api_key_env only adds an environment variable; it must not fail the flag check when unset here
    return server_command(spec.model_copy(update={"executable": "vllm", "api_key_env": None}), 8000).argv


def _parse_with(tool: str, parse: Any, argv: list[str], subject: str) -> Check:
    if parse is None:
        return Check("note", subject, f"{tool} not installed here: flags not checked "
                     f"(run `toa preflight` where {tool} is installed to check them)")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit:
        message = _one_line(stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "refused")
        return Check("problem", subject, f"the installed {tool} refuses the command line: {message}",
                     "fix the server spec (extra_args, or a field toaflow maps to a flag) for this version")
    except Exception as error:  # noqa: BLE001 - a parser that validates values raises its own errors
        return Check("problem", subject, f"the installed {tool} refuses the command line: {_one_line(error)}",
                     "fix the server spec for this version")
    return Check("ok", subject, f"accepted by the installed {tool}: {' '.join(argv)}")


def _router_parser() -> Any:
    try:
        from vllm_router.launch_router import parse_router_args  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001
        return None
    return parse_router_args


def _vllm_serve_parser() -> Any:
    try:
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[import-not-found]
        try:
            from vllm.utils.argparse_utils import FlexibleArgumentParser  # type: ignore[import-not-found]
        except ImportError:
            from vllm.utils import FlexibleArgumentParser  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed here (vLLM lives in its own environment)
        return None
    parser = make_arg_parser(FlexibleArgumentParser())
    return parser.parse_args


def check_gpu_memory(specs: list[ServerSpec], gpu_memory_gb: float = GPU_MEMORY_GB) -> list[Check]:
    """Weights (from the files, or estimated from the config or the model's name) against the memory of the GPUs a
    server declares; and no GPU declared by two servers."""
    checks: list[Check] = []
    claims: dict[int, list[ServerSpec]] = {}
    for spec in specs:
        if spec.kind not in ("vllm", "vllm_reward"):
            continue
        for gpu in spec.gpus or []:
            claims.setdefault(gpu, []).append(spec)
            shared = claims[gpu]
            if len(shared) > 1 and sum(s.gpu_memory_utilization for s in shared) > MAX_SHARED_UTILIZATION:
                checks.append(Check("problem", f"server {spec.name}: gpus", f"GPU {gpu} is also declared by server(s) "
                                    f"{', '.join(repr(s.name) for s in shared[:-1])}; their gpu_memory_utilization "
                                    f"adds up to {sum(s.gpu_memory_utilization for s in shared):g} of it",
                                    "give each server its own GPUs, or lower their gpu_memory_utilization so the "
                                    f"sum stays at most {MAX_SHARED_UTILIZATION:g}"))
        metadata = local_metadata(spec.model)
        weight_bytes, how = (metadata.weight_bytes(), "from its files") if metadata else (None, "")
        if weight_bytes is None:
            params = parameters_from_name(spec.model)
            weight_bytes, how = (params * 2, "estimated from its name, bf16") if params else (None, "")
        subject = f"server {spec.name}: GPU memory"
        if weight_bytes is None:
            checks.append(Check("note", subject, "size unknown offline (no files, no size in the name): not checked"))
            continue
        per_gpu = weight_bytes / spec.tensor_parallel_size / 1e9
        budget = gpu_memory_gb * spec.gpu_memory_utilization
        line = (f"~{weight_bytes / 1e9:.1f} GB of weights ({how}) over {spec.tensor_parallel_size} GPU(s): "
                f"~{per_gpu:.1f} GB each of a {budget:.0f} GB budget ({gpu_memory_gb:g} GB x {spec.gpu_memory_utilization:g})")
        if per_gpu > budget * KV_HEADROOM:
            need = int(weight_bytes / 1e9 / (budget * KV_HEADROOM)) + 1
            checks.append(Check("problem", subject, line + ": no room left for the KV cache",
                                f"raise tensor_parallel_size to at least {need} (and list that many gpus)"))
        else:
            checks.append(Check("ok", subject, line))
    return checks


# -- reward ----------------------------------------------------------------------------------------------------

def check_reward_batches(run: Any) -> list[Check]:
    """A scoring batch is batch_size pairs of up to max_length tokens: it must hold a full-length response."""
    reward = run.reward
    if reward.kind in ("plugin",):
        return [Check("note", "reward batches", "plug-in reward: its batching is its own")]
    longest_response = max([agent.max_tokens or run.search.max_tokens for agent in run.models])
    shape = f"{reward.batch_size} pairs x up to {reward.max_length} tokens = {reward.batch_size * reward.max_length:,} tokens per batch"
    if reward.max_length <= longest_response:
        return [Check("problem", "reward batches", f"{shape}; a response of max_tokens {longest_response} plus its "
                      f"prompt does not fit in reward.max_length {reward.max_length}: its end would go unscored",
                      f"raise reward.max_length above {longest_response} (at most the reward model's context)")]
    return [Check("ok", "reward batches", f"{shape}; responses up to {longest_response} tokens fit with "
                  f"{reward.max_length - longest_response} tokens of prompt")]
