"""One training loop for the attention models: AdamW, plateau decay, early stopping, resume, DDP.

:func:`fit` trains any module given a batch iterator and a loss, selects the
epoch on a validation score, checkpoints after every epoch (a rerun with the
same checkpoint path resumes where it stopped, bit for bit on the CPU) and runs
unchanged under ``torchrun``: each process takes its share of every batch and
DistributedDataParallel averages the gradients, so the updates equal one
process's on the whole batch.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparsegen._extras import needs_extra
from sparsegen.nn import mapping_parameters

with needs_extra("experiments", __name__):
    from tqdm.auto import tqdm

__all__ = ["History", "TrainingConfig", "decay_groups", "distributed", "fit", "resolve_device"]


@dataclass
class TrainingConfig:
    """How :func:`fit` trains.

    Attributes
    ----------
    epochs : int
        At most this many passes over the training data.
    lr, weight_decay : float
        AdamW's learning rate and decoupled weight decay (not of the mappings' learnt
        λ and q: :func:`decay_groups`).
    clip : float
        Gradient norm clipping (``inf``: none).
    lr_decay, lr_patience : float, int
        Multiply the learning rate by ``lr_decay`` after ``lr_patience`` + 1
        epochs without a better validation score (``ReduceLROnPlateau``).
    patience : int
        Stop after this many epochs without a better validation score.
    seed : int
        Seeds dropout in each epoch (so that a resumed run repeats the same draws).
    stop_at : float, optional
        Stop as soon as the validation score reaches this value.
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip: float = 5.0
    lr_decay: float = 0.5
    lr_patience: int = 0
    patience: int = 3
    seed: int = 0
    stop_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "lr_patience", "patience", "seed"):  # (inf epochs: no end)
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"TrainingConfig: {name} must be an int; got {value!r}")
        for name in ("lr", "weight_decay", "clip", "lr_decay", "stop_at"):
            value = getattr(self, name)
            if not (value is None and name == "stop_at") and not _is_real(value):
                raise TypeError(f"TrainingConfig: {name} must be a number; got {value!r}")
        if self.stop_at is not None and math.isnan(self.stop_at):
            raise ValueError("TrainingConfig: stop_at must be a number or None, not NaN")
        # (a negative clip scaled the gradients by a negative number: training went uphill)
        rules = {
            "epochs": self.epochs >= 1,
            "lr": 0 < self.lr < math.inf,
            "weight_decay": 0 <= self.weight_decay < math.inf,
            "clip": self.clip > 0,
            "lr_decay": 0 < self.lr_decay < 1,
            "lr_patience": self.lr_patience >= 0,
            "patience": self.patience >= 1,
        }
        bad = [name for name, holds in rules.items() if not holds]
        if bad:
            got = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(
                f"TrainingConfig: epochs and patience ≥ 1, lr > 0, weight_decay ≥ 0, "
                f"clip > 0, 0 < lr_decay < 1 and lr_patience ≥ 0; got {got}"
            )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass
