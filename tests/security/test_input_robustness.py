"""Hostile or broken inputs (issue 21): each one used to hang, crash or leak on main; now it is screened, recorded
or refused, and the run goes on."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


# -- leakage screening is linear-time ---------------------------------------------------------------------------

SCREEN_SCRIPT = r"""
import json, sys
from toa_core.leakage import check_answer, load_rules
rules = load_rules()
n = 20_000
answers = {
    "spaces": "Here is" + " " * n + "x",
    "spaces_preamble": "Here is" + " " * n + "the improved answer:\nThe sky is blue because air scatters blue light.",
    "note": "note" + " " * n + "x",
    "blank_lines": "x" + "\n" * n + "y",
    "mixed_whitespace": "x" + "\n \t" * n + "y",
}
print(json.dumps({name: check_answer(text, rules).verdict for name, text in answers.items()}))
"""


def test_20000_spaces_after_here_is_are_screened_quickly_and_correctly():
    # On main the first answer alone took about a minute (quadratic backtracking); 60 s is a hang guard, not a
    # timing assertion.
    done = subprocess.run([sys.executable, "-c", SCREEN_SCRIPT], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    verdicts = json.loads(done.stdout)
    assert verdicts["spaces"] == "clean"
    assert verdicts["spaces_preamble"] == "stripped"  # the preamble is still recognised across the space run
    assert verdicts["note"] == verdicts["blank_lines"] == verdicts["mixed_whitespace"] == "clean"


# -- invalid Unicode --------------------------------------------------------------------------------------------

def test_a_lone_surrogate_row_is_quarantined_at_ingest(tmp_path):
    from toa_core.ingest import IngestConfig, load_prompts

    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": "broken \\ud800 text"}\n'
                      '{"messages": [{"role": "user", "content": "also \\udfff"}]}\n{"prompt": "fine too"}\n')
    report = load_prompts(IngestConfig(source=str(source)))
    assert [p.messages[-1]["content"] for p in report.prompts] == ["fine", "fine too"]
    assert [(q["line"], q["field"]) for q in report.quarantined] == [(2, "prompt"), (3, "messages[0].content")]
    assert "lone surrogate" in report.quarantined[0]["reason"]
    json.dumps(report.quarantined).encode("utf-8")  # the quarantine file can be written


def scripted_server(body: bytes, status: int = 200):
    """An OpenAI-compatible endpoint on loopback answering every POST with `body` (raw JSON text)."""
    from tests.evaluation.fake_judge import FakeJudge

    return FakeJudge(lambda request: (status, body.decode("ascii")))


def completion_body(content) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


BAD_BODIES = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "nested object": b'{"choices": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    "a list": b"[1, 2, 3]",
    "choices is a string": b'{"choices": "none"}',
    "message is a list": b'{"choices": [{"message": [1]}]}',
    "content is a number": b'{"choices": [{"message": {"content": 5}}]}',
    "content is an object": b'{"choices": [{"message": {"content": {"a": 1}}}]}',
    "odd usage and finish_reason": b'{"choices": [{"message": {"content": "ok"}, "finish_reason": [1]}], '
                                   b'"usage": [1, 2]}',
    "NaN everywhere": b'{"choices": [{"message": {"content": NaN}}], "usage": {"prompt_tokens": NaN}}',
    "lone surrogate": completion_body("\ud800 broken"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_generate_never_raises_on_a_bad_body(name):
    from toa_core.backends.openai_http import OpenAIChatModel
    from toa_core.config import ModelConfig, RetryConfig
    from toa_core.interfaces import SamplingParams

    async def one(url):
        agent = OpenAIChatModel(ModelConfig(name="a", model="m", endpoints=[url], retry=RetryConfig(
            max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02, connect_timeout_s=2, read_timeout_s=5)))
        try:
            return await agent.generate([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=4))
        finally:
            await agent.aclose()

    with scripted_server(BAD_BODIES[name]) as server:
        generation = asyncio.run(one(server.endpoint))
    if name == "odd usage and finish_reason":  # usable text: kept, the odd fields dropped
        assert generation.text == "ok" and generation.finish_reason is None and generation.error is None
        return
    assert generation.text is None and generation.error, name
    generation.error.encode("utf-8")  # the error text itself is storable
    if name == "lone surrogate":
        assert "invalid Unicode" in generation.error


def test_a_model_server_answering_invalid_unicode_gives_error_candidates_and_the_run_finishes(tmp_path,
                                                                                           prefect_harness):
    """Prompts with a surrogate row (quarantined) and an agent whose server answers with a lone surrogate (its
    candidates are errors): the shard's table is written and the run finishes."""
    from bench.loadserver import LoadServer
    from flows.synthesize import synthesize
    from infra.store import open_store
    from tests.faults.helpers import write_config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"question {i}"}) + "\n" for i in range(3))
                       + '{"instruction": "a broken \\ud800 question"}\n')
    with LoadServer(response_tokens=4) as good, scripted_server(completion_body("\udfff bad answer")) as bad:
        config = write_config(tmp_path / "c.yaml", prompts=prompts, store={"root": str(tmp_path / "store")},
                              budget=4, shard_size=4, agents=[{"name": "good", "url": good.base_url},
                                                              {"name": "bad", "url": bad.endpoint}])
        result = synthesize(config=str(config), run_id="unicode")
    store = open_store(str(tmp_path / "store"))
    quarantine = [json.loads(line) for line in store.read_text("runs/unicode/quarantine.jsonl").splitlines()]
    assert len(quarantine) == 1 and "lone surrogate" in quarantine[0]["reason"]
    shards = [k for k in store.list("runs/unicode/samples/") if k.endswith(".parquet")]
    rows = [row for key in shards for row in pq.read_table(io.BytesIO(store.read_bytes(key))).to_pylist()]
    bad_rows = [row for row in rows if row["model"] == "bad"]
    assert bad_rows and all(row["error"] and "invalid Unicode" in row["error"] for row in bad_rows)
    assert any(row["model"] == "good" and row["error"] is None for row in rows)
    assert len({row["prompt_id"] for row in rows}) == 3
    assert result["counts"]["sft_train"] + result["counts"]["sft_test"] == 3


