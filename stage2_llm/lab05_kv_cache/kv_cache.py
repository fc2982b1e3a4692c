"""Lab 05: the KV cache -- prefill the prompt once, then decode one token at a time.

What you write (each raises NotImplementedError("lab05: ...") until you do):

    KVCache.__init__   allocate K and V for every layer: (n_layers, batch, n_kv_heads, max_len, head_dim)
    KVCache.update     the hook llama.Attention calls in every layer: store the new keys and values,
                       return everything the new queries may attend to, and the mask
    prefill            the padded prompts through the model once, filling the cache -> the logits of
                       each sequence's last prompt token
    decode_one_token   one token per sequence through the model, appended to the cache -> its logits
    sample             greedy (temperature 0) or Gumbel-max sampling with noise supplied by the caller
    generate           the loop: prefill, then sample and decode; the logits of every step

The model (llama.py, given) calls your cache from every attention layer:

    k_all, v_all, mask = cache.update(layer, k, v, positions)      # then attention(q, k_all, v_all, mask)

Conventions (the grader relies on them):
- Prompts are RIGHT-padded: prompt (B, T) int64 and prompt_lens (B,) int64; row b's tokens are
  prompt[b, :prompt_lens[b]] and the rest is padding, whose content is arbitrary (in some tests the
  padding token's embedding is NaN: it must never reach a real token's logits).
- A token's position (its RoPE angle index) is its index in its own sequence: prompt tokens sit at
  0 .. len_b - 1, the t-th generated token (t = 0, 1, ...) at len_b + t.
- Suggested layout: cache slot = position. Row b's token at position p lives in slot p of row b, rows
  fill at their own pace (per-sequence lengths), and the mask "slot <= position of the query" is all a
  query needs: later slots hold padding or nothing yet.

Checked by `labs grade lab05`: the logits of every step against an fp64 full forward over the growing
sequence (fp32 within 1e-5), ragged batches with NaN padding, GQA ratios 1/4/8, sampled tokens exactly;
on a GPU, decoding speed against recomputing the full forward at every step.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for a batch of sequences, one slot per position.

    k, v: (n_layers, batch, n_kv_heads, max_len, head_dim) in the model's dtype. Keys are stored after
    RoPE (rotated at their own position, once), so decoding never touches an old key again.
    """

    def __init__(self, cfg, batch: int, max_len: int, device, dtype: torch.dtype):
        # TODO(lab05): allocate self.k and self.v, each (cfg.n_layers, batch, cfg.n_kv_heads, max_len,
        #   cfg.head_dim) on `device` in `dtype` -- n_kv_heads, not n_heads: that is the memory GQA saves.
        #   Think about what a slot holds before anything is written to it. A masked slot gets probability
        #   exactly 0, but it still enters P @ V as 0 * v, and 0 * NaN = NaN: uninitialized memory (torch.empty)
        #   may hold NaN, and the grader makes sure it does.
        #   Keep whatever bookkeeping you need (how many slots may be filled, a cached mask, ...).
        raise NotImplementedError("lab05: KVCache.__init__ (allocate the K and V buffers)")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store the new keys/values and return (k_all, v_all, mask) for this layer's attention.

        k, v: (B, n_kv_heads, T, head_dim), RoPE already applied; positions: (B, T) int64, the position of
        each new token in its own sequence (prefill: 0..T-1 in every row; decode: T = 1, len_b + t).
        Returns k_all, v_all: (B, n_kv_heads, S, head_dim) and mask: (B, 1, T, S) bool, True where query t
        may attend slot s -- or mask None when k_all/v_all are exactly the T new tokens and plain causal
        attention among them is right (a prefill into an empty cache). Called once per layer per forward,
        all layers with the same `positions` tensor.
        """
        # TODO(lab05):
        #   1. write k and v into layer `layer` of the cache at their slots (slot = position, per row:
        #      tensor.scatter_ along the slot dim, or advanced indexing). Prefill into an empty cache can
        #      write slots 0..T-1 of every row in one slice assignment.
        #   2. return the slots the queries may see and the mask: query (b, t) sees slots s <= positions[b, t]
        #      of its own row. Return only the slots that may have been written (0 .. filled + T - 1), not the
        #      whole max_len buffer: attention reads every slot you hand it.
        #   The mask is the same in every layer of one forward: build it once per forward, not per layer.
        raise NotImplementedError("lab05: KVCache.update (store k/v at their slots, return k/v/mask)")


def prefill(model, cache: KVCache, prompt: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
    """Run the (B, T) right-padded prompts through the model once, filling the cache.

    Returns the logits (B, vocab_size) of each row's last real token (position prompt_lens[b] - 1): the
    distribution of the first generated token.
    """
    # TODO(lab05): positions 0..T-1 in every row; valid = positions < prompt_lens[:, None] (so padding is
    #   zeroed at the embedding: model.hidden(prompt, positions, valid, cache) -> (B, T, dim)); update your
    #   cache's bookkeeping (T slots per row written); then the LM head (model.logits) on row b's hidden state
    #   at prompt_lens[b] - 1 only -- not on all T positions.
    raise NotImplementedError("lab05: prefill (prompts through the model once, logits of each last token)")


def decode_one_token(model, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tokens (B,) at positions (B,); returns the next-token logits (B, vocab_size)."""
    # TODO(lab05): model.hidden on (B, 1) tokens at (B, 1) positions with the cache (valid=None: no padding
    #   among new tokens); update the cache's bookkeeping; the logits of that one token.
    raise NotImplementedError("lab05: decode_one_token (one token per row through the model with the cache)")


def sample(logits: torch.Tensor, temperature: float, gumbel: torch.Tensor | None = None) -> torch.Tensor:
    """Next tokens (B,) int64 from logits (B, vocab_size).

    temperature == 0: greedy, argmax(logits) (gumbel is ignored).
    temperature > 0: a sample of softmax(logits / temperature), drawn with the Gumbel-max trick from the
    caller's noise: argmax(logits / temperature + gumbel), gumbel (B, vocab_size) = -log(-log(U)), U uniform.
    Computed in fp32 whatever the logits' dtype.
    """
    # TODO(lab05): the two cases above. Why Gumbel-max samples softmax(logits / T): see the notebook.
    raise NotImplementedError("lab05: sample (greedy or Gumbel-max)")


@torch.no_grad()
def generate(model, prompt: torch.Tensor, prompt_lens: torch.Tensor, max_new_tokens: int,
             temperature: float = 0.0, gumbel: torch.Tensor | None = None,
             forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate max_new_tokens = N tokens per row with the KV cache.

    prompt (B, T) int64, right-padded; prompt_lens (B,) int64 in [1, T]. gumbel: (B, N, vocab_size) fp32
    noise for step t's sample (temperature > 0). forced: (B, N) int64 or None; when given, step t feeds
    forced[:, t] instead of a sampled token (teacher forcing: the logits of a known continuation).

    Returns tokens (B, N) int64 (the sampled or forced token of every step) and logits (B, N, vocab_size)
    in the model's dtype: logits[:, 0] come from the prefill (position len_b - 1), logits[:, t] from
    decoding tokens[:, t - 1] at position len_b + t - 1.
    """
    # TODO(lab05): a cache big enough for T + N - 1 slots (the last token is sampled, never fed back);
    #   prefill; then for t in 0..N-1: record logits, choose tokens[:, t] (forced or sampled), and -- unless
    #   it is the last step -- decode it at positions prompt_lens + t. model.cfg, model.dtype, prompt.device
    #   give you everything to allocate.
    raise NotImplementedError("lab05: generate (prefill, then decode one token at a time)")
