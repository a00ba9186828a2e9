"""Tiny PyTorch networks for the converter tests (importable by ``--model-class``)."""

from __future__ import annotations

import torch


class PumpMLP(torch.nn.Module):
    """An MLP classifier ending in softmax."""

    def __init__(self, features: int = 4, classes: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, classes),
        )

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layers(rows), dim=-1)


class VibrationCNN(torch.nn.Module):
    """A 1-D CNN regressor over a window of samples given as features."""

    def __init__(self, samples: int = 16) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, kernel_size=3, padding=1)
        self.norm = torch.nn.BatchNorm1d(4)
        self.pool = torch.nn.MaxPool1d(2)
        self.head = torch.nn.Linear(4 * (samples // 2), 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        hidden = self.pool(torch.relu(self.norm(self.conv(rows.unsqueeze(1)))))
        out: torch.Tensor = self.head(hidden.flatten(1))
        return out


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> None:
    """A few full-batch epochs: enough to move the weights off their initial values."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    classify = y.dtype == torch.int64
    for _ in range(epochs):
        optimizer.zero_grad()
        out = model(x)
        if classify:
            loss = torch.nn.functional.nll_loss(torch.log(out + 1e-9), y)
        else:
            loss = torch.nn.functional.mse_loss(out.squeeze(1), y)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        optimizer.step()
    model.eval()
