"""Chat templates render LLaVA's conversation formats exactly (strings written from LLaVA's rules)."""

from __future__ import annotations

import pytest

from llava_edge.chat import TEMPLATES

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

CONVERSATION = [
    {"role": "user", "content": "What is this?", "images": 1},
    {"role": "assistant", "content": "A red circle."},
    {"role": "user", "content": "Where is it?"},
    {"role": "assistant", "content": "On the left."},
    {"role": "user", "content": "How many are there?"},
]

EXPECTED = {
    "mistral_instruct": [
        "[INST] <image>\nWhat is this? [/INST]",
        "[INST] <image>\nWhat is this? [/INST] A red circle. </s>[INST] Where is it? [/INST]",
        "[INST] <image>\nWhat is this? [/INST] A red circle. </s>[INST] Where is it? [/INST] "
        "On the left. </s>[INST] How many are there? [/INST]",
    ],
    "llava_v1": [
        f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:",
        f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A red circle.</s>USER: Where is it? ASSISTANT:",
        f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A red circle.</s>USER: Where is it? ASSISTANT: "
        "On the left.</s>USER: How many are there? ASSISTANT:",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("turns", [1, 2, 3])
def test_render_matches_llava_rules(name, turns):
    messages = CONVERSATION[: 2 * turns - 1]
    assert TEMPLATES[name].render(messages) == EXPECTED[name][turns - 1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_turns_concatenate_to_the_transcript(name):
    """What a session feeds turn by turn (plus the answers) is the rendered transcript."""
    t = TEMPLATES[name]
    fed = t.turn("What is this?", 1, first=True) + t.answer.format("A red circle.")
    fed += t.turn("Where is it?")
    assert fed == EXPECTED[name][1]


def test_second_image_goes_first_in_its_turn():
    t = TEMPLATES["mistral_instruct"]
    assert t.turn("And this?", 1) == "[INST] <image>\nAnd this? [/INST]"
