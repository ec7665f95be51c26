"""Reward plug-ins used by the tests (imported as `tests.toa_core.rewards.plugins:NAME`)."""
from __future__ import annotations

import asyncio


def length_reward(messages, response):
    return float(len(response))


async def async_overlap_reward(messages, response):
    await asyncio.sleep(0)
    question = set(messages[-1]["content"].lower().split())
    return float(len(question & set(response.lower().split())))


def broken_reward(messages, response):
    raise RuntimeError("the plug-in is broken")


def nan_reward(messages, response):
    return float("nan")


async def hanging_reward(messages, response):
    await asyncio.Event().wait()  # never set
