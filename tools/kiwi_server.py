"""COMET-Kiwi behind vLLM's /classify protocol, for `reward: {kind: http, api: classify}` (toaflow WMT configs).

Run it in an environment with unbabel-comet, fastapi and uvicorn (`pip install unbabel-comet fastapi uvicorn`), on
a GPU, with HF_TOKEN set (the Kiwi checkpoints are gated):
    CUDA_VISIBLE_DEVICES=32 HOST=127.0.0.1 PORT=8200 python tools/kiwi_server.py
Each request carries the conversation [user: source sentence, assistant: candidate translation], as
toa_core.rewards.http sends it; concurrent requests are scored together in batches of up to 64. A failed batch
answers HTTP 500 to every request in it, so the client retries and, at worst, records the candidate as unscored.
infra.servers cannot manage it (COMET checkpoints load neither in vLLM nor in `transformers serve`): start it by
hand before the run. KIWI_MODEL picks another checkpoint (e.g. Unbabel/wmt23-cometkiwi-da-xl).
"""
import asyncio
import os
from contextlib import asynccontextmanager

import uvicorn
from comet import download_model, load_from_checkpoint
from fastapi import FastAPI

MODEL = os.environ.get("KIWI_MODEL", "Unbabel/wmt22-cometkiwi-da")
BATCH, WAIT_S = 64, 0.01
model = load_from_checkpoint(download_model(MODEL))
queue: asyncio.Queue = asyncio.Queue()


async def batcher() -> None:
    loop = asyncio.get_running_loop()
    while True:
        items = [await queue.get()]
        deadline = loop.time() + WAIT_S
        while len(items) < BATCH and (left := deadline - loop.time()) > 0:
            try:
                items.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        data = [{"src": src, "mt": mt} for src, mt, _ in items]
        try:
            out = await asyncio.to_thread(model.predict, data, batch_size=BATCH, gpus=1, progress_bar=False)
            for (_, _, future), score in zip(items, out.scores):
                future.set_result(float(score))
        except Exception as error:  # every waiting request fails (HTTP 500): the client retries, never scores 0
            for _, _, future in items:
                future.set_exception(error)


@asynccontextmanager
async def lifespan(app: FastAPI):
    task = asyncio.create_task(batcher())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/classify")
async def classify(body: dict) -> dict:
    messages = body["messages"]
    source = [m["content"] for m in messages if m["role"] == "user"][-1]
    future = asyncio.get_running_loop().create_future()
    await queue.put((source, messages[-1]["content"], future))
    return {"data": [{"index": 0, "label": "kiwi", "probs": [await future]}]}


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8200")))
