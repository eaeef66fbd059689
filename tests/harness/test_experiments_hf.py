"""`sparsegen hf`: a tiny GPT-2 with sparse attention, end to end in seconds."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from sparsegen.cli import build_parser, main
from sparsegen.experiments import flags, hf

# one worker runs this module, so that its fixture runs once, not once on each
pytestmark = pytest.mark.xdist_group("experiments_hf")

# Small enough for seconds; pieces near characters at this vocabulary, hence the length.
TINY = replace(hf.QUICK, vocab_size=400, hidden_size=32, heads=2, batch_size=8, steps=4,
               eval_every=2, train_limit=200, eval_limit=24, probe_size=8,
               max_tokens=80)  # fmt: skip
TINY_FLAGS = ["--vocab-size", "400", "--hidden-size", "32", "--heads", "2", "--batch-size", "8",
              "--steps", "4", "--eval-every", "2", "--train-limit", "200", "--eval-limit", "24",
              "--probe-size", "8", "--max-tokens", "80"]  # fmt: skip


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The command run once, as a user runs it, on the tiny sizes."""
    out = tmp_path_factory.mktemp("hf")
    assert main(["hf", "--quick", *TINY_FLAGS, "--jobs", "1", "--out", str(out)]) == 0
    with open(out / "hf.csv") as stream:
        return out, list(csv.DictReader(stream))


def test_the_command_writes_its_report_and_tables(hf_run):
    out, rows = hf_run
    assert [row["setting"] for row in rows] == [s.name for s in hf.grid(TINY.lam)]
    text = (out / "hf.md").read_text()
    for needed in ("| setting | valid ppl |", "## Findings", "What differs from a real", "λ=0.9"):
        assert needed in text
    assert (out / "hf_runs.csv").exists() and len(list((out / "runs" / "hf-quick").glob("*.json")))
    for row in rows:
        assert 1 < float(row["valid_perplexity"]) < 2 * TINY.vocab_size
        assert float(row["step_ms"]) > 0


def test_sparse_settings_keep_fewer_keys_than_softmax(hf_run):
    _, rows = hf_run
    support = {row["setting"]: (float(row["support_start"]), float(row["support_end"]))
               for row in rows}  # fmt: skip
    assert support["softmax (sdpa)"] == (1.0, 1.0)
    # the scores × 10 of λ = 0.9 make the attention sparse from the first step...
    for name in ("sparsegen-lin λ=0.9", "sparsegen-lin (learnt)"):
        assert max(support[name]) < 0.9
    # ...where sparsemax at transformers' initialisation is (nearly) dense
    assert support["sparsemax"][0] > support["sparsegen-lin λ=0.9"][0]
    assert all(0 < s <= 1 for s in support["sparsemax"])


def test_the_support_counts_only_the_visible_keys():
    model = hf._model(hf.Setting("sparsemax", "sparsemax"), TINY, 50)
    ids = torch.randint(4, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    dense = hf.attention_support(model, ids, mask, sdpa=False)
    # rows seeing ≥ 2 keys: 5 of the full caption, 2 of the padded one; keys 2..6 and 2..3
    assert dense["keys"] <= (2 + 3 + 4 + 5 + 6 + 2 + 3) / 7 + 1e-9
    soft = hf._model(hf.Setting("softmax", "softmax"), TINY, 50)
    exact = hf.attention_support(soft, ids, mask, sdpa=True)
    assert exact == {"share": 1.0, "keys": pytest.approx(25 / 7)}
    assert soft.config._attn_implementation == "sdpa"  # restored after the eager measurement


def test_a_seed_reproduces_its_run():
    prepared = hf.prepare(TINY)
    setting = hf.grid(TINY.lam)[-1]  # the learnt λ: every parameter group at work
    first, again, other = (
        hf.train_one(setting, seed, prepared, TINY).to_row() for seed in (0, 0, 1)
    )
    for key in ("valid_perplexity", "test_perplexity", "support_end", "learnt_lam"):
        assert first[key] == again[key]
    assert first["valid_perplexity"] != other["valid_perplexity"]


def test_the_flags_override_the_quick_preset():
    args = build_parser().parse_args(["hf", "--quick", "--steps", "3", "--lam", "0.5"])
    config = flags.config_from_args(hf.HFConfig, args, hf.QUICK)
    assert config == replace(hf.QUICK, steps=3, lam=0.5)
    args = build_parser().parse_args(["hf", "--seeds", "2"])
    assert flags.config_from_args(hf.HFConfig, args) == hf.HFConfig() and args.seeds == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "must be at least 1; got 0"),
        (["--lam", "1.5"], "--lam: sparsegen-lin needs λ < 1; got 1.5"),
        (["--heads", "3"], "--heads 3 does not divide --hidden-size 128"),
        (["--dropout", "1"], "--dropout: must be in [0, 1); got 1.0"),
        (["--lr", "fast"], "--lr: expected a number; got 'fast'"),
    ],
)
def test_bad_flags_stop_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["hf", *argv, "--out", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in stderr
    assert message in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


def test_a_bad_flag_exits_2_in_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sparsegen", "hf", "--lam", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("sparsegen-lin needs λ < 1; got 2.0")
