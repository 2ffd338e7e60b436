"""Olive data components for kfopt's Dataset artifact (imported by Olive as its `user_script`).

Runs inside .venv-olive, where kfopt is not installed: the split files are plain .npz (x, y).
"""

from pathlib import Path

import numpy as np
import torch
from olive.data.registry import Registry


class _Split(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, input_name: str):
        self.x, self.y, self.input_name = torch.from_numpy(x), torch.from_numpy(y), input_name

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {self.input_name: self.x[i]}, self.y[i]


@Registry.register_dataset()
def kfopt_split(dataset_dir: str, split: str, input_name: str, max_samples: int = 0):
    with np.load(Path(dataset_dir) / f"{split}.npz", allow_pickle=False) as data:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    if max_samples:
        x, y = x[:max_samples], y[:max_samples]
    return _Split(x, y, input_name)


@Registry.register_post_process()
def kfopt_labels(output):
    """Probabilities → class labels: argmax for softmax outputs, >= 0.5 for one sigmoid output."""
    if output.ndim == 2 and output.shape[1] > 1:
        return output.argmax(dim=1)
    return (output.reshape(len(output)) >= 0.5).long()
