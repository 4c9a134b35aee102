"""The trainer: config in, checkpoints, metrics and a validated model out.

``facegate train --config cfg.yaml [--set key=value ...] [--resume]`` trains a backbone
(``resnet50``, ``sface``) with one loss (``arcface``, ``triplet``, ``hybrid`` on P x K
batches, or ``distillation`` from the SFace teacher on unlabelled chips) on a directory made
by ``facegate prepare``. Each epoch ends with a checkpoint (model, optimiser, scheduler,
sampler and RNG state: a resumed run continues exactly where it stopped) and, when a pairs set
is configured, validation (k-fold accuracy, threshold, ROC AUC) appended to
``metrics.jsonl`` (and TensorBoard when it is installed). ``facegate export`` turns a
checkpoint into served weights + a model card.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from facegate.training.backbones import build_backbone
from facegate.training.losses import ArcFaceLoss, DistillationLoss, HybridLoss, TripletLoss
from facegate.training.prepare import SPLIT
from facegate.training.sampler import PKSampler

LOSSES = ("arcface", "triplet", "hybrid", "distillation")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint."""

    data: str = ""
    out: str = "runs/train"
    backbone: str = "resnet50"
    loss: str = "distillation"
    embedding_dim: int = 128
    epochs: int = 1
    max_steps_per_epoch: int = 0
    p: int = 8
    k: int = 4
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 5.0
    arcface_scale: float = 32.0
    arcface_margin: float = 0.5
    triplet_margin: float = 0.2
    seed: int = 0
    device: str = "cpu"
    #: bfloat16 autocast and channels-last memory; CUDA only (on CPU they cost more than they save).
    amp: bool = True
    #: Weights & Biases project; used only when set and the ``wandb`` package is installed.
    wandb_project: str = ""
    val_chips: str = ""
    val_pairs: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, overrides: list[str]) -> TrainConfig:
        """YAML file, then ``key=value`` overrides (typed like the field they set)."""
        import yaml

        values: dict[str, Any] = yaml.safe_load(path.read_text()) if path else {}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        config = cls(**values)
        for item in overrides:
            key, _, raw = item.partition("=")
            if key not in known:
                raise ValueError(f"unknown config key {key!r}")
            current = getattr(config, key)
            setattr(
                config, key, type(current)(raw) if not isinstance(current, bool) else raw == "true"
            )
        if config.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}")
        return config


