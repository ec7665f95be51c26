"""A Hugging Face sequence-classification reward model behind vLLM's /classify protocol, one process per GPU.

For reward models vLLM cannot serve, ArmoRM above all (its gating head is its own code: vLLM has no
`LlamaForRewardModelWithGating`). The scoring is toaflow's in-process reward (toa_core.rewards.hf_classifier: the
model's chat template, truncation, `head: logits | score`), with concurrent requests gathered into batches
(toa_core.rewards.batching). Read it with `reward: {kind: http, api: classify, endpoints: [...]}`; with several
servers the client keeps every pair of one prompt on one of them (`reward.routing: affinity`, the default).

    CUDA_VISIBLE_DEVICES=8 python tools/reward_server.py --model RLHFlow/ArmoRM-Llama3-8B-v0.1 --head score \
        --trust-remote-code --port 8300

It reuses no computed prefix (transformers recomputes every pair): more servers add throughput, affinity only
balances them. A malformed request answers HTTP 400 (422 for a body FastAPI cannot read as an object) and a pair
the model scores as NaN or infinite answers 422: the client records those at once, without retrying or cooling the
replica down. A failed batch answers HTTP 500 to each of its requests: the client retries, and at worst records
the candidate as unscored (never 0.0). Runs in this project's environment (fastapi and uvicorn are installed).
With --trust-remote-code, the model's own code is imported under toa_core.rewards.remote_code_compat (ArmoRM's
code imports docstring constants transformers 5 removed); the server loads the model before it reports healthy.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


_ROLES = ("system", "user", "assistant")


def _conversation(body: dict) -> list[dict[str, str]]:
    """The request's messages as [{role, content}], ending with the assistant answer to score; HTTP 400 naming the
    problem for anything else (a malformed request is the client's error, and 4xx tells it not to retry)."""
    from fastapi import HTTPException

    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise HTTPException(400, "`messages` must be a list of at least two messages ending with the assistant "
                                 "response to score")
    conversation = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES \
                or not isinstance(message.get("content"), str):
            raise HTTPException(400, f"messages[{index}] must be an object with a role ({', '.join(_ROLES)}) and a "
                                     "string content")
        conversation.append({"role": message["role"], "content": message["content"]})
    if conversation[-1]["role"] != "assistant":
        raise HTTPException(400, "`messages` must end with the assistant response to score")
    if not isinstance(body.get("model"), (str, type(None))):
        raise HTTPException(400, "`model` must be a string")
    return conversation


def build_app(model: str, *, head: str, trust_remote_code: bool, max_length: int, batch_size: int,
              batch_wait_ms: float, device: str, dtype: str, served_name: str | None = None):
    """The FastAPI app: GET /health, GET /v1/models, POST /classify."""
    from fastapi import FastAPI, HTTPException

    from toa_core.interfaces import RewardError
    from toa_core.rewards.batching import BatchingReward
    from toa_core.rewards.hf_classifier import HFClassifierReward

    inner = HFClassifierReward(model, head=head, trust_remote_code=trust_remote_code, max_length=max_length,
                               batch_size=batch_size, device=device, dtype=dtype)
    reward = BatchingReward(inner, batch_size=batch_size, batch_wait_ms=batch_wait_ms, max_attempts=1)
    name = served_name or model
    inner.load()  # load now: a model that cannot load fails the start, not every scoring request
    app = FastAPI(title="toaflow reward server")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "toaflow"}]}

    @app.post("/classify")
    async def classify(body: dict) -> dict:
        conversation = _conversation(body)  # 400 for anything that is not a conversation ending in the answer
        if body.get("model") not in (None, name):
            raise HTTPException(404, f"The model `{body.get('model')}` does not exist.")
        try:
            score = await reward.score(conversation[:-1], conversation[-1]["content"])
        except RewardError as error:
            if error.permanent:  # this pair cannot be scored (a non-finite score): asking again changes nothing
                raise HTTPException(422, f"cannot score this pair: {error}") from None
            raise HTTPException(500, f"scoring failed: {error}") from None
        except Exception as error:  # noqa: BLE001 - the client retries a 500; it never reads a made-up score
            raise HTTPException(500, f"scoring failed: {type(error).__name__}: {error}") from None
        if not math.isfinite(score):
            raise HTTPException(422, f"cannot score this pair: the model gave a non-finite score ({score})")
        return {"object": "list", "model": name,
                "data": [{"index": 0, "label": "reward", "probs": [score], "num_classes": 1}]}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF folder, hub id or builtin:NAME")
    parser.add_argument("--served-model-name", help="the `model` requests must name (default: --model)")
    parser.add_argument("--head", choices=("logits", "score"), default="logits", help="score = ArmoRM's output")
    parser.add_argument("--trust-remote-code", action="store_true", help="load the model's own code (ArmoRM)")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args(argv)
    import uvicorn

    app = build_app(args.model, head=args.head, trust_remote_code=args.trust_remote_code,
                    max_length=args.max_length, batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms,
                    device=args.device, dtype=args.dtype, served_name=args.served_model_name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
