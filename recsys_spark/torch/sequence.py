"""Sequence recommenders: networks, history windows, session cutting and the training loop (no Spark here).

Items are shifted by one inside the networks: index 0 is padding, item
``i`` is token ``i + 1``.  Sequences are *right*-padded, so a real position
only ever attends to real positions before it (no fully masked row, no NaN)
and a user's state is read at its last real position.

* :class:`SASRec` (Kang & McAuley 2018): item embeddings plus learned
  positions, ``blocks`` pre-norm causal self-attention blocks (``heads``
  heads, a position-wise feed-forward part), a last layer norm; the score of
  item ``j`` at position ``t`` is ``<h_t, e_j>`` with the input embedding
  table (tied weights).
* :class:`SeqGRU`: a GRU over the item embeddings, then attention pooling in
  the NARM shape (Li et al. 2017): at position ``t`` the additive attention
  ``a_tj = softmax_j(v . tanh(W h_j + U h_t))`` over ``j <= t``, and the state
  ``[h_t ; sum_j a_tj h_j]`` projected to the embedding width and scored
  against the item table.

Both return, with the states, the attention of every position over the
positions before it (:meth:`encode`): SASRec's last block averaged over its
heads, SeqGRU's pooling weights.  A row sums to one over ``j <= t`` and is
zero after ``t`` (:func:`causal_mask`); that row at the last position is the
explanation ("because you recently watched ...").

Training (:func:`train_sequences`) is next-item prediction at every position
with the full softmax cross-entropy over the catalogue (the loss that
published comparisons find matters more than the architecture), Adam, at
most ``epochs`` epochs.  A history longer than ``max_len + 1`` is cut into
consecutive windows from its end, so every transition is trained on once per
epoch.  With ``holdout``, the last item of every sequence of three or more is
held out of training and the network is scored on it after each epoch (full
ranking of the items the sequence has not seen, NDCG@10); training stops
after ``patience`` epochs without a better value and the best epoch's weights
are kept.  The held-out items stay in the users' histories: they are read as
input when the model recommends, only never trained on as targets.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

SEQ_KINDS = ("sasrec", "seq_gru")
PAD = 0


def causal_mask(length: int, device: Any = None) -> torch.Tensor:
    """``(L, L)`` bool, True where position ``t`` may look at ``j`` (``j <= t``)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention restricted to earlier positions; returns the head-averaged weights."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (b, h, n, n)
        s = s.masked_fill(~causal_mask(n, x.device), float("-inf"))
        w = torch.softmax(s, dim=-1)
        y = (self.drop(w) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(y), w.mean(dim=1)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, w = self.attn(self.ln1(x))
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.ln2(x))), w