# -- the reward server ------------------------------------------------------------------------------------------

@pytest.fixture
def reward_app(monkeypatch):
    """tools/reward_server.py's app around a stand-in model that scores "nan" as NaN (no weights loaded)."""
    import toa_core.rewards.hf_classifier as hf_classifier
    from toa_core.rewards.in_process import InProcessReward

    sys.path.insert(0, str(REPO / "tools"))
    import reward_server

    class StandIn(InProcessReward):
        def __init__(self, *args, **kwargs):
            self.name = "stand-in"

        def load(self):  # the server loads its model before it reports healthy; there are no weights here
            pass

        def _score_sync(self, pairs):
            return [float("nan") if response == "nan" else float(len(response)) for _, response in pairs]

    monkeypatch.setattr(hf_classifier, "HFClassifierReward", StandIn)
    app = reward_server.build_app("rm", head="logits", trust_remote_code=False, max_length=64, batch_size=4,
                                  batch_wait_ms=1, device="cpu", dtype="float32")
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        yield client


GOOD = {"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc"}]}


@pytest.mark.parametrize("body", [
    {"model": "rm", "messages": [{"role": "user", "content": "q"}, "not a message"]},
    {"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]},
    {"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
    {"model": "rm", "messages": "q"},
    {"model": "rm", "messages": [{"role": "assistant", "content": "a"}]},
    {"model": ["rm"], "messages": GOOD["messages"]},
    [1, 2],
])
def test_reward_server_answers_4xx_to_malformed_requests(reward_app, body):
    reply = reward_app.post("/classify", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    assert reward_app.post("/classify", json=GOOD).json()["data"][0]["probs"] == [3.0]


def test_reward_server_non_finite_score_is_a_permanent_error_for_the_client(reward_app):
    nan = {"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "nan"}]}
    reply = reward_app.post("/classify", json=nan)
    assert reply.status_code == 422 and "non-finite" in reply.text


def test_reward_client_treats_4xx_as_permanent_and_does_not_cool_the_replica():
    from toa_core.config import RetryConfig
    from toa_core.interfaces import RewardError
    from toa_core.rewards.http import HTTPReward

    body = json.dumps({"detail": "cannot score this pair: non-finite"}).encode()
    with scripted_server(body, status=422) as server:
        async def score():
            reward = HTTPReward([server.endpoint], "rm", retry=RetryConfig(max_attempts=4, backoff_initial_s=0.01))
            try:
                await reward.score([{"role": "user", "content": "q"}], "nan")
            finally:
                await reward.aclose()
            return reward

        with pytest.raises(RewardError) as error:
            asyncio.run(score())
    assert error.value.permanent and "HTTP 422" in str(error.value)


# -- routing ----------------------------------------------------------------------------------------------------

def test_round_robin_skips_a_cooling_replica():
    from toa_core.backends.routing import ReplicaRouter

    now = [0.0]
    router = ReplicaRouter(["a", "b", "c"], "round_robin", clock=lambda: now[0])
    with router.attempt("b") as tracked:
        tracked.fail()
    assert router.is_cooling_down("b")
    firsts = [router.plan()[0] for _ in range(6)]
    assert "b" not in firsts and set(firsts) == {"a", "c"}
    assert router.plan()[-1] == "b"  # still tried last, when the others fail
    now[0] = 100.0  # cool-down over: back in the rotation
    assert "b" in [router.plan()[0] for _ in range(3)]


# -- decontamination --------------------------------------------------------------------------------------------

ITEM = ("Describe the process by which green plants convert sunlight water and carbon dioxide into glucose "
        "and oxygen inside their chloroplasts during the day")


@pytest.mark.parametrize("disguise", [
    lambda text: text.replace("sunlight", "sun\u00adlight").replace("glucose", "glu\u00adcose"),        # soft hyphens
    lambda text: text.replace("o", "o\u200b").replace("e", "\u200de"),                                  # zero-width
    lambda text: "\ufeff" + text.replace("chloroplasts", "chloro\u2060plasts"),                           # BOM, joiner
    lambda text: text.replace("a", "\u0430").replace("o", "\u043e").replace("e", "\u0435"),            # Cyrillic
    lambda text: text.replace("o", "\u03bf").replace("p", "\u0440"),                                    # Greek/Cyrillic
    lambda text: text.replace("Describe", "\uff24\uff45\uff53\uff43\uff52\uff49\uff42\uff45"),          # fullwidth
])
def test_decontamination_catches_invisible_and_homoglyph_copies(disguise):
    from toa_core.decontamination import DecontaminationIndex

    index = DecontaminationIndex()
    index.add_benchmark("bench", [("item-1", ITEM)])
    copy = disguise(ITEM)
    assert copy != ITEM
    (match,) = index.check([f"Please answer: {copy}"])
    assert match is not None and match.item_id == "item-1"
    assert index.check(["Russian stays Russian: \u043f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440"]) == [None]


# -- the local store --------------------------------------------------------------------------------------------

def test_local_store_refuses_symlinks_that_leave_it(tmp_path):
    from infra.store import StoreError, open_store

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = tmp_path / "store"
    store = open_store(str(root))
    store.write_text("runs/r1/ok.txt", "fine")
    (root / "runs" / "r1" / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "runs" / "linked").symlink_to(outside, target_is_directory=True)
    (root / "runs" / "r1" / "inside.txt").symlink_to(root / "runs" / "r1" / "ok.txt")

    for key in ("runs/r1/leak.txt", "runs/linked/secret.txt"):
        with pytest.raises(StoreError, match="outside the store"):
            store.read_text(key)
    with pytest.raises(StoreError, match="outside the store"):
        store.write_text("runs/linked/planted.txt", "x")
    assert not (outside / "planted.txt").exists()
    assert store.read_text("runs/r1/inside.txt") == "fine"  # a link that stays inside is fine
    assert store.list("runs/") == ["runs/r1/inside.txt", "runs/r1/ok.txt"]
    assert store.list("runs/linked/") == []


# -- scratch folders --------------------------------------------------------------------------------------------

def test_scratch_roots_in_the_temp_dir_are_private_and_ours(tmp_path, monkeypatch):
    from infra.runtime import local_run_dir
    from toa_core.folders import UnsafeScratchFolder, private_scratch_root

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("TOAFLOW_WORKDIR", raising=False)
    run_dir = local_run_dir("r1")
    root = tmp_path / "toaflow"
    assert run_dir.is_relative_to(root) and stat.S_IMODE(root.stat().st_mode) == 0o700

    loose = tmp_path / "toaflow-training"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    assert stat.S_IMODE(private_scratch_root("toaflow-training").stat().st_mode) == 0o700  # ours: tightened

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "toaflow-linked").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeScratchFolder, match="symbolic link"):
        private_scratch_root("toaflow-linked")

    if os.getuid() == 0:  # only root can hand a folder to another user
        foreign = tmp_path / "toaflow-foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 4242, -1)
        with pytest.raises(UnsafeScratchFolder, match="another user"):
            private_scratch_root("toaflow-foreign")


# -- the prompt index -------------------------------------------------------------------------------------------

def test_a_nested_index_file_is_ignored_with_a_warning(tmp_path, caplog):
    from infra.incremental import indexed_runs, record_synthesized_prompts, synthesized_prompt_ids
    from infra.store import open_store

    store = open_store(str(tmp_path / "store"))
    store.write_text("runs/r1/datasets/sft/train.parquet", "x")
    record_synthesized_prompts(store, "r1", ["p1", "p2"])
    store.write_bytes("index/prompts/backup/r1.parquet", store.read_bytes("index/prompts/r1.parquet"))
    store.write_bytes("index/prompts/not a run id!.parquet", store.read_bytes("index/prompts/r1.parquet"))
    with caplog.at_level(logging.WARNING, logger="infra.incremental"):
        assert indexed_runs(store) == ["r1"]
        assert synthesized_prompt_ids(store) == {"p1", "p2"}
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "index/prompts/backup/r1.parquet" in warned and "not a run id!.parquet" in warned
