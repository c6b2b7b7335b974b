#!/usr/bin/env python3
"""Tiny random-weight Hugging Face model directories for sleuth's HF loader tests.

sleuth can load a Hugging Face model directory (``config.json`` +
``*.safetensors`` + ``tokenizer.json`` + ``tokenizer_config.json``) for the
LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM architectures. This
script builds three such directories from scratch -- nothing is downloaded --
and records what Hugging Face ``transformers`` computes with them, so the Rust
side can be checked against the reference implementation.

Modes (run from the repository root)::

    # 1. (Re)write tests/fixtures/hf/{llama,qwen2,qwen3}/ (about 15 s on 2 cores).
    .venv-ref/bin/python scripts/reference/record_hf_fixtures.py

    # 2. Check a directory written by `sleuth export` against sleuth's own
    #    numbers. FILE is JSON {"prompt_ids": [...], "ids": [...new greedy
    #    ids...], "first_logits": [...]}. Prints one JSON line; exit status 1
    #    if max |logit diff| > 1e-3 or any greedy id differs.
    .venv-ref/bin/python scripts/reference/record_hf_fixtures.py \\
        --check-export DIR --sleuth-json FILE

    # 3. A random-weight directory with the real shapes of Qwen2.5-0.5B
    #    (988 MB of bf16 weights in one model.safetensors, std 0.02; about
    #    35 s and 3 GB of RAM) and the tiny tokenizer from mode 1 (model
    #    vocab 151936 > tokenizer vocab 400 on purpose, so its greedy output
    #    is mostly ids the tokenizer cannot decode). Meant for models/
    #    (git-ignored), not for the repository. No reference.json.
    .venv-ref/bin/python scripts/reference/record_hf_fixtures.py \\
        --random-shape qwen2.5-0.5b --out models/qwen2.5-0.5b-random

Everything is deterministic: running mode 1 twice gives byte-identical files
(for the same transformers / tokenizers / torch versions, which are recorded).

The tokenizer
-------------
One byte-level BPE tokenizer is trained with the ``tokenizers`` library on
``CORPUS`` below (a few paragraphs written for this script): ByteLevel
pre-tokenizer (``add_prefix_space=False``, GPT-2 split regex), ByteLevel
decoder, the full 256-byte initial alphabet, 395 BPE entries (256 bytes +
139 merges). The five special tokens are then added *after* the BPE vocabulary
as added tokens, as real Llama 3 / Qwen checkpoints do, giving 400 ids::

    395 <|endoftext|>  396 <|im_start|>  397 <|im_end|>
    398 <|begin_of_text|>  399 <|eot_id|>

Per family it differs only in the post-processor and in the special tokens
named in ``tokenizer_config.json``:

* llama -- Llama 3 conventions: post-processor
  ``Sequence[ByteLevel, TemplateProcessing(single="<|begin_of_text|> $A")]``,
  so ``tokenizer(text)`` starts with BOS 398; bos ``<|begin_of_text|>``, eos
  ``<|eot_id|>``, no pad. config.json ``eos_token_id`` is the list
  ``[399, 395]`` as in Llama 3.1.
* qwen2 / qwen3 -- Qwen conventions: post-processor ``ByteLevel`` only (adds
  no tokens), bos None, eos ``<|im_end|>``, pad ``<|endoftext|>``. As in the
  real Qwen2.5 / Qwen3 config.json files, ``bos_token_id`` there is 395
  (``<|endoftext|>``) even though the tokenizer never adds a BOS.

transformers 5 never writes ``add_bos_token`` / ``add_eos_token`` into
``tokenizer_config.json`` (``save_pretrained`` pops them); whether BOS is added
is decided by the post-processor in ``tokenizer.json`` alone (the reloaded
llama tokenizer even reports ``add_bos_token == False`` while adding BOS).
``tokenizer_class`` is written as ``"TokenizersBackend"`` (transformers 5's
name for PreTrainedTokenizerFast). The chat
template is stored inside ``tokenizer_config.json`` (``save_jinja_files=False``)
rather than in a separate ``chat_template.jinja``.

The models
----------
hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads, SiLU, RMSNorm eps
1e-6, max_position_embeddings 256, no rope scaling, no sliding window:

=====  ==================  ========  ========  ====  ===============  ===========================
dir    class               head_dim  theta     tied  vocab (config)   weights
=====  ==================  ========  ========  ====  ===============  ===========================
llama  LlamaForCausalLM    16        5e5       no    400              f32, model.safetensors
qwen2  Qwen2ForCausalLM    16        1e6       yes   416 (= 400+16)   bf16, model.safetensors
qwen3  Qwen3ForCausalLM    32 (!)    1e6       no    400              f16, 2+ shards + index.json
=====  ==================  ========  ========  ====  ===============  ===========================

Qwen2 has q/k/v biases; Qwen3 has per-head q_norm/k_norm and
``heads * head_dim = 128 != hidden = 64``. After transformers' own init every
parameter is re-drawn from a fixed-seed generator (matrices N(0, 0.15), norm
weights 1 + N(0, 0.1), biases N(0, 0.15); Qwen2's 16 padding rows of the
embedding N(0, 0.02), so they never win the argmax) so that outputs are far
from degenerate. The script fails if the 32 greedy tokens have fewer than 6
distinct ids.

transformers 5 writes rope theta as ``"rope_parameters": {"rope_theta": ...,
"rope_type": "default"}`` and the weight dtype as ``"dtype"``; checkpoints
saved by transformers 4 have a top-level ``"rope_theta"`` and
``"torch_dtype"`` instead.

What ``reference.json`` holds
-----------------------------
Computed from the *saved* directory reloaded with
``AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)`` (so bf16 /
f16 weights are upcast exactly as an f32 loader would) and
``AutoTokenizer.from_pretrained(dir)``:

* ``architecture``, ``transformers_version``, ``torch_version``, ``dtype``
  (storage dtype), ``tokenizer_vocab_size``, ``config_vocab_size``
* ``prompt_text`` and ``prompt_ids`` = ``tokenizer(prompt_text)["input_ids"]``
  with the default ``add_special_tokens=True`` (llama: starts with 398)
* ``greedy_ids``: 32 new ids, argmax at every step, EOS ignored, with a KV
  cache (cross-checked against ``model.generate(do_sample=False)``);
  ``greedy_margins``: top-1 minus top-2 logit at each step; ``greedy_text``
* ``first_logits``: the full f32 logits vector for the token after the prompt
  (length = config vocab size, 416 for qwen2)
* ``chat_messages`` / ``chat_rendered`` =
  ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``
  and ``chat_ids`` = the same with ``tokenize=True`` (no extra special tokens:
  the llama template itself starts with ``bos_token``)
* qwen2: ``chat_messages_no_system`` / ``chat_rendered_no_system`` (the
  template inserts a default system message)
* qwen3: ``chat_rendered_no_thinking`` (``enable_thinking=False``) and
  ``chat_messages_reasoning`` / ``chat_rendered_reasoning`` (a ``<result>``
  user turn does not count as a query, so the assistant turns after the real
  query keep their ``<think>`` block)
* llama: ``chat_messages_bad_role`` and ``chat_error`` -- the message
  ``raise_exception`` produces for an unsupported role
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
from pathlib import Path

# Everything is local; never let transformers try to reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "hf"

N_NEW = 32
MIN_DISTINCT = 6
SEED = 20240917
BPE_VOCAB = 395  # 256 byte symbols + 139 merges; the 5 specials come after
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>"]

PROMPT_TEXT = "Question: Which search engine indexed 3 million documents in 1998? Answer:"

# Training text for the BPE tokenizer, written for this script.
CORPUS = [
    "A search engine keeps an index of documents. When a question arrives, "
    "the engine splits it into terms, looks up every term in the index, and "
    "returns the documents that match best. A good answer often needs more "
    "than one search: the first query finds a name, and the second query "
    "finds a fact about that name.",
    "The river runs through the old city before it reaches the lake. The city "
    "was founded in the twelfth century, and its bridge is one of the oldest "
    "stone bridges in the region. Today the city is known for its library, "
    "which holds more than two million books and a large collection of maps.",
    "Questions about history, science and geography are common in open "
    "domain question answering. A model reads the question, writes a search "
    "query, reads the documents that come back, and then decides whether it "
    "knows the answer or needs to search again. The final answer should be "
    "short: a name, a date, a number, or a place.",
    "An encyclopedia article usually starts with a short summary. The summary "
    "names the subject, says when and where it began, and explains why it "
    "matters. Later sections give the details: early life, career, works, "
    "awards, and the people and places that are connected to the subject.",
    "Retrieval can be lexical or dense. A lexical retriever counts how often "
    "the words of the query appear in each document and how rare those words "
    "are in the whole collection. A dense retriever turns the query and the "
    "documents into vectors and returns the documents whose vectors are "
    "closest to the query vector.",
    "The museum opened in 1901 and moved to a larger building in 1964. Its "
    "first director was a botanist who had travelled along the coast, "
    "collecting plants, shells and stones. The museum still shows some of "
    "those plants in a glass house next to the main hall.",
    "To check an answer, compare it with the documents. If two documents "
    "disagree, prefer the one that gives a source, a date, or more detail. If "
    "no document mentions the answer, say that the answer is not known rather "
    "than guessing. Careful reading matters more than fast reading.",
    "Which team won the first championship? Who wrote the novel about the "
    "lighthouse keeper? In what year did the tunnel open, and how long is it? "
    "Each of these questions can be answered with one or two searches, as "
    "long as the queries are specific and the documents are read closely.",
]

# --------------------------------------------------------------------------
# Chat templates (Jinja), written for this script
# --------------------------------------------------------------------------

# Llama 3 style, with plain-text role headers instead of <|start_header_id|>.
LLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = '' %}\n"
    "{%- endif %}\n"
    "{%- if system_message %}\n"
    "    {{- 'system\\n\\n' + system_message + '<|eot_id|>' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] not in ['user', 'assistant'] %}\n"
    "        {{- raise_exception('Only user and assistant messages may follow the system message.') }}\n"
    "    {%- endif %}\n"
    "    {{- message['role'] + '\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- 'assistant\\n\\n' }}\n"
    "{%- endif %}\n"
)

# ChatML in the style of Qwen2.5's template (without tool calls).
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a careful research assistant. Search before you answer.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'user' or message.role == 'assistant' "
    "or (message.role == 'system' and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# ChatML in the style of Qwen3's template: reasoning in earlier assistant
# turns is dropped, and exercises namespace(), [::-1], loop.index0/last,
# |length, is string, and str methods strip/startswith/endswith/split/lstrip/rstrip.
QWEN3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query_index=messages|length - 1, found=false) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if not ns.found and message.role == 'user' and message.content is string\n"
    "          and not (message.content.startswith('<result>') and message.content.endswith('</result>')) %}\n"
    "        {%- set ns.found = true %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- set content = message.content.strip() if message.content is string else '' %}\n"
    "    {%- if message.role == 'system' or message.role == 'user' %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == 'assistant' %}\n"
    "        {%- set reasoning = '' %}\n"
    "        {%- if '</think>' in content %}\n"
    "            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}\n"
    "            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('unsupported role: ' + message.role) }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
)

CHAT_MESSAGES = [
    {"role": "system", "content": "You answer questions by searching a small encyclopedia."},
    {"role": "user", "content": "When did the museum open?"},
    {"role": "assistant", "content": "It opened in 1901."},
    {"role": "user", "content": "  And when did it move to a larger building?  "},
]
CHAT_MESSAGES_NO_SYSTEM = [
    {"role": "user", "content": "Which river runs through the old city?"},
]
QWEN3_CHAT_MESSAGES = [
    {"role": "system", "content": "You answer questions by searching a small encyclopedia."},
    {"role": "user", "content": "When did the museum open?"},
    {"role": "assistant", "content": "<think>\nThe summary says 1901.\n</think>\n\nIt opened in 1901."},
    {"role": "user", "content": "  And when did it move to a larger building?  "},
]
# The last turn is an assistant turn after the last user query: its reasoning is kept.
QWEN3_CHAT_MESSAGES_REASONING = [
    {"role": "user", "content": "Who was the first director of the museum?"},
    {"role": "assistant", "content": "<think>\n\nThe summary names a botanist.\n</think>\n\nA botanist. "},
    {"role": "user", "content": "<result>The botanist travelled along the coast.</result>"},
    {"role": "assistant", "content": "<think>The result confirms it.</think>It was a botanist."},
]
LLAMA_BAD_ROLE_MESSAGES = [
    {"role": "user", "content": "hello"},
    {"role": "tool", "content": "42"},
]


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

def train_base_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if tok.get_vocab_size() != BPE_VOCAB:
        raise SystemExit(f"BPE training gave {tok.get_vocab_size()} entries, wanted {BPE_VOCAB}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != BPE_VOCAB + i:
            raise SystemExit(f"special token {t} got id {tok.token_to_id(t)}")
    return tok


def family_tokenizer(base: Tokenizer, family: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer.from_str(base.to_str())
    # The ByteLevel post-processors only adjust offsets; their settings copy
    # Llama 3's and Qwen2's tokenizer.json files.
    if family == "llama":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos}:1 $B:1",
                special_tokens=[(bos, tok.token_to_id(bos))],
            ),
        ])
        kwargs = dict(bos_token=bos, eos_token="<|eot_id|>", chat_template=LLAMA_CHAT_TEMPLATE)
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        kwargs = dict(
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            chat_template=QWEN2_CHAT_TEMPLATE if family == "qwen2" else QWEN3_CHAT_TEMPLATE,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    initializer_range=0.02,
    rope_scaling=None,
)

FAMILIES = {
    "llama": dict(dtype=torch.float32, shard=None),
    "qwen2": dict(dtype=torch.bfloat16, shard=None),
    "qwen3": dict(dtype=torch.float16, shard="100KB"),
}


def make_config(family: str, tok_vocab: int, ids: dict):
    if family == "llama":
        return LlamaConfig(
            **COMMON, vocab_size=tok_vocab, head_dim=16, rope_theta=500000.0,
            tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=[ids["<|eot_id|>"], ids["<|endoftext|>"]],
            pad_token_id=None,
        )
    qwen_ids = dict(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=None,
    )
    if family == "qwen2":
        return Qwen2Config(
            **COMMON, vocab_size=tok_vocab + 16, rope_theta=1000000.0,
            tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
            max_window_layers=2, **qwen_ids,
        )
    return Qwen3Config(
        **COMMON, vocab_size=tok_vocab, head_dim=32, rope_theta=1000000.0,
        tie_word_embeddings=False, attention_bias=False, use_sliding_window=False,
        sliding_window=None, max_window_layers=2, **qwen_ids,
    )


def make_generation_config(family: str, ids: dict) -> GenerationConfig:
    # Sampling defaults in the style of the real instruct checkpoints; the
    # reference decoding below overrides them with plain argmax.
    if family == "llama":
        return GenerationConfig(
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=[ids["<|endoftext|>"], ids["<|eot_id|>"]],
            do_sample=True, temperature=0.6, top_p=0.9,
        )
    sampling = (
        dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
        if family == "qwen2" else dict(temperature=0.6, top_p=0.95, top_k=20)
    )
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=True, **sampling,
    )


@torch.no_grad()
def redraw_parameters(model, seed: int, std: float, tok_vocab: int) -> None:
    """Overwrite every parameter from a private generator, in name order."""
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if id(p) in seen:  # tied lm_head
            continue
        seen.add(id(p))
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = std * noise
            if name.endswith("embed_tokens.weight") and p.shape[0] > tok_vocab:
                # Rows beyond the tokenizer's vocabulary, like the padding rows of real Qwen checkpoints.
                value[tok_vocab:] = 0.02 * noise[tok_vocab:]
        p.copy_(value.to(p.dtype))


def build_model(family: str, config, seed: int, std: float, tok_vocab: int):
    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}[family]
    torch.manual_seed(seed)
    model = cls(config).eval()
    redraw_parameters(model, seed, std, tok_vocab)
    return model


# --------------------------------------------------------------------------
# Reference values
# --------------------------------------------------------------------------

def load_f32(path: Path):
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def step(model, x: torch.Tensor, past):
    """One forward pass with a KV cache. transformers >= 5.2x names the cache
    argument/output ``cache``; older versions call it ``past_key_values``."""
    if "cache" in inspect.signature(model.forward).parameters:
        res = model(input_ids=x, cache=past, use_cache=True)
        return res.logits, res["cache"]
    res = model(input_ids=x, past_key_values=past, use_cache=True)
    return res.logits, res.past_key_values


@torch.no_grad()
def greedy_decode(model, prompt_ids: list[int], n_new: int):
    """Argmax decoding with a KV cache; does not stop at EOS."""
    x = torch.tensor([prompt_ids], dtype=torch.long)
    past = None
    out_ids: list[int] = []
    margins: list[float] = []
    first_logits = None
    for _ in range(n_new):
        logits, past = step(model, x, past)
        logits = logits[0, -1].float()
        if first_logits is None:
            first_logits = logits.clone()
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        out_ids.append(nxt)
        x = torch.tensor([[nxt]], dtype=torch.long)
    return out_ids, margins, first_logits


@torch.no_grad()
def generate_greedy(model, prompt_ids: list[int], n_new: int) -> list[int]:
    """The same thing through model.generate, for a cross-check."""
    gc = GenerationConfig(
        do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
        eos_token_id=None, pad_token_id=0, repetition_penalty=1.0,
    )
    out = model.generate(torch.tensor([prompt_ids]), generation_config=gc)
    return out[0, len(prompt_ids):].tolist()


def f32_list(t: torch.Tensor) -> list[float]:
    # float(np.float32) -> shortest repr that round-trips through f32.
    return [float(v) for v in t.float().numpy()]


def chat_case(tokenizer, messages, **kw) -> tuple[str, list[int]]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    enc = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **kw)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    if ids != tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise SystemExit("apply_chat_template(tokenize=True) differs from tokenizing the rendered text")
    return text, list(ids)


def record_reference(path: Path, family: str, storage_dtype: torch.dtype) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = load_f32(path)
    arch = model.config.architectures[0]
    prompt_ids = tokenizer(PROMPT_TEXT)["input_ids"]
    greedy_ids, margins, first_logits = greedy_decode(model, prompt_ids, N_NEW)
    via_generate = generate_greedy(model, prompt_ids, N_NEW)
    if via_generate != greedy_ids:
        raise SystemExit(f"{family}: model.generate disagrees with the KV-cache loop: {via_generate} vs {greedy_ids}")
    distinct = len(set(greedy_ids))
    if distinct < MIN_DISTINCT:
        raise SystemExit(f"{family}: greedy output is degenerate ({distinct} distinct ids): {greedy_ids}")
    tok_vocab = len(tokenizer)
    if max(greedy_ids) >= tok_vocab:
        raise SystemExit(f"{family}: greedy produced an id beyond the tokenizer vocabulary: {greedy_ids}")

    ref = {
        "architecture": arch,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "tokenizers_version": tokenizers.__version__,
        "dtype": str(storage_dtype).removeprefix("torch."),
        "tokenizer_vocab_size": tok_vocab,
        "config_vocab_size": model.config.vocab_size,
        "prompt_text": PROMPT_TEXT,
        "prompt_ids": prompt_ids,
        "stop_at_eos": False,
        "greedy_ids": greedy_ids,
        "greedy_distinct": distinct,
        "greedy_margins": margins,
        "greedy_text": tokenizer.decode(greedy_ids),
        "first_logits": f32_list(first_logits),
    }
    messages = QWEN3_CHAT_MESSAGES if family == "qwen3" else CHAT_MESSAGES
    ref["chat_messages"] = messages
    ref["chat_rendered"], ref["chat_ids"] = chat_case(tokenizer, messages)
    if family == "qwen2":
        ref["chat_messages_no_system"] = CHAT_MESSAGES_NO_SYSTEM
        ref["chat_rendered_no_system"], ref["chat_ids_no_system"] = chat_case(tokenizer, CHAT_MESSAGES_NO_SYSTEM)
    if family == "qwen3":
        ref["chat_rendered_no_thinking"], ref["chat_ids_no_thinking"] = chat_case(
            tokenizer, messages, enable_thinking=False)
        ref["chat_messages_reasoning"] = QWEN3_CHAT_MESSAGES_REASONING
        ref["chat_rendered_reasoning"], ref["chat_ids_reasoning"] = chat_case(
            tokenizer, QWEN3_CHAT_MESSAGES_REASONING)
    if family == "llama":
        try:
            tokenizer.apply_chat_template(LLAMA_BAD_ROLE_MESSAGES, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2 TemplateError
            ref["chat_messages_bad_role"] = LLAMA_BAD_ROLE_MESSAGES
            ref["chat_error"] = str(e)
        else:
            raise SystemExit("llama chat template accepted an unsupported role")
    return ref


def write_family(out_root: Path, family: str, base: Tokenizer) -> None:
    spec = FAMILIES[family]
    path = out_root / family
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

    tokenizer = family_tokenizer(base, family)
    tok_vocab = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = make_config(family, tok_vocab, ids)
    seed = SEED + list(FAMILIES).index(family)
    model = build_model(family, config, seed, 0.15, tok_vocab)
    model.generation_config = make_generation_config(family, ids)
    model = model.to(spec["dtype"])
    save_kw = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(str(path), **save_kw)
    tokenizer.save_pretrained(str(path), save_jinja_files=False)
    del model

    shards = sorted(p.name for p in path.glob("*.safetensors"))
    if spec["shard"]:
        if len(shards) < 2 or not (path / "model.safetensors.index.json").exists():
            raise SystemExit(f"{family}: expected a sharded checkpoint, got {shards}")
    elif shards != ["model.safetensors"]:
        raise SystemExit(f"{family}: expected a single model.safetensors, got {shards}")

    ref = record_reference(path, family, spec["dtype"])
    (path / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    tc = json.loads((path / "tokenizer_config.json").read_text())
    print(f"{family}: {ref['architecture']} {ref['dtype']} shards={shards} "
          f"prompt={len(ref['prompt_ids'])} ids, greedy distinct={ref['greedy_distinct']}, "
          f"min margin={min(ref['greedy_margins']):.4f}, add_bos_token in tokenizer_config: "
          f"{'add_bos_token' in tc}", file=sys.stderr)
    print(f"  greedy text: {ref['greedy_text']!r}", file=sys.stderr)


def record_all(out_root: Path) -> None:
    base = train_base_tokenizer()
    out_root.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        write_family(out_root, family, base)


# --------------------------------------------------------------------------
# --check-export
# --------------------------------------------------------------------------

@torch.no_grad()
def check_export(model_dir: Path, sleuth_json: Path, tol: float) -> int:
    want = json.loads(sleuth_json.read_text())
    prompt_ids = [int(i) for i in want["prompt_ids"]]
    sleuth_ids = [int(i) for i in want["ids"]]
    sleuth_logits = torch.tensor(want["first_logits"], dtype=torch.float32)
    model = load_f32(model_dir)
    ids, margins, first_logits = greedy_decode(model, prompt_ids, len(sleuth_ids))
    result = {
        "dir": str(model_dir),
        "architecture": (model.config.architectures or ["?"])[0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "n_prompt": len(prompt_ids),
        "n_new": len(sleuth_ids),
    }
    ok = True
    if sleuth_logits.shape != first_logits.shape:
        result["logits_shape_mismatch"] = [list(sleuth_logits.shape), list(first_logits.shape)]
        result["max_abs_logit_diff"] = None
        ok = False
    else:
        diff = (sleuth_logits - first_logits).abs()
        result["max_abs_logit_diff"] = float(diff.max())
        result["worst_logit_index"] = int(diff.argmax())
        ok &= result["max_abs_logit_diff"] <= tol
    mismatch = next((i for i, (a, b) in enumerate(zip(sleuth_ids, ids)) if a != b), None)
    result["ids_match"] = mismatch is None
    if mismatch is not None:
        result["first_mismatch"] = mismatch
        result["sleuth_id"] = sleuth_ids[mismatch]
        result["transformers_id"] = ids[mismatch]
        result["transformers_margin"] = margins[mismatch]  # top-1 minus top-2: small means a near tie
        ok = False
    result["tolerance"] = tol
    result["ok"] = bool(ok)
    print(json.dumps(result))
    return 0 if ok else 1


# --------------------------------------------------------------------------
# --random-shape
# --------------------------------------------------------------------------

RANDOM_SHAPES = {
    "qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
        rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
        sliding_window=None, max_window_layers=24, initializer_range=0.02,
    ),
}


def write_random_shape(name: str, out: Path) -> None:
    base = train_base_tokenizer()
    tokenizer = family_tokenizer(base, "qwen2")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2Config(
        **RANDOM_SHAPES[name], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(SEED)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16).eval()
    # Weights are std 0.02 (norms exactly 1, biases 0.02 noise); drawn in f32, stored bf16.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_((0.02 * torch.randn(p.shape, generator=gen, dtype=torch.float32)).to(p.dtype))
    model.tie_weights()
    model.generation_config = make_generation_config("qwen2", ids)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out), save_jinja_files=False)
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}: {n} parameters, {size / 1e6:.1f} MB", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help=f"output directory (default for fixtures: {DEFAULT_OUT})")
    ap.add_argument("--check-export", type=Path, metavar="DIR", help="HF directory written by `sleuth export`")
    ap.add_argument("--sleuth-json", type=Path, metavar="FILE", help="sleuth's prompt_ids / ids / first_logits")
    ap.add_argument("--tol", type=float, default=1e-3, help="max |logit diff| for --check-export")
    ap.add_argument("--random-shape", choices=sorted(RANDOM_SHAPES), help="write a random-weight full-size model")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    if args.check_export:
        if not args.sleuth_json:
            ap.error("--check-export needs --sleuth-json")
        return check_export(args.check_export, args.sleuth_json, args.tol)
    if args.random_shape:
        if not args.out:
            ap.error("--random-shape needs --out (e.g. models/qwen2.5-0.5b-random)")
        write_random_shape(args.random_shape, args.out)
        return 0
    record_all(args.out or DEFAULT_OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