class _SeqNet(nn.Module):
    """The shared parts: the item table (row 0 padding) and scoring against it."""

    def __init__(self, n_items: int, dim: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.item.weight, std=dim**-0.5)
        with torch.no_grad():
            self.item.weight[PAD].zero_()

    def encode(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every token (column 0 is padding: never a candidate) for states ``h`` (..., dim)."""
        return h @ self.item.weight.T

    def last_state(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state at each row's last real position and that position's attention row (``(b, dim)``, ``(b, L)``)."""
        h, w = self.encode(seq)
        last = ((seq != PAD).sum(dim=1) - 1).clamp(min=0)
        rows = torch.arange(seq.shape[0], device=seq.device)
        return h[rows, last], w[rows, last]


class SASRec(_SeqNet):
    def __init__(self, n_items: int, dim: int = 64, max_len: int = 50, blocks: int = 2, heads: int = 1, dropout: float = 0.5) -> None:
        super().__init__(n_items, dim, max_len, dropout)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.ln = nn.LayerNorm(dim)

    def encode(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos(torch.arange(n, device=seq.device))
        x = self.drop(x) * (seq != PAD).unsqueeze(-1)
        w = torch.zeros(seq.shape[0], n, n, device=seq.device)
        for block in self.blocks:
            x, w = block(x)
        return self.ln(x), w


class SeqGRU(_SeqNet):
    def __init__(self, n_items: int, dim: int = 64, max_len: int = 50, hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__(n_items, dim, max_len, dropout)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.proj = nn.Linear(2 * hidden, dim, bias=False)

    def encode(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.gru(self.drop(self.item(seq)))  # (b, n, hidden); right padding: real states never read padding
        n = seq.shape[1]
        e = self.v(torch.tanh(self.key(h).unsqueeze(1) + self.query(h).unsqueeze(2))).squeeze(-1)  # (b, t, j)
        w = torch.softmax(e.masked_fill(~causal_mask(n, seq.device), float("-inf")), dim=-1)
        pooled = w @ h  # (b, t, hidden)
        return self.proj(self.drop(torch.cat([h, pooled], dim=-1))), w


def build_seq_net(kind: str, n_items: int, **params: Any) -> _SeqNet:
    if kind == "sasrec":
        return SASRec(n_items, **params)
    if kind == "seq_gru":
        return SeqGRU(n_items, **params)
    raise ValueError(f"sequence kind must be one of {SEQ_KINDS}, got {kind!r}")


# -- data -----------------------------------------------------------------------------------------
def cut_sessions(timestamps: np.ndarray, gap: int) -> np.ndarray:
    """Session number of each rating of one chronological history: a new session after more than ``gap`` seconds."""
    t = np.asarray(timestamps, dtype=np.int64)
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(t) > gap)])


def current_session(items: np.ndarray, timestamps: np.ndarray, gap: int) -> np.ndarray:
    """The items of the history's last session (all of it when ``gap`` is 0 or less)."""
    if gap <= 0 or len(items) == 0:
        return np.asarray(items)
    s = cut_sessions(timestamps, gap)
    return np.asarray(items)[s == s[-1]]


def windows(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets ``(N, max_len)`` (tokens, right-padded with 0) from item sequences (0-based item indices).

    Each sequence of ``n >= 2`` items gives its transitions, in windows of at
    most ``max_len`` taken from its end; a sequence of one item gives none.
    """
    xs, ys = [], []
    for s in seqs:
        tok = np.asarray(s, dtype=np.int64) + 1
        end = len(tok)
        while end >= 2:
            w = tok[max(0, end - max_len - 1):end]
            x, y = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            x[: len(w) - 1], y[: len(w) - 1] = w[:-1], w[1:]
            xs.append(x)
            ys.append(y)
            end -= max_len
    if not xs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(xs), np.stack(ys)


def input_batch(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """The last ``max_len`` items of each sequence as right-padded tokens (a user's state is read at its last item)."""
    out = np.zeros((len(seqs), max_len), np.int64)
    for r, s in enumerate(seqs):
        tail = np.asarray(s, dtype=np.int64)[-max_len:] + 1
        out[r, : len(tail)] = tail
    return out


def holdout_ndcg(model: _SeqNet, inputs: list[np.ndarray], targets: np.ndarray, catalogue: np.ndarray, k: int = 10,
                 batch: int = 512) -> float:  # fmt: skip
    """Mean NDCG@k of each sequence's held-out next item, every catalogue item the sequence has not seen ranked."""
    if len(inputs) == 0:
        return 0.0
    model.eval()
    gains = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            part = inputs[start:start + batch]
            h, _ = model.last_state(torch.from_numpy(input_batch(part, model.max_len)))
            s = model.logits(h)[:, 1:].numpy()
            s[:, ~catalogue] = -np.inf
            for r, seq in enumerate(part):
                s[r, seq] = -np.inf
            t = targets[start:start + batch]
            above = (s > s[np.arange(len(part)), t][:, None]).sum(axis=1)  # items ranked before the target
            gains.append(np.where(above < k, 1.0 / np.log2(above + 2.0), 0.0))
    return float(np.concatenate(gains).mean())


def train_sequences(
    kind: str, seqs: list[np.ndarray], n_items: int, net: dict[str, Any], epochs: int, batch_size: int, lr: float,
    weight_decay: float, seed: int, threads: int | None = None, name: str = "seq", holdout: bool = True, patience: int = 5,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:  # fmt: skip
    """Next-item training with the full softmax; the weights (numpy) and what happened (loss and holdout per epoch, seconds)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if threads:
        torch.set_num_threads(threads)
    model = build_seq_net(kind, n_items, **net)
    catalogue = np.zeros(n_items, dtype=bool)
    for sq in seqs:
        catalogue[np.asarray(sq, np.int64)] = True
    held = [i for i, sq in enumerate(seqs) if len(sq) >= 3] if holdout else []
    h_inputs = [np.asarray(seqs[i][:-1], np.int64) for i in held]
    h_targets = np.asarray([int(seqs[i][-1]) for i in held], dtype=np.int64)
    if held:
        cut = set(held)
        seqs = [sq[:-1] if i in cut else sq for i, sq in enumerate(seqs)]
    x, y = windows(seqs, model.max_len)
    if len(x) == 0:
        raise ValueError(f"{name}: no history has two items: nothing to learn the next item from")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")
    history, epoch_s, scores = [], [], []
    best, best_epoch, best_w = -1.0, -1, None
    targets = int((y != PAD).sum())
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            h, _ = model.encode(xb)
            loss = loss_fn(model.logits(h).reshape(-1, n_items + 1), yb.reshape(-1))
            opt.zero_grad()
            (loss / max(1, int((yb != PAD).sum()))).backward()
            opt.step()
            total += loss.item()
        history.append(round(total / targets, 5))
        epoch_s.append(round(time.perf_counter() - t0, 3))
        if held:
            scores.append(round(holdout_ndcg(model, h_inputs, h_targets, catalogue), 5))
        log.info("%s: epoch %d/%d, cross-entropy %.4f per target%s (%d windows, %.1f s)", name, epoch + 1, epochs, history[-1],
                 f", holdout NDCG@10 {scores[-1]:.4f}" if held else "", len(x), epoch_s[-1])  # fmt: skip
        if not held or scores[-1] > best:
            best, best_epoch = (scores[-1] if held else best), epoch
            best_w = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            log.info("%s: no better holdout NDCG@10 for %d epochs: keeping epoch %d", name, patience, best_epoch + 1)
            break
    model.eval()
    info = {"loss": history, "epoch_s": epoch_s, "windows": int(len(x)), "targets": targets, "best_epoch": best_epoch + 1,
            "holdout_ndcg@10": scores, "holdout_sequences": len(held)}  # fmt: skip
    return best_w, info


def load_seq_net(kind: str, n_items: int, net: dict[str, Any], weights: dict[str, np.ndarray]) -> _SeqNet:
    model = build_seq_net(kind, n_items, **net)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return model.eval()


__all__ = [
    "SEQ_KINDS", "SASRec", "SeqGRU", "build_seq_net", "causal_mask", "current_session", "cut_sessions", "input_batch",
    "load_seq_net", "train_sequences", "windows",
]  # fmt: skip
