"""The networks: neural collaborative filtering and autoencoders.

Every network answers ``score(users, items) -> (n,)`` for index tensors, so
scoring in Spark is the same for all of them (:mod:`recsys_spark.torch.scoring`).

* :class:`GMF`, :class:`MLP`, :class:`NeuMF` (He et al. 2017): ``forward``
  returns a logit (implicit, log loss) or, with ``explicit=True``, a rating
  ``mu + out`` (squared loss).  NeuMF can start from trained GMF and MLP
  weights (:meth:`NeuMF.load_pretrained`).
* :class:`AutoRec` (I-AutoRec, Sedhain et al. 2015): an item's rating vector
  over users is encoded (sigmoid) and decoded (identity);
  ``r_hat(u, i) = W_u . h(r_i) + b_u``.  After training, the item codes
  ``h(r_i)`` are frozen into a buffer (:meth:`AutoRec.freeze_codes`) so a
  pair is scored from indices alone, like a factor model.
* :class:`CDAE` (Wu et al. 2016): a user's corrupted implicit vector over
  items plus a user embedding is encoded and decoded into item logits; the
  user codes are frozen the same way for scoring.
* ``deepfm`` (FM and DeepFM over side-feature fields): :mod:`recsys_spark.torch.fm`;
  its ``score`` takes an optional third argument, the event's timestamp.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("gmf", "mlp", "neumf", "autorec", "cdae", "deepfm")


class GMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int = 32, explicit: bool = False, mu: float = 0.0) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.out = nn.Linear(dim, 1)
        self.explicit = explicit
        self.register_buffer("mu", torch.tensor(float(mu)))
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user(users) * self.item(items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        y = self.out(self.features(users, items)).squeeze(-1)
        return y + self.mu if self.explicit else y

    score = forward


class MLP(nn.Module):
    def __init__(
        self, n_users: int, n_items: int, dim: int = 32, layers: tuple[int, ...] = (64, 32, 16), dropout: float = 0.0,
        explicit: bool = False, mu: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        blocks: list[nn.Module] = []
        width = 2 * dim
        for h in layers:
            blocks += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.tower = nn.Sequential(*blocks)
        self.out = nn.Linear(width, 1)
        self.explicit = explicit
        self.register_buffer("mu", torch.tensor(float(mu)))
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.tower(torch.cat([self.user(users), self.item(items)], dim=-1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        y = self.out(self.features(users, items)).squeeze(-1)
        return y + self.mu if self.explicit else y

    score = forward


class NeuMF(nn.Module):
    """GMF and MLP towers side by side, concatenated into one output layer."""

    def __init__(
        self, n_users: int, n_items: int, dim: int = 32, mlp_dim: int = 32, layers: tuple[int, ...] = (64, 32, 16),
        dropout: float = 0.0, explicit: bool = False, mu: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.gmf = GMF(n_users, n_items, dim)
        self.mlp = MLP(n_users, n_items, mlp_dim, layers, dropout)
        del self.gmf.out, self.mlp.out  # the towers' own output layers: unused here (DDP rejects unused parameters)
        self.out = nn.Linear(dim + (layers[-1] if layers else 2 * mlp_dim), 1)
        self.explicit = explicit
        self.register_buffer("mu", torch.tensor(float(mu)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.gmf.features(users, items), self.mlp.features(users, items)], dim=-1)
        y = self.out(h).squeeze(-1)
        return y + self.mu if self.explicit else y

    score = forward

    def load_pretrained(self, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> None:
        """Start from trained towers; the output layer is ``alpha``/``1 - alpha`` of theirs (the paper's recipe)."""
        self.gmf.load_state_dict({k: v for k, v in gmf.state_dict().items() if not k.startswith("out.")})
        self.mlp.load_state_dict({k: v for k, v in mlp.state_dict().items() if not k.startswith("out.")})
        with torch.no_grad():
            self.out.weight.copy_(torch.cat([alpha * gmf.out.weight, (1 - alpha) * mlp.out.weight], dim=1))
            self.out.bias.copy_(alpha * gmf.out.bias + (1 - alpha) * mlp.out.bias)


class AutoRec(nn.Module):
    """I-AutoRec: rows are items, columns users; ``forward(r)`` reconstructs rating rows."""

    def __init__(self, n_users: int, n_items: int, hidden: int = 500, mu: float = 0.0, noise: float = 0.0) -> None:
        super().__init__()
        self.noise = noise  # input drop-out while training (0: the plain I-AutoRec)
        self.encoder = nn.Linear(n_users, hidden)
        self.decoder = nn.Linear(hidden, n_users)
        self.register_buffer("mu", torch.tensor(float(mu)))
        self.register_buffer("codes", torch.zeros(n_items, hidden))

    def encode(self, r: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise > 0:
            r = nn.functional.dropout(r, p=self.noise)
        return torch.sigmoid(self.encoder(r))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(r))

    @torch.no_grad()
    def freeze_codes(self, rows: torch.Tensor, items: torch.Tensor) -> None:
        """Store ``h(r_i)`` of the training rating rows of ``items``."""
        self.codes[items] = self.encode(rows)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = self.codes[items]
        return (h * self.decoder.weight[users]).sum(-1) + self.decoder.bias[users]


class CDAE(nn.Module):
    """Collaborative denoising autoencoder over users' implicit item vectors."""

    def __init__(self, n_users: int, n_items: int, hidden: int = 64, noise: float = 0.5) -> None:
        super().__init__()
        self.noise = noise
        self.user = nn.Embedding(n_users, hidden)
        self.encoder = nn.Linear(n_items, hidden)
        self.decoder = nn.Linear(hidden, n_items)
        self.register_buffer("codes", torch.zeros(n_users, hidden))
        nn.init.normal_(self.user.weight, std=0.01)

    def encode(self, users: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise > 0:
            y = nn.functional.dropout(y, p=self.noise)  # drop-out corruption, survivors scaled by 1/(1-p)
        return torch.sigmoid(self.encoder(y) + self.user(users))

    def forward(self, users: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(users, y))

    @torch.no_grad()
    def freeze_codes(self, users: torch.Tensor, y: torch.Tensor) -> None:
        self.codes[users] = self.encode(users, y)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.codes[users] * self.decoder.weight[items]).sum(-1) + self.decoder.bias[items]


def net_kwargs(kind: str, net: dict, explicit: bool = False, mu: float = 0.0) -> dict:
    """``build_net`` keyword arguments from a TOML ``[params.net]`` table plus the task (explicit / mu)."""
    p = dict(net)
    if "layers" in p:
        p["layers"] = tuple(p["layers"])
    if kind in ("gmf", "mlp", "neumf", "deepfm"):
        p.update(explicit=explicit, mu=mu)
    elif kind == "autorec":
        p.update(mu=mu)
    return p


def build_net(kind: str, n_users: int, n_items: int, **params) -> nn.Module:
    """The network ``kind`` (one of :data:`KINDS`) with its architecture parameters."""
    if kind == "gmf":
        return GMF(n_users, n_items, **params)
    if kind == "mlp":
        return MLP(n_users, n_items, **params)
    if kind == "neumf":
        return NeuMF(n_users, n_items, **params)
    if kind == "autorec":
        return AutoRec(n_users, n_items, **params)
    if kind == "cdae":
        return CDAE(n_users, n_items, **params)
    if kind == "deepfm":
        from recsys_spark.torch.fm import DeepFM

        return DeepFM(n_users, n_items, **params)
    raise ValueError(f"network kind must be one of {KINDS}, got {kind!r}")