class History:
    """Per-epoch records (``epoch``, ``train_loss``, ``valid``, ``lr``, ``seconds`` and any
    other figure ``validate`` returned)."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    finished: bool = False

    @property
    def seconds(self) -> float:
        return sum(row["seconds"] for row in self.epochs)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when present (under torchrun, the process's own GPU,
    its ``LOCAL_RANK``: every process on ``cuda:0`` crowded one card, and NCCL refuses a
    GPU shared by two ranks), else the CPU."""
    if device is not None:
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():  # (NCCL works on the current device: the process's own)
            torch.cuda.set_device(resolve_device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


Batches = Callable[[int], Iterable[np.ndarray]]  # epoch -> index arrays into the training set
Loss = Callable[[nn.Module, np.ndarray], tuple[torch.Tensor, int]]  # -> (summed loss, count)


@dataclass
class _Run:
    """What every epoch of one :func:`fit` call trains with."""

    model: nn.Module
    trained: nn.Module  # ``model``, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    rank: int
    world: int
    device: torch.device


def decay_groups(model: nn.Module) -> list[dict]:
    """``model``'s parameters as optimizer groups: the mappings' learnt λ and q
    (:func:`sparsegen.nn.mapping_parameters`) without weight decay, which would pull
    them towards sparsemax's λ = 0 and q = 1; the rest with the optimizer's."""
    learnt = mapping_parameters(model)
    if not learnt:  # one group: a checkpoint of a model without learnt λ or q keeps loading
        return [{"params": list(model.parameters())}]
    others = [p for p in model.parameters() if all(p is not m for m in learnt)]
    return [{"params": others}, {"params": learnt, "weight_decay": 0.0}]


def _start(model: nn.Module, config: TrainingConfig) -> _Run:
    """Join torchrun's process group if any, seed, and build the optimizer and LR schedule."""
    rank, world = distributed()
    torch.manual_seed(config.seed)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(
        decay_groups(model), lr=config.lr, weight_decay=config.weight_decay
    )
    # better means higher, as fit's best epoch says it (the default 1e-4 relative threshold
    # would halve the rate while the score still rises, and take a falling negative one for
    # better)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.lr_decay, patience=config.lr_patience, threshold=0.0
    )
    device = next(model.parameters()).device
    return _Run(model, trained, optimizer, scheduler, rank, world, device)


def _resume(path: Path, config: TrainingConfig, run: _Run) -> tuple[History, dict] | None:
    """Load ``path``'s history and best weights; an unfinished run's model, optimizer and
    schedule states go back into ``run``. A file that is no checkpoint (cut short, or
    another program's) is warned of, and None returned: training starts over."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        saved_config, history, best_state = saved["config"], saved["history"], saved["best"]
    except Exception as error:  # (torch.load's errors are of many kinds: a cut zip, pickle)
        warnings.warn(f"{path} is no checkpoint ({error!r}); training starts over", stacklevel=3)
        return None
    if saved_config != asdict(config):
        raise ValueError(
            f"{path} was written by a run with other settings ({saved_config}); "
            "delete it or give another checkpoint path"
        )
    if not history.finished:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
    return history, best_state


def _train_epoch(
    run: _Run, batch_list: Iterable[np.ndarray], loss: Loss, clip: float
) -> tuple[float, int]:
    """One optimizer step per batch, each process on its share; return the summed loss and
    count over every process's shares."""
    total, count = 0.0, 0
    for indices in batch_list:
        share = np.array_split(indices, run.world)[run.rank]
        summed, n = loss(run.trained, share if len(share) else indices[:1])
        if not len(share):  # a batch smaller than the world: this process adds nothing, but
            summed, n = summed * 0.0, 0  # takes part in the step (DDP reduces every rank's)
        n_all = torch.full((), float(n), device=run.device)  # a fill: a copy would wait
        if run.world > 1:
            dist.all_reduce(n_all)
        run.optimizer.zero_grad()
        (summed * run.world / n_all.clamp(min=1)).backward()
        nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        run.optimizer.step()
        total, count = total + summed.item(), count + n
    if run.world > 1:  # the epoch's loss over every share, as one process would record it
        sums = torch.stack([torch.full((), v, dtype=torch.float64, device=run.device)
                            for v in (total, float(count))])  # fmt: skip
        dist.all_reduce(sums)
        total, count = sums[0].item(), int(sums[1].item())
    return total, count


def _epoch(
    run: _Run,
    epoch: int,
    batches: Batches,
    loss: Loss,
    validate: Callable[[nn.Module], float | Mapping[str, float]],
    config: TrainingConfig,
    *,
    desc: str,
    progress: bool,
) -> dict:
    """Train one epoch (under a ``desc`` progress bar when ``progress``), validate and step the
    LR schedule; return the epoch's history row."""
    torch.manual_seed(config.seed * 100_003 + epoch)  # dropout: same on resume
    run.model.train()
    start = time.perf_counter()
    batch_list = list(batches(epoch))
    total, count = _train_epoch(
        run, tqdm(batch_list, desc=desc, disable=not progress, leave=False), loss, config.clip
    )
    run.model.eval()
    with torch.no_grad():
        measured = validate(run.model)
    figures = dict(measured) if isinstance(measured, Mapping) else {"score": measured}
    score = float(figures.pop("score"))
    lr = run.optimizer.param_groups[0]["lr"]  # the epoch's, before the schedule's step
    run.scheduler.step(score)
    return {
        "epoch": epoch,
        "train_loss": total / max(count, 1),
        "valid": score,
        **figures,
        "lr": lr,
        "seconds": time.perf_counter() - start,
    }


