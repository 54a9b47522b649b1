"""Factorization machines and DeepFM over fields of side features (Rendle 2010; Guo et al. 2017).

A rating event ``(user, item, timestamp)`` becomes a set of *fields*, each
with its own slice of one shared embedding table (index 0 of the table is the
padding row, zero and never trained; index 0 of each field means "unknown"):

* user side: ``user`` (the id) and, where the dataset has demographics,
  ``gender``, ``age`` (decade bucket), ``occupation``;
* item side: ``item`` (the id), ``decade`` (release decade), and the
  multi-valued ``genres`` and ``tags`` (an item's genres / most frequent tags,
  their vectors mean-pooled into one field vector);
* context, where the ratings have timestamps: ``weekday`` and ``hour``
  (UTC) of the event and ``tenure`` (days since the user's first rating,
  log2 buckets).

With one vector ``v_f`` per field the model is

    y = b + sum_f w_f + sum_{f < g} <v_f, v_g> + deep(v_1 ... v_F)

where the pairwise sum is computed in ``O(F d)`` as
``0.5 * ((sum_f v_f)^2 - sum_f v_f^2)`` summed over dimensions, and ``deep``
is an MLP over the concatenated field vectors sharing the same embeddings
(DeepFM).  With no hidden layers the deep part is off: that is the plain FM,
the same code.  Explicit (rating) models predict ``mu + y``; implicit ones
return ``y`` as a logit.

The side tables (user and item field indices, each user's first rating day
and the context of their latest rating) are buffers of the network, so a
pair is scored from ``(user, item[, timestamp])`` indices alone, as every
other network here: a negative timestamp means "now", the user's latest
rating's context (what ``recommend`` uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

TENURE_BUCKETS = 16  # floor(log2(1 + days)) capped: 0 .. 15 (about 90 years)
CONTEXT_FIELDS = ("weekday", "hour", "tenure")
CONTEXT_SIZES = {"weekday": 7, "hour": 24, "tenure": TENURE_BUCKETS}


def context_codes(ts: np.ndarray | torch.Tensor, first_day: np.ndarray | torch.Tensor):
    """Weekday (Monday 0), UTC hour and tenure bucket of Unix-second timestamps; 1-based (0: unknown, ts < 0)."""
    lib = torch if isinstance(ts, torch.Tensor) else np
    known = ts >= 0
    t = lib.where(known, ts, 0 * ts)
    day = t // 86400
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    hour = (t % 86400) // 3600
    days = t / 86400.0 - first_day
    days = lib.clip(days, 0.0, None) if lib is np else days.clamp(min=0.0)
    tenure = lib.floor(lib.log2(1.0 + days))
    tenure = lib.clip(tenure, 0, TENURE_BUCKETS - 1) if lib is np else tenure.clamp(0, TENURE_BUCKETS - 1)
    out = [weekday + 1, hour + 1, tenure + 1]
    if lib is np:
        return [np.where(known, c, 0).astype(np.int64) for c in out]
    return [torch.where(known, c.long(), torch.zeros_like(c.long())) for c in out]


def offsets(layout: dict[str, Any]) -> dict[str, int]:
    """Where each field's slice of the shared table starts (after the padding row)."""
    out, at = {}, 1
    for f in layout["fields"]:
        out[f["name"]] = at
        at += int(f["size"]) + 1  # + the field's "unknown" row
    out["_total"] = at
    return out


