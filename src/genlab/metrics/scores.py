"""Samples for the scores (by seeded chunks, split over processes and gathered back in
order), conditional and reconstruction accuracy, and probes of frozen codes (linear,
k-NN and one-hidden-layer classifiers). FID / KID / precision-recall of the features are
in :mod:`genlab.metrics.sample_quality`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genlab.data.transforms import model_images

SAMPLE_CHUNK = 500  # images per sampler call; chunk k's noise is seeded by (seed, k)


def chunks(n: int, size: int = SAMPLE_CHUNK) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(n) in pieces of ``size``."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def my_chunks(plan: list[tuple[int, int]], rank: int, world: int) -> list[int]:
    """The chunk indices one of ``world`` processes works on: every world-th."""
    return list(range(rank, len(plan), world))


def world_of(trainer: Any) -> tuple[int, int]:
    """(rank, world size) of a trainer (one process where it does not say)."""
    return getattr(trainer, "global_rank", 0), getattr(trainer, "world_size", 1)


def _all_gather(t: Tensor) -> list[Tensor]:
    import torch.distributed as dist

    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def distributed_rows(trainer: Any, n: int, work: Callable[[int, int, int], Tensor]) -> Tensor:
    """``work(k, start, stop) -> rows`` for this rank's chunks of range(n), gathered from
    every rank in chunk order: (n, ...) on every rank."""
    rank, world = world_of(trainer)
    plan = chunks(n)
    mine = [work(k, *plan[k]) for k in my_chunks(plan, rank, world)]
    local = torch.cat(mine) if mine else None
    if local is None:  # more ranks than chunks: an empty share of the right shape
        local = work(0, *plan[0])[:0]
    return gather_in_order(local, plan, rank, world, _all_gather)


def gather_in_order(
    local: Tensor,
    plan: list[tuple[int, int]],
    rank: int,
    world: int,
    all_gather: Callable[[Tensor], list[Tensor]] | None = None,
) -> Tensor:
    """Rows of every chunk of ``plan`` in chunk order, from each process's ``local``
    rows of its :func:`my_chunks` (concatenated). ``all_gather(t)`` returns every
    process's t (same shape); ranks whose share is shorter pad theirs."""
    if world == 1:
        return local
    sizes = [sum(plan[k][1] - plan[k][0] for k in my_chunks(plan, r, world)) for r in range(world)]
    pad = max(sizes) - local.shape[0]
    if pad:
        local = torch.cat([local, local.new_zeros(pad, *local.shape[1:])])
    parts = [p[: sizes[r]] for r, p in enumerate(all_gather(local.contiguous()))]
    out, offsets = [], [0] * world
    for k, (a, b) in enumerate(plan):
        r = k % world
        out.append(parts[r][offsets[r] : offsets[r] + b - a])
        offsets[r] += b - a
    return torch.cat(out)


def chunk_generator(device: torch.device, seed: int, k: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)


to_images = model_images  # the name the scores have used


@torch.no_grad()
def generate(
    model: nn.Module, n: int, seed: int = 0, batch_size: int = SAMPLE_CHUNK, **kwargs: Any
) -> Tensor:
    """n samples of ``model.sample(..., **kwargs)`` as [0, 1] images, chunk k drawn with
    the generator of (seed, k): the same images whatever the batch or process split."""
    device = next(model.parameters()).device
    return torch.cat(
        [
            to_images(
                model, model.sample(b - a, generator=chunk_generator(device, seed, k), **kwargs)
            )
            for k, (a, b) in enumerate(chunks(n, batch_size))
        ]
    )


@torch.no_grad()
def conditional_hits(model: nn.Module, net: nn.Module, labels: Tensor, seed: int = 0) -> Tensor:
    """How many samples of ``model.sample_conditional(labels)`` the classifier ``net``
    assigns to the class asked for (a 0-d tensor); samples mapped to images as for FID."""
    g = torch.Generator(device=labels.device).manual_seed(seed)
    imgs = to_images(model, model.sample_conditional(labels, generator=g))
    return (classify(net, imgs) == labels).sum()


