"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

The cache is allocated with torch.empty. Slots a short row has not reached yet are masked out, but
they still enter P @ V as 0 * v, and 0 * NaN = NaN (the grader fills uninitialized memory with NaN).

The rest is the reference solution:
Lab 05: the KV cache -- prefill the prompt once, then decode one token at a time.

What you write (each raises NotImplementedError("lab05: ...") in the skeleton until you do):

    KVCache.__init__   allocate K and V for every layer: (n_layers, batch, n_kv_heads, max_len, head_dim)
    KVCache.update     the hook llama.Attention calls in every layer: store the new keys and values,
                       return everything the new queries may attend to, and the mask
    prefill            the padded prompts through the model once, filling the cache -> the logits of
                       each sequence's last prompt token
    decode_one_token   one token per sequence through the model, appended to the cache -> its logits
    sample             greedy (temperature 0) or Gumbel-max sampling with noise supplied by the caller
    generate           the loop: prefill, then sample and decode; the logits of every step

Conventions (the grader relies on them):
- Prompts are RIGHT-padded: prompt (B, T) int64 and prompt_lens (B,) int64; row b's tokens are
  prompt[b, :prompt_lens[b]] and the rest is padding, whose content is arbitrary (in some tests the
  padding token's embedding is NaN: it must never reach a real token's logits).
- A token's position (its RoPE angle index) is its index in its own sequence: prompt tokens sit at
  0 .. len_b - 1, the t-th generated token (t = 0, 1, ...) at len_b + t.
- This file uses cache slot = position: row b's token at position p lives in slot p of row b. Rows fill
  at their own pace (per-sequence lengths), and the mask "slot <= position of the query" is all a query
  needs: later slots hold padding or nothing yet.

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
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        # zeros, not empty: a slot nobody has written yet is masked out, but it still enters P @ V as
        # 0 * v, and uninitialized memory may hold NaN (the grader makes sure it does).
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.filled = 0                      # slots 0 .. filled-1 may have been written (host-side bound)
        self.slots = torch.arange(max_len, device=device)
        self._mask_for = None                # (positions tensor, mask) of the current forward

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store the new keys/values and return (k_all, v_all, mask) for this layer's attention.

        k, v: (B, n_kv_heads, T, head_dim), RoPE already applied; positions: (B, T) int64.
        Returns k_all, v_all: (B, n_kv_heads, S, head_dim) and mask: (B, 1, T, S) bool (True = attend),
        or mask None when k_all/v_all are exactly the T new tokens and plain causal attention is right.
        """
        B, _, T, _ = k.shape
        if self.filled == 0:
            # Prefill into an empty cache: positions are 0..T-1 in every row (right padding), so the new
            # tokens are slots 0..T-1 and causal attention among them is exactly right.
            self.k[layer, :, :, :T] = k
            self.v[layer, :, :, :T] = v
            return k, v, None
        # Decode (or a chunk after a prefill): each row writes at its own positions.
        idx = positions[:, None, :, None].expand(B, k.shape[1], T, k.shape[3])
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        if self._mask_for is None or self._mask_for[0] is not positions:   # once per forward, not per layer
            mask = self.slots[: self.filled + T] <= positions[:, None, :, None]    # (B, 1, T, S)
            self._mask_for = (positions, mask)
        S = self._mask_for[1].shape[-1]
        return self.k[layer, :, :, :S], self.v[layer, :, :, :S], self._mask_for[1]

    def advance(self, n: int) -> None:
        """After a forward of n tokens per row: slots up to filled + n may now hold data."""
        self.filled += n
        self._mask_for = None


def prefill(model, cache: KVCache, prompt: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
    """Run the (B, T) right-padded prompts through the model once, filling the cache.

    Returns the logits (B, vocab_size) of each row's last real token (position prompt_lens[b] - 1): the
    distribution of the first generated token.
    """
    B, T = prompt.shape
    positions = torch.arange(T, device=prompt.device).expand(B, T)
    valid = positions < prompt_lens[:, None]
    h = model.hidden(prompt, positions, valid, cache)              # (B, T, dim)
    cache.advance(T)
    last = h[torch.arange(B, device=h.device), prompt_lens - 1]    # (B, dim): only these need the LM head
    return model.logits(last)


def decode_one_token(model, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tokens (B,) at positions (B,); returns the next-token logits (B, vocab_size)."""
    h = model.hidden(tokens[:, None], positions[:, None], None, cache)    # (B, 1, dim)
    cache.advance(1)
    return model.logits(h[:, 0])


def sample(logits: torch.Tensor, temperature: float, gumbel: torch.Tensor | None = None) -> torch.Tensor:
    """Next tokens (B,) int64 from logits (B, vocab_size).

    temperature == 0: greedy, argmax(logits) (gumbel is ignored).
    temperature > 0: a sample of softmax(logits / temperature), drawn with the Gumbel-max trick from the
    caller's noise: argmax(logits / temperature + gumbel), gumbel (B, vocab_size) = -log(-log(U)), U uniform.
    Computed in fp32 whatever the logits' dtype.
    """
    if temperature == 0:
        return logits.float().argmax(dim=-1)
    if gumbel is None:
        raise ValueError("temperature > 0 needs gumbel noise (B, vocab_size)")
    return (logits.float() / temperature + gumbel.float()).argmax(dim=-1)


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
    B, T = prompt.shape
    N = max_new_tokens
    cache = KVCache(model.cfg, B, T + N - 1, prompt.device, model.dtype)
    out_logits = torch.zeros(B, N, model.cfg.vocab_size, device=prompt.device, dtype=model.dtype)
    out_tokens = torch.zeros(B, N, device=prompt.device, dtype=torch.int64)
    logits = prefill(model, cache, prompt, prompt_lens)
    positions = prompt_lens.clone()
    for t in range(N):
        out_logits[:, t] = logits
        if forced is not None:
            out_tokens[:, t] = forced[:, t]
        else:
            out_tokens[:, t] = sample(logits, temperature, None if gumbel is None else gumbel[:, t])
        if t == N - 1:
            break
        logits = decode_one_token(model, cache, out_tokens[:, t], positions)
        positions = positions + 1
    return out_tokens, out_logits
