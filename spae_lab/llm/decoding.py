"""Greedy decoding shared by the local backends (Hugging Face, in-process llama.cpp): open text and
generation constrained to a set of choices, over any *decoder*.

A decoder is a generator: it yields the next-token logits (rows, V) of its `rows` contexts and
receives the tokens (rows,) to append. Backends build it on their own model; the loops here decide
what to append and when to stop, so every local backend answers by the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from spae_lab.llm.base import GenerationParams, cut_at_stop


@dataclass
class TrieNode:
    """One prefix of the tokenized choices: `children` maps the next token id to its node;
    `choice` is the index of the (first) choice whose ids end here, if any."""

    children: dict[int, TrieNode] = field(default_factory=dict)
    choice: int | None = None


def build_trie(token_ids: list[list[int]]) -> TrieNode:
    """A trie over token-id sequences; duplicates keep the first index."""
    root = TrieNode()
    for index, ids in enumerate(token_ids):
        node = root
        for token in ids:
            node = node.children.setdefault(token, TrieNode())
        if node.choice is None:
            node.choice = index
    return root


def greedy_open(decoder, rows: int, params: GenerationParams, text: Callable[[list[int]], str],
                eos_ids: set[int]) -> list[str]:
    """Greedy text of each of the decoder's `rows` contexts: up to `params.max_new_tokens`
    tokens, ended early by a token in `eos_ids` or a stop string; the text (`text(ids)`) is cut at
    the first stop string, the stop itself removed."""
    if params.max_new_tokens <= 0:
        decoder.close()
        return [""] * rows
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    logits = next(decoder)
    for step in range(params.max_new_tokens):
        tokens = logits.argmax(-1)
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if token in eos_ids:
                done[i] = True
                continue
            generated[i].append(token)
            done[i] = any(s and s in text(generated[i]) for s in params.stop)
        if all(done) or step == params.max_new_tokens - 1:
            break
        logits = decoder.send(tokens)
    decoder.close()
    return [cut_at_stop(text(g), params.stop) for g in generated]


def greedy_constrained(decoder, rows: int, root: TrieNode, pad_id: int) -> list[int]:
    """Index of the choice each of the decoder's `rows` contexts decodes to.

    Each step may only pick a token that keeps the output the prefix of some choice's ids. Once
    the output is a complete choice, decoding stops unless the model's unconstrained top token
    (argmax over the whole vocabulary) continues a longer choice, i.e. exactly when greedy
    decoding would carry on."""
    nodes = [root] * rows
    answers: list[int | None] = [None] * rows
    logits = next(decoder)
    while True:
        tokens = torch.full((rows,), pad_id, dtype=torch.long)
        for i, node in enumerate(nodes):
            if answers[i] is not None:
                continue  # finished rows decode a dummy token that nobody reads
            allowed = list(node.children)
            top = int(logits[i].argmax())
            if node.choice is not None and (not allowed or top not in node.children):
                answers[i] = node.choice
                continue
            best = allowed[int(logits[i, allowed].argmax())]
            tokens[i] = best
            nodes[i] = node.children[best]
            if not nodes[i].children:  # a leaf is a complete choice with nothing after it
                answers[i] = nodes[i].choice
        if all(a is not None for a in answers):
            break
        logits = decoder.send(tokens)
    decoder.close()
    return answers  # type: ignore[return-value]  # every row was answered
