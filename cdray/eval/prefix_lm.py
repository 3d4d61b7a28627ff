"""lm-eval's HFLM scoring all options of a shared context from one pass over that context (KV cache)."""
from __future__ import annotations

import functools
import inspect
from itertools import groupby

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM


def split_request(ctx: list[int], cont: list[int], max_length: int) -> tuple[tuple[int, ...], list[int]]:
    """(prefix, query) of one request, so that prefix + query is exactly the stock HFLM's input.

    HFLM feeds `(ctx + cont)[-(max_length + 1):][:-1]` and scores the last len(cont) positions; the
    prefix is that input up to the context's last token (kept in the KV cache and shared by every
    request with the same prefix), the query is the context's last token plus cont[:-1], whose
    outputs are exactly the scored positions.
    """
    window = (ctx + cont)[-(max_length + 1):]
    cut = len(window) - len(cont) - 1
    return tuple(window[:cut]), window[cut:-1]


class PrefixSharingHFLM(HFLM):
    """HFLM whose log-likelihood requests with the same context share one forward pass over it.

    A multiple-choice item with a long context (entity tracking: 100-400 tokens, five options)
    costs the stock HFLM five full passes; here the context runs once per batch into a KV cache,
    which is expanded to the options, and only the options' tokens run again. Requests whose
    (window-truncated) context is not shared run whole, as in the stock HFLM. Results equal the
    stock HFLM's up to float rounding.
    """

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs) -> list[int]:
        """HFLM's encoding, each distinct call made once: lm-eval encodes a shared context again
        for every option (entity tracking: five times a 100-400-token prefix), and cut_to_context
        encodes every request a second time; the tokenizer is deterministic, so the ids are the
        same. forget_encodings() empties the memo (evaluate_task, after each task)."""
        if kwargs:
            return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
        memo = self.__dict__.setdefault("_encodings", {})
        key = (string, add_special_tokens, left_truncate_len)
        if key not in memo:
            memo[key] = tuple(super().tok_encode(string, add_special_tokens, left_truncate_len))
        return list(memo[key])

    def forget_encodings(self) -> None:
        self.__dict__.pop("_encodings", None)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal" or (self.batch_size == "auto" and not override_bs):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        batch_size = int(override_bs or self.batch_size)
        copies: dict = {}  # (prefix, query, continuation) -> indices of the requests asking it
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont or len(cont) > self.max_length:
                raise ValueError(f"bad loglikelihood request {i}: context {len(ctx)} tokens, "
                                 f"continuation {len(cont)} tokens, max_length {self.max_length}")
            prefix, query = split_request(ctx, cont, self.max_length)
            # the same request is scored once (the reading task asks most of its requests twice)
            copies.setdefault((prefix, tuple(query), tuple(cont)), []).append(i)
        groups: dict = {}  # prefix -> (distinct requests, longest query)
        for prefix, query, _ in copies:
            n, longest = groups.get(prefix, (0, 0))
            groups[prefix] = (n + 1, max(longest, len(query)))
        share = {p: self.worth_sharing(len(p), n, longest) for p, (n, longest) in groups.items()}
        # rows: (key, prefix, query, continuation); a prefix not shared is run whole, as its query
        rows = [(k, k[0], list(k[1]), list(k[2])) if share[k[0]] else (k, (), list(k[0] + k[1]), list(k[2]))
                for k in copies]
        # longest prefixes first, one prefix's requests together, longest queries first (less padding)
        rows.sort(key=lambda r: (-len(r[1]), r[1], -len(r[2]), r[2]))
        res: list = [None] * len(requests)
        for chunk in _chunks(rows, batch_size):
            for row, answer in zip(chunk, self._score_chunk(chunk), strict=True):
                for i in copies[row[0]]:
                    res[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return res

    @staticmethod
    def worth_sharing(prefix_len: int, requests: int, longest_query: int) -> bool:
        """Whether requests with one prefix run it once into a cache rather than each run whole.

        Only when the prefix is at least twice the longest option: the cached pass pads every
        option to the batch's longest, so a short shared prefix (EWoK's context beside its target
        sentences) saves nothing measurable, while entity tracking's long one saves most of the work.
        """
        return requests > 1 and prefix_len >= 2 * longest_query

    def _score_chunk(self, chunk: list[tuple]) -> list[tuple[float, bool]]:
        """(sum of log-probs, is greedy) per row: one pass over the distinct prefixes, one over the queries."""
        dev = self.device
        qlen = max(len(q) for _, _, q, _ in chunk)
        queries = torch.tensor([q + [0] * (qlen - len(q)) for _, _, q, _ in chunk], dtype=torch.long, device=dev)
        kwargs = {}
        if chunk[0][1]:
            prefixes = [p for p, _ in groupby(r[1] for r in chunk)]
            plen = max(len(p) for p in prefixes)
            pmask = torch.tensor([[1] * len(p) + [0] * (plen - len(p)) for p in prefixes], dtype=torch.long, device=dev)
            pids = torch.tensor([list(p) + [0] * (plen - len(p)) for p in prefixes], dtype=torch.long, device=dev)
            # right padding needs no mask here (causal attention keeps real tokens off the pads, as in
            # the stock HFLM); the padded slots are masked out of the queries below, which always see
            # at least one real prefix token (a fully masked row would give NaN with SDPA)
            past = self._forward(pids, use_cache=True, logits_to_keep=1)
            cache = past.cache if hasattr(past, "cache") else past.past_key_values
            which = {p: k for k, p in enumerate(prefixes)}
            index = torch.tensor([which[r[1]] for r in chunk], dtype=torch.long, device=dev)
            cache.batch_select_indices(index)
            qmask = torch.tensor([[1] * len(q) + [0] * (qlen - len(q)) for _, _, q, _ in chunk],
                                 dtype=torch.long, device=dev)
            start = torch.tensor([len(r[1]) for r in chunk], dtype=torch.long, device=dev)
            kwargs = {"attention_mask": torch.cat([pmask[index], qmask], dim=1), self._cache_arg(): cache,
                      "use_cache": True, "position_ids": start[:, None] + torch.arange(qlen, device=dev)[None, :]}
        # only the last len(cont) positions of each query are scored: skip the logits before them
        first = min(len(q) - len(c) for _, _, q, c in chunk)
        logits = self._forward(queries, logits_to_keep=qlen - first, **kwargs).logits
        base = qlen - logits.shape[1]  # the query position of the first logit
        rows, cols, targets, spans = [], [], [], []
        for k, (_, _, q, cont) in enumerate(chunk):
            end = len(q) - base
            rows += [k] * len(cont)
            cols += range(end - len(cont), end)
            targets += cont
            spans.append(len(cont))
        token_lp, hit = self._score_positions(logits, rows, cols, targets)
        out, at = [], 0
        for n in spans:
            out.append((float(token_lp[at:at + n].sum()), bool(hit[at:at + n].all())))
            at += n
        return out

    def _score_positions(self, logits, rows: list[int], cols: list[int], targets: list[int]):
        """(log-prob of each target, whether it is the argmax), on the host, for the scored
        positions (rows, cols) of a chunk's logits: one log-softmax, argmax and gather over all of
        them (per position the same numbers as row by row), one copy to the host."""
        dev = self.device
        target = torch.tensor(targets, dtype=torch.long, device=dev)
        picked = logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
        lp = F.log_softmax(picked, dim=-1, dtype=self.softmax_dtype)
        return lp.gather(1, target[:, None])[:, 0].cpu(), (lp.argmax(dim=-1) == target).cpu()

    def _cache_arg(self) -> str:
        # transformers 5.x renamed past_key_values to cache
        return "cache" if _takes(self.model, "cache") else "past_key_values"

    def _forward(self, input_ids, **kwargs):
        """The model's forward, under HFLM's no-grad and autocast settings."""
        if "logits_to_keep" in kwargs and not _takes(self.model, "logits_to_keep"):
            kwargs.pop("logits_to_keep")  # then the logits cover every position
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(input_ids=input_ids, **kwargs)


def _chunks(rows: list[tuple], batch_size: int):
    """Batches of at most batch_size rows, never mixing rows with and without a prefix.

    A prefix's rows stay in one batch where they fit (a prefix split over two batches runs twice).
    """
    chunk: list[tuple] = []
    for prefix, group in groupby(rows, key=lambda r: r[1]):
        group = list(group)
        for k in range(0, len(group), batch_size):
            piece = group[k:k + batch_size]
            if chunk and (len(chunk) + len(piece) > batch_size or bool(chunk[-1][1]) != bool(prefix)):
                yield chunk
                chunk = []
            chunk.extend(piece)
    if chunk:
        yield chunk


@functools.cache
def _forward_params(forward) -> frozenset:
    return frozenset(inspect.signature(forward).parameters)


def _takes(model, name: str) -> bool:
    return name in _forward_params(type(model).forward)
