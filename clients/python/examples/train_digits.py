#!/usr/bin/python3
"""Trains an MLP and a small CNN on scikit-learn's bundled digits (8x8 images, 10 classes) with
picograd, the way one would with PyTorch: only the import differs.

    /usr/bin/python3 clients/python/examples/train_digits.py [--epochs 30] [--out digits.png]

Needs a running picogradd (PICOGRAD_URL, else the default socket; deploy/run.sh starts one),
python3-sklearn (the data ships with it: no download), python3-tqdm and python3-matplotlib.
Each training step (forward, backward and the Adam update) is one request to the daemon; the
parameters and Adam's moments never leave it. Writes a PNG of the loss and the test accuracy.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import picograd as pg  # noqa: E402
import picograd.nn as nn  # noqa: E402


def load_data(seed):
    """(x_train, y_train, x_test, y_test): a stratified 80/20 split, standardized pixels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # [N, 1, 8, 8]
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    # Standardized with the training set's statistics (the test set must not leak into them).
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 2 x 2
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10))


def accuracy(model, x, y):
    """Test accuracy: one request for the whole test set, without a graph for gradients."""
    model.eval()
    with pg.no_grad():
        pred = model(pg.tensor(x)).argmax(dim=1).numpy()
    model.train()
    return float((pred == y).mean())


def train(name, model, data, epochs, batch, lr, seed, tqdm):
    xtr, ytr, xte, yte = data
    opt = pg.optim.Adam(model.parameters(), lr=lr)
    # The learning rate decays to 0 along a cosine over the run: a new lr is a new Python number
    # in the step's graph, which is data, so the daemon compiles nothing for it.
    sched = pg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    history = {"loss": [], "acc": []}
    steps = (len(xtr) + batch - 1) // batch
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=name, unit="epoch")
    for _ in bar:
        order = rng.permutation(len(xtr))
        total = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            xb, yb = pg.tensor(xtr[idx]), pg.tensor(ytr[idx])
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)  # the pre-step loss, as in PyTorch
        sched.step()
        history["loss"].append(total / len(xtr))
        history["acc"].append(accuracy(model, xte, yte))
        bar.set_postfix(loss="%.4f" % history["loss"][-1], test_acc="%.3f" % history["acc"][-1])
    seconds = time.perf_counter() - t0
    print("%s: final loss %.4f, test accuracy %.2f %% (%d epochs, %.1f s, %.2f ms per step)"
          % (name, history["loss"][-1], 100 * history["acc"][-1], epochs, seconds,
             1e3 * seconds / (epochs * steps)))
    return history


def plot(histories, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in histories.items():
        epochs = np.arange(1, len(h["loss"]) + 1)
        ax1.plot(epochs, h["loss"], label=name)
        ax2.plot(epochs, 100 * np.array(h["acc"]), label=name)
    ax1.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print("wrote", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    ap.add_argument("--out", default="digits.png", help="the PNG to write")
    ap.add_argument("--min-mlp-accuracy", type=float, default=None,
                    help="exit 1 when the MLP's test accuracy ends below this (e.g. 0.97)")
    args = ap.parse_args()
    try:
        from tqdm import tqdm
    except ImportError:  # the example still runs, without a progress bar
        def tqdm(it, **_):
            return it

    pg.manual_seed(args.seed)
    data = load_data(args.seed)
    histories = {}
    builders = {"mlp": mlp, "cnn": cnn}
    for name in args.models.split(","):
        histories[name] = train(name, builders[name](), data, args.epochs, args.batch, args.lr,
                                args.seed, tqdm)
    plot(histories, args.out)
    if args.min_mlp_accuracy is not None and "mlp" in histories:
        if histories["mlp"]["acc"][-1] < args.min_mlp_accuracy:
            sys.exit("MLP test accuracy %.4f is below %.4f"
                     % (histories["mlp"]["acc"][-1], args.min_mlp_accuracy))


if __name__ == "__main__":
    main()
