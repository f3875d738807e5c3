"""The offline engine's two phases for a thinking model (`vllm_thinking` in `vllm_stream`), on a
scripted stand-in engine that writes one word a step: the thinking phase is free text that stops
at the end marker; the answer phase continues from the thinking's tokens, under the output schema;
a spent budget forces the end marker; reasoning that never ends has no answer. A real engine runs
the same in tests/test_reasoning_vllm.py (slow)."""
from __future__ import annotations

from types import SimpleNamespace

from generator.core.backend import Request, RequestFeed, Sampling
from generator.core.reasoning import PARSERS
from generator.engine.backends.vllm_args import sampling_kwargs, sampling_params, thinking_kwargs
from generator.engine.backends.vllm_stream import StreamStats, stream_engine
from generator.engine.backends.vllm_thinking import Thinker

MARKERS = PARSERS["deepseek_r1"]  # the template opens the block: completions start inside it


class Vocab:
    def __init__(self):
        self.ids: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text, add_special_tokens=False):
        out = []
        for w in text.split():
            if w not in self.ids:
                self.ids[w] = len(self.words)
                self.words.append(w)
            out.append(self.ids[w])
        return out


class ThinkingEngine:
    """`script[prompt]`: the words the model would write (thinking, `</think>`, answer). The
    answer phase gets a token prompt and writes what follows the end marker in the script (or
    `forced answer` when the script's thinking never ends)."""

    def __init__(self, script: dict[str, str]):
        self.script, self.vocab, self.running, self.n = script, Vocab(), {}, 0
        self.answer_params: list = []

    def get_tokenizer(self):
        return self.vocab

    @property
    def llm_engine(self):
        return self

    def _add(self, prompt_ids, words, params):
        self.n += 1
        vid = f"{self.n}-x"
        self.running[vid] = [prompt_ids, words, params, []]
        return vid

    def enqueue_chat(self, convs, params, use_tqdm=False):
        out = []
        for conv, p in zip(convs, params):
            prompt = conv[-1]["content"]
            out.append(self._add(self.vocab.encode(f"PROMPT:{prompt}"), self.script[prompt].split(), p))
        return out

    def enqueue(self, prompts, params, use_tqdm=False):
        out = []
        for prompt, p in zip(prompts, params):
            ids = prompt["prompt_token_ids"]
            key = self.vocab.words[ids[0]].removeprefix("PROMPT:")
            words = self.script[key].split()
            after = words[words.index(MARKERS.end) + 1:] if MARKERS.end in words else ["forced", "answer"]
            self.answer_params.append(p)
            out.append(self._add(ids, after, p))
        return out

    def step(self):
        outs = []
        for vid, state in list(self.running.items()):
            prompt_ids, words, params, done = state
            done.append(words[len(done)] if len(done) < len(words) else None)
            word = done[-1]
            stop = word is None or (params.stop and word in params.stop)
            if stop or len(done) >= params.max_tokens:
                del self.running[vid]
                written = [w for w in done if w is not None]
                outs.append(SimpleNamespace(
                    request_id=vid.split("-")[0], finished=True, prompt_token_ids=prompt_ids,
                    outputs=[SimpleNamespace(text=" ".join(written), token_ids=self.vocab.encode(" ".join(written)),
                                             finish_reason="stop" if stop else "length")]))
        return outs

    def abort_request(self, ids, internal=False):
        for vid in ids:
            self.running.pop(vid, None)


def params(r: Request):
    if r.reasoning is not None:
        return sampling_params(thinking_kwargs(r.sampling, r.reasoning, r.max_reasoning_tokens, r.tools))
    return sampling_params(sampling_kwargs(r.sampling, r.json_schema, r.tools))


def answers(script, requests):
    engine = ThinkingEngine(script)
    got = {r.id: r for r in stream_engine(engine, RequestFeed(requests, close=True), params, None, StreamStats(),
                                          thinker=Thinker(engine))}
    return got, engine


def req(prompt, max_tokens=20, budget=None, schema=None):
    return Request(id=prompt, messages=({"role": "user", "content": prompt},),
                   sampling=Sampling(max_tokens=max_tokens, seed=1), json_schema=schema, reasoning=MARKERS,
                   max_reasoning_tokens=budget)


SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def test_thinking_then_the_answer_under_the_schema():
    got, engine = answers({"p": "let me see </think> {} done"}, [req("p", schema=SCHEMA)])
    r = got["p"]
    assert (r.reasoning, r.text, r.reasoning_tokens, r.completion_tokens) == ("let me see", "{} done", 4, 6)
    assert not r.meta and r.finish_reason == "stop"
    # the schema went to the answer phase only, with what was left of max_tokens
    (p2,) = engine.answer_params
    assert p2.structured_outputs is not None and p2.structured_outputs.json == SCHEMA and p2.max_tokens == 16


def test_a_spent_budget_forces_the_end_marker():
    got, engine = answers({"p": "a b c d e f g h"}, [req("p", budget=3, schema=SCHEMA)])
    r = got["p"]
    assert r.meta == {"reasoning_forced": True} and r.reasoning == "a b c" and r.text == "forced answer"
    assert r.reasoning_tokens == 4  # three written, the forced marker
    assert engine.answer_params[0].max_tokens == 20 - 4


def test_reasoning_that_never_ends_or_is_cut_has_no_answer():
    got, engine = answers({"cut": "x " * 30, "stops": "thinking then eos"},
                          [req("cut", max_tokens=10), req("stops", max_tokens=10)])
    assert got["cut"].meta == {"reasoning_unfinished": True} and got["cut"].finish_reason == "length"
    assert got["cut"].text == "" and got["cut"].reasoning_tokens == 10
    assert got["stops"].meta == {"reasoning_unfinished": True} and got["stops"].reasoning == "thinking then eos"
    assert engine.answer_params == []  # no answer phase for either


def test_a_budget_above_max_tokens_is_no_budget_and_markers_in_the_answer_stay():
    got, _ = answers({"p": "x " * 30, "j": 'ok </think> {"a": "</think>"}'},
                     [req("p", max_tokens=8, budget=50), req("j")])
    assert got["p"].meta == {"reasoning_unfinished": True}
    assert got["j"].reasoning == "ok" and got["j"].text == '{"a": "</think>"}'


def test_an_answer_without_thinking_is_the_answer_unless_a_schema_needs_a_second_phase():
    qwen = PARSERS["qwen3"]  # the model opens the block itself, or answers at once
    script = {"free": "just the answer", "schema": "plain words"}
    reqs = [Request(id=p, messages=({"role": "user", "content": p},), sampling=Sampling(max_tokens=20, seed=1),
                    json_schema=SCHEMA if p == "schema" else None, reasoning=qwen) for p in script]
    got, engine = answers(script, reqs)
    assert got["free"].text == "just the answer" and got["free"].reasoning is None
    assert got["free"].completion_tokens == 3
    # the schema's answer was asked again from the prompt alone (the stand-in writes `forced answer`)
    (p2,) = engine.answer_params
    assert p2.structured_outputs.json == SCHEMA and p2.max_tokens == 20
    assert got["schema"].text == "forced answer" and got["schema"].reasoning is None
    assert got["schema"].completion_tokens == 2 + 2 and got["schema"].reasoning_tokens == 0