class ChipSet(torch.utils.data.Dataset):
    """Chips of the given identities under ``prepared/chips``, labelled 0..n-1 by name."""

    def __init__(self, prepared: Path, identities: list[str]) -> None:
        self.items = [
            (path, label)
            for label, name in enumerate(sorted(identities))
            for path in sorted((prepared / "chips" / name).glob("*.png"))
        ]
        self.labels = [label for _, label in self.items]
        self.num_classes = len(identities)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            chip = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()
        return chip, label


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        _seed(config.seed)
        prepared = Path(config.data)
        split = json.loads((prepared / SPLIT).read_text())
        self.data = ChipSet(prepared, split["train"])
        self.device = torch.device(config.device)
        self.model = build_backbone(config.backbone, embedding_dim=config.embedding_dim)
        self.model.to(self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.model.to(memory_format=torch.channels_last)
        self.wandb = _wandb_run(config)
        self.loss_fn = self._loss().to(self.device)
        self.teacher = self._teacher() if config.loss == "distillation" else None
        params = [*self.model.parameters(), *self.loss_fn.parameters()]
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(
                params, lr=config.lr, weight_decay=config.weight_decay
            )
        self.sampler = self._sampler()
        total = max(1, config.epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, total, config)
        )
        self.epoch = 0
        self.step = 0

    @property
    def steps_per_epoch(self) -> int:
        steps = len(self.sampler)
        cap = self.config.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    def _loss(self) -> nn.Module:
        c = self.config
        arcface = ArcFaceLoss(
            c.embedding_dim, self.data.num_classes, c.arcface_scale, c.arcface_margin
        )
        if c.loss == "arcface":
            return arcface
        if c.loss == "triplet":
            return TripletLoss(c.triplet_margin)
        if c.loss == "hybrid":
            return HybridLoss(arcface, TripletLoss(c.triplet_margin))
        return DistillationLoss()

    def _teacher(self) -> nn.Module:
        from facegate.models.registry import load_network
        from facegate.settings import default_model_dir

        network, card = load_network(default_model_dir(), "sface")
        if card.embedding_dim != self.config.embedding_dim:
            raise ValueError(f"distillation needs embedding_dim {card.embedding_dim} (SFace's)")
        return network.to(self.device).eval()

    def _sampler(self) -> PKSampler | _Batches:
        if self.config.loss == "distillation":
            return _Batches(len(self.data), self.config.batch_size, self.config.seed)
        return PKSampler(self.data.labels, self.config.p, self.config.k, self.config.seed)

    def train(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; one metrics record per epoch."""
        records = []
        while self.epoch < self.config.epochs:
            records.append(self.train_epoch())
            self.save(self.out / "last.pt")
        return records

    def train_epoch(self) -> dict[str, Any]:
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        started, losses = time.perf_counter(), []
        batches = iter(self.sampler)
        for _ in tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch}", unit="step"):
            losses.append(self.train_step(next(batches)))
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "loss": float(np.mean(losses)),
        }
        record["seconds"] = round(time.perf_counter() - started, 2)
        record["lr"] = self.scheduler.get_last_lr()[0]
        if self.config.val_chips and self.config.val_pairs:
            record |= self.validate()
        self.epoch += 1
        _log(self.out, record)
        if self.wandb is not None:
            self.wandb.log(record, step=self.step)
        return record

    def train_step(self, indices: list[int]) -> float:
        chips = torch.stack([self.data[i][0] for i in indices]).to(self.device)
        if self.cuda:
            chips = chips.contiguous(memory_format=torch.channels_last)
        labels = torch.tensor([self.data.labels[i] for i in indices], device=self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.amp):
            embeddings = self.model(chips)
        embeddings = embeddings.float()
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(chips)
            loss = self.loss_fn(embeddings, target)
        else:
            loss = self.loss_fn(embeddings, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    @torch.inference_mode()
    def embed(self, chips: torch.Tensor, batch: int = 64) -> np.ndarray:
        self.model.eval()
        out = [
            F.normalize(self.model(chips[i : i + batch].to(self.device)), dim=1).cpu()
            for i in range(0, len(chips), batch)
        ]
        return torch.cat(out).numpy()

    def validate(self) -> dict[str, Any]:
        """LFW-protocol metrics on a prepared pairs set (chips made by ``facegate prepare``)."""
        from facegate.evaluation.metrics import kfold_accuracy, roc_auc
        from facegate.evaluation.pairs import read_lfw_pairs

        root = Path(self.config.val_chips) / "chips"
        pairs = read_lfw_pairs(self.config.val_pairs, root)
        paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
        available = [p for p in paths if p.with_suffix(".png").is_file()]
        chips = torch.stack(
            [
                torch.from_numpy(np.array(Image.open(p.with_suffix(".png")).convert("RGB")))
                .permute(2, 0, 1)
                .float()
                for p in available
            ]
        )
        vectors = dict(zip(available, self.embed(chips), strict=True))
        scores = np.array(
            [
                float(vectors[p.path_a] @ vectors[p.path_b])
                if p.path_a in vectors and p.path_b in vectors
                else -1.0
                for p in pairs
            ]
        )
        same = np.array([p.same for p in pairs])
        result = kfold_accuracy(scores, same, np.array([p.fold for p in pairs]))
        return {
            "val_accuracy": result.accuracy,
            "val_accuracy_std": result.accuracy_std,
            "val_threshold": result.threshold,
            "val_roc_auc": roc_auc(scores, same),
            "val_missing_chips": len(paths) - len(available),
        }

    def save(self, path: Path) -> None:
        state = {
            "config": asdict(self.config),
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": _rng_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.step = state["epoch"], state["step"]
        _set_rng_state(state["rng"])


class _Batches:
    """Shuffled fixed-size batches of every index (distillation needs no identities)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed, self.epoch = n, batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.n // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for i in range(len(self)):
            yield order[i * self.batch : (i + 1) * self.batch].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]


def _lr_factor(step: int, total: int, config: TrainConfig) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "step":
        return 0.1 ** (3 * step // max(1, total))
    progress = min(1.0, step / max(1, total))
    return 0.5 * (1.0 + float(np.cos(np.pi * progress)))


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _wandb_run(config: TrainConfig) -> Any:
    """A Weights & Biases run when a project is configured and wandb is installed; never
    required, and a missing package is not an error."""
    if not config.wandb_project:
        return None
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(project=config.wandb_project, config=asdict(config))


def _log(out: Path, record: dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: metrics.jsonl always has everything
        return
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for key, value in record.items():
            if isinstance(value, int | float) and key not in ("epoch", "step"):
                writer.add_scalar(key, value, record["step"])