def _save_checkpoint(
    path: Path, config: TrainingConfig, history: History, best_state: dict, run: _Run
) -> None:
    """Write the run's state to ``path`` atomically; a finished run keeps only its best
    weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    state = {"config": asdict(config), "history": history, "best": best_state}
    if not history.finished:
        state |= {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
        }
    torch.save(state, partial)
    partial.replace(path)  # an interrupted write never leaves a broken checkpoint


def _warn_if_not_finite(row: dict) -> bool:
    """Warn of an epoch's NaN or infinite training loss (and say whether there was one:
    training then stops, the weights of the best epoch kept) or validation score (which is
    never better: an empty validation set keeps the initial weights)."""
    if not math.isfinite(row["train_loss"]):
        warnings.warn(
            f"epoch {row['epoch']}: the training loss is {row['train_loss']}; training stops "
            "and the model keeps its best epoch's weights (a smaller lr or clip may help)",
            RuntimeWarning,
            stacklevel=3,
        )
        return True
    if math.isnan(row["valid"]):
        warnings.warn(
            f"epoch {row['epoch']}: the validation score is NaN (an empty validation set?); "
            "no epoch with it counts as better",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def fit(
    model: nn.Module,
    batches: Batches,
    loss: Loss,
    validate: Callable[[nn.Module], float | Mapping[str, float]],
    config: TrainingConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
    description: str = "train",
) -> History:
    """Train ``model`` in place and leave it with its best validation epoch's weights.

    Parameters
    ----------
    batches : callable
        ``batches(epoch)`` yields arrays of training-example indices; it must
        give every process the same arrays (seed it with ``config.seed`` and
        the epoch). Under torchrun each process takes a contiguous share.
    loss : callable
        ``loss(module, indices)`` returns the *summed* loss over the indices'
        items and their count (e.g. target tokens); the step minimises the sum
        divided by the whole batch's count.
    validate : callable
        ``validate(model)`` returns a score to maximise (accuracy, BLEU, ...), or a
        dict holding it under ``"score"`` beside other figures of the epoch to
        record (each lands in the epoch's row of :attr:`History.epochs`).
    checkpoint : path, optional
        Written after every epoch (by rank 0); when it exists at the start,
        training resumes from it. A finished run's checkpoint keeps only the best
        weights (no optimizer state), which a rerun reloads without training.
    """
    run = _start(model, config)
    history, best_state = History(), copy.deepcopy(model.state_dict())
    path = Path(checkpoint) if checkpoint is not None else None
    resumed = _resume(path, config, run) if path is not None and path.exists() else None
    if resumed is not None:
        history, best_state = resumed
    while not history.finished:
        epoch = len(history.epochs) + 1
        desc = f"{description} epoch {epoch}"
        row = _epoch(run, epoch, batches, loss, validate, config, desc=desc, progress=progress)
        history.epochs.append(row)
        score = history.epochs[-1]["valid"]
        diverged = _warn_if_not_finite(row)
        if score > history.best_score and not diverged:  # (NaN weights can still score)
            history.best_score, history.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        history.finished = (
            diverged
            or epoch >= config.epochs
            or epoch - history.best_epoch >= config.patience
            or (config.stop_at is not None and score >= config.stop_at)
        )
        if path is not None and run.rank == 0:
            _save_checkpoint(path, config, history, best_state, run)
    model.load_state_dict(best_state)
    model.eval()
    return history
