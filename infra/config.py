"""Config sections owned by infra: where artifacts live, and which model servers a run manages."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from toa_core.config import RetryConfig, Section, repeated_names


class StoreConfig(Section):
    """The artifact store. `root` is a local folder (default) or `s3://bucket/prefix`."""
    root: str = Field("./artifacts", description="local folder or s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...); AWS when unset")
    region: str = "us-east-1"
    profile: str | None = Field(None, description="AWS profile; credentials otherwise come from the environment")
    multipart_threshold_mb: int = Field(64, ge=5)
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig(max_attempts=6, backoff_initial_s=0.5, backoff_max_s=10.0))


class ServerSpec(Section):
    """One model server a run starts itself (infra.servers). kinds:
    - vllm:          `vllm serve MODEL` (chat), in vLLM's own environment (`executable` = path to its `vllm`).
    - vllm_reward:   the same with `--runner pooling`, for a reward model scored over /classify or /pooling.
    - transformers:  `transformers serve MODEL_DIR --device cpu`, for CPU runs, demos and tests (one request at a
                     time unless `continuous_batching`).
    - router:        `vllm-router` (pip extra `router`) in front of replicas: the servers named in `replicas` (started
                     first) and/or running servers at `worker_urls`; `policy` picks the replica (consistent_hash on
                     the X-Session-ID header the toaflow clients send keeps each prompt on one replica's prefix cache).
    Agents and the reward model refer to it by `served_by: <name>`.
    """
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="referenced by ModelConfig/RewardConfig.served_by; also its log file's name")
    kind: Literal["vllm", "vllm_reward", "transformers", "router"] = "vllm"
    model: str | None = Field(None, description="HF folder, hub id (vLLM downloads it itself) or builtin:NAME; "
                              "router: the model id clients send (default: what its replicas serve)")
    served_model_name: str | None = Field(None, description="vLLM --served-model-name (default: `model`)")
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    gpus: list[int] | None = Field(None, description="GPU ids for CUDA_VISIBLE_DEVICES (vLLM kinds)")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16, description="vLLM context length; at most the model's own "
                                      "positions (config.json), checked before the server starts when the files "
                                      "are local; None = vLLM derives it from config.json")
    generation_config: Literal["vllm", "auto"] = Field(
        "vllm", description="vLLM kinds: where sampling fields a request leaves out come from. vllm = vLLM's neutral "
                            "defaults (`--generation-config vllm`: top_k, min_p, repetition_penalty off), so every "
                            "agent samples exactly as search.* says; auto = each model's generation_config.json")
    executable: str | None = Field(None, description="the `vllm` / `transformers` binary; default: next to this Python, else PATH")
    extra_args: list[str] = Field(default_factory=list, description="appended verbatim to the command line")
    api_key_env: str | None = Field(None, description="env var holding the key the server requires (passed as VLLM_API_KEY)")
    startup_timeout_s: float = Field(900.0, gt=0, description="health-check deadline (vLLM may load and compile for minutes)")
    cpu_threads: int | None = Field(1, ge=1, description="transformers kind: torch CPU threads (OMP_NUM_THREADS); "
                                    "1 avoids thrashing when the server shares the cores with other processes")
    continuous_batching: bool = Field(
        False, description="transformers kind: `--continuous-batching` (paged attention, the requests in flight decode "
                           "as one batch: about 3-4x the answers per second of SmolLM2 on 2 CPU cores at 12 requests "
                           "in flight, measured). transformers 5.23 samples EVERY request with the temperature and "
                           "top_p of the first request it got (and ignores `seed`): the agents it serves must sample "
                           "alike (checked when the config loads) and nothing else may send it requests")
    continuous_batching_blocks: int = Field(
        64, ge=1, description="continuous_batching: KV cache blocks (`--cb-num-blocks`; 256 tokens each, about 12 MB "
                              "each for SmolLM2-135M in fp32). Unset, transformers sizes the cache at 60% of the "
                              "host's RAM on CPU (13.7 GB resident measured on a 23 GB host)")
    continuous_batching_batch_tokens: int = Field(
        2048, ge=16, description="continuous_batching: tokens per forward pass (`--cb-max-batch-tokens`; longer "
                                 "prefills are split over several passes); transformers' default 8192 sizes "
                                 "attention masks of hundreds of MB")
    replicas: list[str] = Field(default_factory=list, description="router: names of servers of this config behind it")
    worker_urls: list[str] = Field(default_factory=list, description="router: root URLs of running replicas behind it")
    policy: Literal["consistent_hash", "cache_aware", "round_robin", "power_of_two", "random"] = Field(
        "consistent_hash", description="router: how vllm-router picks a replica (docs/operations.md explains the choice)")

    @model_validator(mode="after")
    def _kind_needs(self) -> "ServerSpec":
        if self.kind == "router":
            if not (self.replicas or self.worker_urls):
                raise ValueError(f"server '{self.name}': a router needs `replicas` (server names) or `worker_urls`")
            if self.worker_urls and not self.replicas and not self.model:
                raise ValueError(f"server '{self.name}': a router in front of `worker_urls` only needs `model` "
                                 "(the model id its replicas serve)")
        else:
            if not self.model:
                raise ValueError(f"server '{self.name}': kind '{self.kind}' needs `model`")
            if self.replicas or self.worker_urls:
                raise ValueError(f"server '{self.name}': `replicas` and `worker_urls` are for kind 'router'")
        return self

    @model_validator(mode="after")
    def _continuous_batching_is_transformers(self) -> "ServerSpec":
        if self.continuous_batching and self.kind != "transformers":
            raise ValueError(f"server '{self.name}': continuous_batching is a `transformers serve` option (kind "
                             f"transformers); vLLM batches continuously by itself: drop it from kind '{self.kind}'")
        return self

    @model_validator(mode="after")
    def _gpus_cover_parallelism(self) -> "ServerSpec":
        if self.gpus is not None and self.kind != "transformers" and len(self.gpus) < self.tensor_parallel_size:
            raise ValueError(f"server '{self.name}': tensor_parallel_size {self.tensor_parallel_size} "
                             f"needs at least that many `gpus`, got {self.gpus}")
        return self


class ServersConfig(Section):
    """Model servers a run starts and stops itself (filled in by infra.servers)."""
    managed: bool = Field(False, description="start the servers named here before the run, stop them after")
    # Added by infra.servers (additive): the servers themselves and the crash policy.
    servers: list[ServerSpec] = Field(default_factory=list)
    restart_on_crash: bool = Field(True, description="restart a managed server that exits during the run")
    max_restarts: int = Field(3, ge=0, description="restarts per server before the run gives up on it")

    @model_validator(mode="after")
    def _unique_names(self) -> "ServersConfig":
        names = [s.name for s in self.servers]
        repeated = repeated_names(names)
        if repeated:
            raise ValueError(f"server names must be unique; repeated: {repeated}")
        by_name = {s.name: s for s in self.servers}
        for router in (s for s in self.servers if s.kind == "router"):
            for name in router.replicas:
                replica = by_name.get(name)
                if replica is None or replica.kind == "router":
                    raise ValueError(f"server '{router.name}': replica '{name}' is not a model server of this "
                                     f"config ({', '.join(n for n, s in by_name.items() if s.kind != 'router')})")
                if replica.kind == "transformers":
                    # measured: the router re-serialises chat requests with vLLM/SGLang fields (skip_special_tokens,
                    # include_reasoning, ...), which vLLM accepts and `transformers serve` rejects with HTTP 422
                    raise ValueError(f"server '{router.name}': replica '{name}' is `transformers serve`, which "
                                     "rejects the extra fields vllm-router adds to requests; front vLLM replicas, "
                                     "or list several endpoints on the model instead (client-side affinity)")
            served = {by_name[n].served_model_name or by_name[n].model for n in router.replicas}
            if len(served) > 1:
                raise ValueError(f"server '{router.name}': its replicas serve different models {sorted(served)}; "
                                 "a router fronts copies of one model")
        return self