@torch.no_grad()
def classify(extractor_net: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes (N,) of [0, 1] / uint8 images by a FeatureNet's classifier head."""
    return torch.cat(
        [
            extractor_net.logits(x[i : i + batch_size]).argmax(1)
            for i in range(0, x.shape[0], batch_size)
        ]
    )


@torch.no_grad()
def reconstruction_accuracy(
    model: nn.Module,
    extractor_net: nn.Module,
    x: Tensor,
    y: Tensor,
    seed: int = 0,
    batch_size: int = 1000,
) -> float:
    """Fraction of uint8 images x (N, C, H, W) whose reconstruction ``model.reconstruct``
    the feature network classifies as their label y (N,): does the round trip through
    the code keep the class? The model must be in eval mode."""
    dev = next(model.parameters()).device
    hits = torch.zeros((), device=dev)
    for i in range(0, x.shape[0], batch_size):
        b, lab = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        g = torch.Generator(device=dev).manual_seed(seed + i)  # fixed dequantisation noise
        r = to_images(model, model.reconstruct(model.preprocess(b, g)))
        hits += (extractor_net.logits(r).argmax(1) == lab).sum()
    return float(hits) / x.shape[0]


@torch.no_grad()
def encode_all(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Frozen latents (N, d) of uint8 images: the encoder's mean (VAE) or code (AE)."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size]
        g = torch.Generator(device=b.device).manual_seed(i)
        z = model.encode(model.preprocess(b, g))
        out.append((z[0] if isinstance(z, tuple) else z).float().flatten(1))
    return torch.cat(out)


@torch.no_grad()
def layers_all(model: nn.Module, x: Tensor, batch_size: int = 1000) -> dict[str, Tensor]:
    """``model.probe_layers`` of uint8 images, batched: {layer: (N, d_layer)}."""
    out: dict[str, list[Tensor]] = {}
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size]
        g = torch.Generator(device=b.device).manual_seed(i)
        for k, v in model.probe_layers(model.preprocess(b, g)).items():
            out.setdefault(k, []).append(v.float().flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


def linear_probe_acc(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> float:
    """Accuracy of multinomial logistic regression on standardised frozen latents."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(z_train.cpu().numpy())
    clf = LogisticRegression(max_iter=500)
    clf.fit(scaler.transform(z_train.cpu().numpy()), y_train.cpu().numpy())
    return float(clf.score(scaler.transform(z_test.cpu().numpy()), y_test.cpu().numpy()))


@torch.no_grad()
def knn_acc(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour vote (Euclidean) on frozen latents."""
    correct = 0
    classes = int(max(y_train.max(), y_test.max())) + 1
    for i in range(0, z_test.shape[0], 1000):
        d = torch.cdist(z_test[i : i + 1000], z_train)  # (b, N_train)
        nn_labels = y_train[d.topk(min(k, z_train.shape[0]), largest=False).indices]  # (b, k)
        votes = torch.nn.functional.one_hot(nn_labels, classes).sum(1)  # (b, classes)
        correct += int((votes.argmax(1) == y_test[i : i + 1000]).sum())
    return correct / z_test.shape[0]


def mlp_probe_acc(
    z_train: Tensor,
    y_train: Tensor,
    z_test: Tensor,
    y_test: Tensor,
    hidden: int = 200,
    dropout: float = 0.1,
    steps: int = 3000,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Accuracy of a one-hidden-layer classifier (``hidden`` ReLU units, dropout) on
    standardised frozen latents, as Deep InfoMax's non-linear probe: Adam (lr 1e-3),
    ``steps`` mini-batch steps, on the latents' device."""
    # Test and validation loops run in inference mode: leave it to train (clones are
    # ordinary tensors autograd may save).
    with torch.inference_mode(False), torch.enable_grad():
        return _fit_mlp_probe(
            *(t.clone() for t in (z_train, y_train, z_test, y_test)),
            hidden, dropout, steps, batch_size, seed,
        )  # fmt: skip


def _fit_mlp_probe(z_train, y_train, z_test, y_test, hidden, dropout, steps, batch_size, seed):
    mean, std = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    a, b = (z_train - mean) / std, (z_test - mean) / std  # (N, d)
    classes = int(max(y_train.max(), y_test.max())) + 1
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights and dropout masks
        layers = [nn.Linear(a.shape[1], hidden), nn.ReLU(), nn.Dropout(dropout)]
        net = nn.Sequential(*layers, nn.Linear(hidden, classes)).to(a.device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(a.shape[0], (batch_size,), generator=g).to(a.device)
            loss = nn.functional.cross_entropy(net(a[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b[i : i + 4096]).argmax(1) for i in range(0, b.shape[0], 4096)])
    return float((pred == y_test).float().mean())


def probe_scores(
    model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]
) -> dict[str, float]:
    """Linear, 5-NN and MLP probe accuracies of ``model.encode`` on (images, labels) pairs
    of a training and a test split: {"linear_probe_acc", "knn_acc", "mlp_probe_acc"}.
    The model must be in eval mode; codes are the encoder's mean (VAE) or code (AE). A
    model with ``probe_layers(x)`` (Deep InfoMax) also gets each layer's three probes,
    named ``<probe>_<layer>``."""
    dev = next(model.parameters()).device
    x_tr, y_tr = (t.to(dev) for t in train)
    x_te, y_te = (t.to(dev) for t in test)
    feats = [("", encode_all(model, x_tr), encode_all(model, x_te))]
    if hasattr(model, "probe_layers"):
        l_tr, l_te = layers_all(model, x_tr), layers_all(model, x_te)
        feats += [(f"_{k}", l_tr[k], l_te[k]) for k in l_tr]
    out = {}
    for sfx, z_tr, z_te in feats:
        out[f"linear_probe_acc{sfx}"] = linear_probe_acc(z_tr, y_tr, z_te, y_te)
        out[f"knn_acc{sfx}"] = knn_acc(z_tr, y_tr, z_te, y_te)
        out[f"mlp_probe_acc{sfx}"] = mlp_probe_acc(z_tr, y_tr, z_te, y_te)
    return out
