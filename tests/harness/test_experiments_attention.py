"""The attention experiment: its task, its runner and its training under torchrun (DDP)."""

import csv
import os
import subprocess
import sys

import torch

from sparsegen.experiments.attention import Config, make_batch, run_attention, train


def test_the_task_has_one_relevant_item_holding_the_answer():
    config = Config()
    batch = make_batch(config, 500, torch.Generator().manual_seed(0))
    rows = torch.arange(500)
    lengths = (~batch["padding"]).sum(1)
    assert lengths.min() >= config.min_items and lengths.max() <= config.max_items
    matches = (batch["keys"] == batch["query"].unsqueeze(1)) & ~batch["padding"]
    assert matches.sum(1).eq(1).all()  # the query key occurs exactly once
    assert torch.equal(matches.float().argmax(1), batch["relevant"])
    assert torch.equal(batch["values"][rows, batch["relevant"]], batch["target"])
    first_parts = batch["keys"] // config.key_parts
    shares_half = (first_parts == (batch["query"] // config.key_parts).unsqueeze(1)) & ~matches
    assert (shares_half & ~batch["padding"]).any(1).float().mean() > 0.5  # distractors exist


def test_runner_writes_table_csv_and_heatmaps(tmp_path):
    rows = run_attention(
        tmp_path,
        seeds=(0,),
        methods=("softmax", "sparsemax", "sparsegen-lin λ learnt"),
        budgets=(40,),
        n_jobs=1,
        test_size=300,
    )
    by_method = {row["method"]: row for row in rows}
    assert by_method["softmax"]["support"] == by_method["softmax"]["items"]  # dense
    assert by_method["sparsemax"]["support"] < by_method["softmax"]["items"]
    assert by_method["sparsegen-lin λ learnt"]["learnt"] is not None
    with open(tmp_path / "attention.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    text = (tmp_path / "attention.md").read_text()
    assert "| sparsemax |" in text and "Against softmax" in text
    assert (tmp_path / "attention_heatmaps.png").stat().st_size > 10_000


def test_torchrun_with_two_processes_trains_like_one(tmp_path):
    """DDP over 2 gloo processes, each on half of the global batch, = 1 process on all of it."""
    steps, batch_size = 8, 16
    saved = tmp_path / "two.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "sparsegen.experiments.attention", "--mapping", "sparsegen_lin", "--lam", "0.3",
        "--steps", str(steps), "--batch-size", str(batch_size), "--float64", "--save", str(saved),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'world_size': 2" in result.stdout
    two = torch.load(saved)
    config = Config(mapping="sparsegen_lin", lam=0.3, steps=steps, batch_size=batch_size,
                    float64=True)  # fmt: skip
    one = train(config).state_dict()
    untrained = train(Config(steps=0, float64=True)).state_dict()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-9, rtol=1e-9)
    assert any(not torch.equal(one[k], untrained[k]) for k in one if k in untrained)
