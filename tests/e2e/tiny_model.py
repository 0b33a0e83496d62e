"""A tiny, deterministic llama-architecture GGUF model for the end-to-end tier.

No model hub is reachable from CI, so the tests write their own model: two transformer blocks, an
embedding size of 64, random weights from a fixed seed, a SentencePiece-style ("llama") vocabulary of
byte-fallback tokens plus a few hundred English and Spanish words, and a ChatML chat template that also
renders tools, tool calls and tool results. It talks nonsense, but llama.cpp tokenizes, templates, samples,
constrains tool calls with a grammar and streams it exactly as it would a real model.

Two properties the tests rely on:

- Only whole-word tokens (`▁word`) have output weights; every other token (control, byte, fragment) has a
  zero row and so a logit of 0, far below the top-k cut of llama.cpp's default sampler. Free text is
  therefore a run of space-separated words that never ends by itself: an answer always runs to
  `max_tokens` (finish_reason "length"), which makes long streams for the disconnect tests easy to ask for.
  Grammar-constrained generation (forced tool calls) still reaches every character through the masks.
- The same seed gives the same bytes: `write_tiny_model(path)` is a pure function of its arguments.

Run `python tests/e2e/tiny_model.py OUT.gguf` to write one by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["CHAT_TEMPLATE", "WORDS", "build_vocab", "write_tiny_model"]

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 4096
SEED = 1234

SPACE = "\u2581"  # SentencePiece's visible space, "▁"

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(5)

_WORD_LIST = """
the a an and or but if then of to in on at for with from by as is are was were be been it this that these
those there here what which who when where why how not no yes all any some many much more most other such
only own same so than too very can will just should now new old good great small large big long little
first last next early late high low right left open close hello world model answer question message chat
stream token server client browser request response error test data time day year people way thing man
woman child life hand part place case week company system program number group problem fact water river
city country light night morning evening sun moon star tree forest mountain sea rain snow wind fire stone
gold silver red green blue black white yellow orange purple happy sad quick slow warm cold bright dark
run walk talk read write think know see look come go make take give find tell ask work seem feel try
leave call keep let begin help show hear play move live believe bring happen sit stand lose pay meet
include continue set learn change lead understand watch follow stop create speak allow add spend grow
capybara capibara llama alpaca gateway facade proxy tool tools weather forecast paris madrid lisbon rome
hola mundo el la los las un una y o de del en con por para que es son fue ser estar muy bien mal gracias
buenos dias noches tarde casa perro gato agua sol luna cielo mar montana ciudad pais tiempo hoy manana
ayer siempre nunca todo nada algo alguien nadie amigo familia trabajo escuela libro palabra idioma
"""
WORDS = _WORD_LIST.split()

CHAT_TEMPLATE = """\
{%- macro render(content) -%}
{%- if content is string -%}
{{ content }}
{%- elif content -%}
{%- for part in content -%}
{%- if part.type == 'text' -%}
{{ part.text }}
{%- else -%}
<image>
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if tools -%}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ render(messages[0].content) }}

{% endif %}# Tools
Function signatures are inside <tools></tools>:
<tools>
{% for tool in tools %}{{ tool.function | tojson }}
{% endfor %}</tools>
Answer a call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and tools and loop.first -%}
{%- elif message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ render(message.content) }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' and message.tool_calls -%}
<|im_start|>assistant
{{ render(message.content) }}
{%- for call in message.tool_calls -%}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments }}}
</tool_call>
{%- endfor -%}
<|im_end|>
{% else -%}
<|im_start|>{{ message.role }}
{{ render(message.content) }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""


def build_vocab() -> tuple[list[str], list[float], list[int], list[bool]]:
    """Tokens, scores, token types and "is a whole word" flags of the SentencePiece-style vocabulary.

    Every prefix of every word is a token too, so SentencePiece's pairwise merges can build whole words;
    anything else falls back to the 256 byte tokens.
    """
    tokens: list[str] = list(SPECIALS)
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [TOKEN_BYTE] * 256
    whole_words = {SPACE + word for word in WORDS}
    pieces: list[str] = [SPACE, *(chr(code) for code in range(0x21, 0x7F))]
    for word in WORDS:
        for stem in (word, SPACE + word):
            pieces += [stem[:end] for end in range(2, len(stem) + 1)]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(TOKEN_NORMAL)
    # SentencePiece merges the highest-scoring adjacent pair first: prefer longer pieces.
    scores = [0.0 if kind != TOKEN_NORMAL else float(len(token)) for token, kind in zip(tokens, types, strict=True)]
    is_word = [token in whole_words for token in tokens]
    return tokens, scores, types, is_word


def write_tiny_model(path: Path, seed: int = SEED) -> Path:
    """Write the model to `path` (about 1 MB, f32) and return `path`; identical bytes for the same seed."""
    import gguf  # imported here so that collecting the tests does not need it

    tokens, scores, types, is_word = build_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    head_dim = N_EMBD // N_HEAD
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("capibara-facade e2e tiny model")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(IM_END_ID)
    writer.add_pad_token_id(EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", normal(n_vocab, N_EMBD, std=1.0))
    for layer in range(N_LAYER):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", normal(N_EMBD, N_EMBD, std=0.2))
        writer.add_tensor(f"{block}.attn_k.weight", normal(N_HEAD_KV * head_dim, N_EMBD, std=0.2))
        writer.add_tensor(f"{block}.attn_v.weight", normal(N_HEAD_KV * head_dim, N_EMBD, std=0.2))
        writer.add_tensor(f"{block}.attn_output.weight", normal(N_EMBD, N_EMBD, std=0.2))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", normal(N_FF, N_EMBD, std=0.2))
        writer.add_tensor(f"{block}.ffn_up.weight", normal(N_FF, N_EMBD, std=0.2))
        writer.add_tensor(f"{block}.ffn_down.weight", normal(N_EMBD, N_FF, std=0.2))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = normal(n_vocab, N_EMBD, std=0.5)
    output[~np.array(is_word)] = 0.0  # only whole words are ever sampled freely (see the module docstring)
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")
    write_tiny_model(target)
    print(f"{target}: {target.stat().st_size} bytes, {len(build_vocab()[0])} tokens")
