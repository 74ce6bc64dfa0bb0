"""The PyTorch MNIST VAE example, written out faithfully, for side-by-side comparison.

Run (needs the torch extra: pip install '.[torch]'):
  .venv/bin/python -m experiments.pytorch_reference --data-path reference --epochs 10 --seed 1

Question: what does the original recipe give on this machine, and how fast? Same spec,
init (nn.Linear's default), loss (BCE on the sigmoid output, summed, + KL), Adam 1e-3,
batch 128 with the last partial batch, shuffling each epoch, per-example reporting and a
one-sample test ELBO. Two data paths:
- ``reference``: a Dataset that converts each item on access (uint8 -> PIL -> float / 255),
  as the original MNIST + ToTensor pipeline does, through a DataLoader;
- ``preloaded``: the whole split as one float tensor, batches by randperm.
Data come from vae_jax's own readers (bundled MNIST by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vae_jax import data


class VAE(nn.Module):
  """The reference model: fc1 784->400, fc21/fc22 400->20, fc3 20->400, fc4 400->784."""

  def __init__(self, hidden_dim: int = 400, latent_dim: int = 20, input_dim: int = 784):
    super().__init__()
    self.input_dim = input_dim
    self.fc1 = nn.Linear(input_dim, hidden_dim)
    self.fc21 = nn.Linear(hidden_dim, latent_dim)
    self.fc22 = nn.Linear(hidden_dim, latent_dim)
    self.fc3 = nn.Linear(latent_dim, hidden_dim)
    self.fc4 = nn.Linear(hidden_dim, input_dim)

  def encode(self, x):
    h1 = F.relu(self.fc1(x))
    return self.fc21(h1), self.fc22(h1)

  def reparameterize(self, mu, logvar, eps=None):
    std = torch.exp(0.5 * logvar)
    if eps is None:
      eps = torch.randn_like(std)
    return mu + eps * std

  def decode(self, z):
    return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

  def forward(self, x, eps=None):
    mu, logvar = self.encode(x.view(-1, self.input_dim))
    return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar


def loss_terms(recon_x, x, mu, logvar):
  """(BCE + KL, BCE, KL), each summed over the batch, exactly as the reference."""
  bce = F.binary_cross_entropy(recon_x, x.view(recon_x.shape), reduction="sum")
  kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
  return bce + kld, bce, kld


class ConvertOnAccess(torch.utils.data.Dataset):
  """uint8 images converted per item, as torchvision's MNIST + ToTensor: PIL, then / 255."""

  def __init__(self, images_u8: np.ndarray):
    self.images_u8 = images_u8

  def __len__(self):
    return len(self.images_u8)

  def __getitem__(self, i):
    image = Image.fromarray(self.images_u8[i], mode="L")
    return torch.from_numpy(np.array(image, np.uint8, copy=True)).float().div(255).unsqueeze(0)


def batches(
  images_u8: np.ndarray, data_path: str, batch_size: int, shuffle: bool, generator: torch.Generator
):
  """Yields float batches (B, 1, 28, 28) in [0, 1] along the chosen data path."""
  if data_path == "reference":
    loader = torch.utils.data.DataLoader(
      ConvertOnAccess(images_u8), batch_size=batch_size, shuffle=shuffle, generator=generator
    )
    yield from loader
    return
  if data_path != "preloaded":
    raise ValueError(f"data path {data_path!r}: expected 'reference' or 'preloaded'")
  x = (
    torch.tensor(images_u8).float().div(255).unsqueeze(1)
  )  # A copy: the cached split is read-only.
  order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
  for start in range(0, len(x), batch_size):
    yield x[order[start : start + batch_size]]


def train(
  images_train_u8,
  images_test_u8,
  *,
  data_path: str = "reference",
  epochs: int = 10,
  seed: int = 1,
  batch_size: int = 128,
  learning_rate: float = 1e-3,
  device: str = "cpu",
  log=print,
) -> list[dict]:
  """Trains the reference; returns per-epoch records (nats per example, train seconds).

  Images: N x 28 x 28 (x 1) uint8, as vae_jax's readers return them.
  """
  images_train_u8, images_test_u8 = (
    x.reshape(len(x), 28, 28) for x in (images_train_u8, images_test_u8)
  )
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  model = VAE().to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
  records = []
  for epoch in range(1, epochs + 1):
    model.train()
    train_loss = 0.0
    t0 = time.perf_counter()
    for x in batches(images_train_u8, data_path, batch_size, True, generator):
      x = x.to(device)
      optimizer.zero_grad()
      recon, mu, logvar = model(x)
      loss, _, _ = loss_terms(recon, x, mu, logvar)
      loss.backward()
      train_loss += loss.item()
      optimizer.step()
    train_seconds = time.perf_counter() - t0
    model.eval()
    test_loss = 0.0
    with torch.no_grad():
      for x in batches(images_test_u8, "preloaded", batch_size, False, generator):
        x = x.to(device)
        recon, mu, logvar = model(x)
        test_loss += loss_terms(recon, x, mu, logvar)[0].item()
    record = {
      "epoch": epoch,
      "train_loss": train_loss / len(images_train_u8),
      "test_loss": test_loss / len(images_test_u8),
      "train_seconds": train_seconds,
    }
    log(f"====> Epoch: {epoch} Average loss: {record['train_loss']:.4f}")
    log(f"====> Test set loss: {record['test_loss']:.4f}")
    records.append(record)
  return records


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-path", choices=("reference", "preloaded"), default="reference")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--data-source", choices=data.SOURCES, default="bundled")
  parser.add_argument("--data-dir", default="")
  parser.add_argument("--json", help="write the per-epoch records here")
  args = parser.parse_args()
  x_train, _ = data.load_split(args.data_source, "train", args.data_dir)
  x_test, _ = data.load_split(args.data_source, "test", args.data_dir)
  records = train(
    x_train,
    x_test,
    data_path=args.data_path,
    epochs=args.epochs,
    seed=args.seed,
    device=args.device,
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(records, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