class DeepFM(nn.Module):
    """FM + deep tower over field embeddings; ``layers=()`` is the plain FM.

    ``layout``: ``{"fields": [{"name", "size", "side": "user"|"item"|"context", "multi", "width"}]}``
    (``multi``: a multi-valued item field of up to ``width`` values, mean-pooled).  Buffers hold the
    side tables: ``user_cat`` ``(n_users, U)`` and ``item_cat`` ``(n_items, I)``
    global indices of the single-valued fields, ``item_multi_<name>``
    ``(n_items, width)`` of the multi-valued ones (0 padded), ``first_day``
    ``(n_users,)`` and ``last_context`` ``(n_users, C)``.
    """

    def __init__(
        self, n_users: int, n_items: int, layout: dict[str, Any], dim: int = 16, layers: tuple[int, ...] = (64, 32),
        dropout: float = 0.0, explicit: bool = False, mu: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.layout = layout
        fields = layout["fields"]
        self.names = [f["name"] for f in fields]
        self.user_fields = [f["name"] for f in fields if f["side"] == "user"]
        self.item_fields = [f["name"] for f in fields if f["side"] == "item" and not f.get("multi")]
        self.multi_fields = [f["name"] for f in fields if f["side"] == "item" and f.get("multi")]
        self.context_fields = [f["name"] for f in fields if f["side"] == "context"]
        if self.context_fields and tuple(self.context_fields) != CONTEXT_FIELDS:
            raise ValueError(f"context fields must be {CONTEXT_FIELDS} in that order, got {self.context_fields}")
        self.order = self.user_fields + self.item_fields + self.context_fields + self.multi_fields  # field order of the vectors
        self.off = offsets(layout)
        self.emb = nn.Embedding(self.off["_total"], dim, padding_idx=0)
        self.lin = nn.Embedding(self.off["_total"], 1, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=0.01)
        nn.init.zeros_(self.lin.weight)
        with torch.no_grad():
            self.emb.weight[0].zero_()  # the padding row (padding_idx keeps it out of the gradient)
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("user_cat", torch.zeros(n_users, len(self.user_fields), dtype=torch.long))
        self.register_buffer("item_cat", torch.zeros(n_items, len(self.item_fields), dtype=torch.long))
        for f in fields:
            if f["name"] in self.multi_fields:
                self.register_buffer(f"item_multi_{f['name']}", torch.zeros(n_items, int(f["width"]), dtype=torch.long))
        self.register_buffer("first_day", torch.zeros(n_users))
        self.register_buffer("last_context", torch.zeros(n_users, len(self.context_fields), dtype=torch.long))
        blocks: list[nn.Module] = []
        width = len(self.order) * dim
        for h in layers:
            blocks += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.deep = nn.Sequential(*blocks, nn.Linear(width, 1)) if layers else None
        self.explicit = explicit
        self.register_buffer("mu", torch.tensor(float(mu)))

    # -- side tables ------------------------------------------------------------------
    def load_side(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy the side tables (:func:`recsys_spark.torch.fmrec.side_arrays`) into the buffers."""
        with torch.no_grad():
            for name, buf in self.named_buffers():
                if name in arrays:
                    src = torch.from_numpy(np.asarray(arrays[name]))
                    if tuple(src.shape) != tuple(buf.shape):
                        raise ValueError(f"side table {name}: shape {tuple(src.shape)}, the network expects {tuple(buf.shape)}")
                    buf.copy_(src)

    # -- the model ---------------------------------------------------------------------
    def _context(self, users: torch.Tensor, ts: torch.Tensor | None) -> torch.Tensor:
        """Global indices ``(B, C)`` of the context fields: from ``ts``, or the user's latest context where ts < 0."""
        now = self.last_context[users]
        if ts is None or not self.context_fields:
            return now
        codes = torch.stack(context_codes(ts.long(), self.first_day[users]), dim=1)
        known = (ts >= 0)[:, None]
        base = torch.tensor([self.off[n] for n in self.context_fields], device=codes.device)
        return torch.where(known, base + codes, now)

    def field_vectors(self, users: torch.Tensor, items: torch.Tensor, ts: torch.Tensor | None = None):
        """``(V, w)``: the field vectors ``(B, F, d)`` in :attr:`order` and the first-order weights ``(B, F)``."""
        single = torch.cat([self.user_cat[users], self.item_cat[items], self._context(users, ts)], dim=1)
        v, w = [self.emb(single)], [self.lin(single).squeeze(-1)]
        for name in self.multi_fields:
            idx = getattr(self, f"item_multi_{name}")[items]
            mask = (idx > 0).float()
            n = mask.sum(1, keepdim=True).clamp(min=1.0)
            v.append((self.emb(idx).sum(1) / n)[:, None, :])
            w.append(self.lin(idx).squeeze(-1).sum(1, keepdim=True) / n)
        return torch.cat(v, dim=1), torch.cat(w, dim=1)

    @staticmethod
    def second_order(v: torch.Tensor) -> torch.Tensor:
        """``sum_{f<g} <v_f, v_g>`` per row of ``v`` ``(B, F, d)``, in ``O(F d)``."""
        s = v.sum(1)
        return 0.5 * (s * s - (v * v).sum(1)).sum(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor, ts: torch.Tensor | None = None) -> torch.Tensor:
        v, w = self.field_vectors(users, items, ts)
        y = self.bias + w.sum(1) + self.second_order(v)
        if self.deep is not None:
            y = y + self.deep(v.flatten(1)).squeeze(-1)
        return y + self.mu if self.explicit else y

    score = forward

    @torch.no_grad()
    def interactions(self, users: torch.Tensor, items: torch.Tensor, ts: torch.Tensor | None = None) -> np.ndarray:
        """Mean ``|<v_f, v_g>|`` over the rows, an ``(F, F)`` array in :attr:`order` (zero diagonal)."""
        total = np.zeros((len(self.order), len(self.order)))
        n = 0
        for s in range(0, len(users), 8192):
            v, _ = self.field_vectors(users[s : s + 8192], items[s : s + 8192], None if ts is None else ts[s : s + 8192])
            g = torch.einsum("bfd,bgd->bfg", v, v).abs().sum(0).double().numpy()
            total += g
            n += len(v)
        out = total / max(1, n)
        np.fill_diagonal(out, 0.0)
        return out


def plot_interactions(matrix: np.ndarray, names: list[str], path: str, title: str = "field interactions") -> str:
    """A heat-map PNG at ``path`` (on this machine) of :meth:`DeepFM.interactions`."""
    import matplotlib.pyplot as plt

    fig = interactions_figure(matrix, names, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def interactions_figure(matrix: np.ndarray, names: list[str], title: str = "field interactions") -> Any:
    """The heat-map of field-pair strengths (a matplotlib figure), each cell labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for a in range(len(names)):
        for b in range(len(names)):
            if a != b:
                ax.text(b, a, f"{m[a, b]:.2g}", ha="center", va="center", fontsize=7, color="white" if m[a, b] < m.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="mean |<v_f, v_g>|")
    ax.set_title(title)
    fig.tight_layout()
    return fig


__all__ = ["CONTEXT_FIELDS", "CONTEXT_SIZES", "DeepFM", "TENURE_BUCKETS", "context_codes", "interactions_figure", "offsets",
           "plot_interactions"]
