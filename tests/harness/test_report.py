"""`sparsegen reproduce`: one report that embeds every section's tables and figures."""

import re

import numpy as np
import torch

from sparsegen import benchmark, report
from sparsegen.cli import main
from sparsegen.experiments import attention, multilabel, nli, translation


def test_report_embeds_every_section_and_figure(tmp_path, monkeypatch):
    # The slow runners are tested on their own; here they write small stand-ins.
    def table2(out, datasets, data_home=None, n_jobs=2, shuffled_folds=True):
        assert shuffled_folds is False  # the main job leaves the replication to --shuffled-folds
        (out / "table2.md").write_text(f"# Table 2\n\n| {' | '.join(datasets)} |\n")

    def synthetic(out, n_jobs=2):
        (out / "synthetic.md").write_text("# Synthetic\n\n![s](synthetic_micro.png)\n")

    def run_attention(out, seeds, n_jobs=2):
        (out / "attention.md").write_text(f"# Attention\n\nseeds {seeds}\n")

    monkeypatch.setattr(multilabel, "run_table2", table2)
    monkeypatch.setattr(multilabel, "run_synthetic", synthetic)
    monkeypatch.setattr(attention, "run_attention", run_attention)

    def run_translation(out, quick, directions, n_jobs=2):
        assert n_jobs == len(translation.QUICK_GRID)  # its models train at once, no lone tail
        (out / "translation.md").write_text(f"# Translation\n\nquick={quick} {directions}\n")

    def run_nli(out, quick, seeds, n_jobs=2):
        (out / "nli.md").write_text(f"# NLI\n\nquick={quick} seeds={seeds}\n")

    monkeypatch.setattr(translation, "run_translation", run_translation)
    monkeypatch.setattr(nli, "run_nli", run_nli)
    monkeypatch.setattr(benchmark, "run_benchmark", lambda quick: f"# Bench\n\nquick={quick}\n")
    assert main(["reproduce", "--out", str(tmp_path), "--datasets", "emotions"]) == 0
    text = (tmp_path / "report.md").read_text()
    titles = re.findall(r"^## \d+\. (.+)$", text, re.M)
    assert titles == [
        "The mappings side by side",
        "Figures",
        "Table 1: properties, computed",
        "Table 2: multi-label classification",
        "Synthetic multi-label experiments",
        "Sparse attention",
        "Sparse attention in translation (quick run)",
        "Sparse attention for NLI (quick run)",
        "Speed",
    ]
    assert "### Table 2" in text and "| emotions |" in text  # headings nested one level down
    assert "seeds (0, 1, 2, 3, 4)" in text and "quick=True" in text
    assert "quick=True [('fr', 'en')]" in text and "quick=True seeds=(0,)" in text
    assert "sparsemax" in text and "| sparsehourglass (q=0.5) |" in text  # demo and Table 1
    for image in ("contours", "sparsity_regions", "geometry", "surfaces"):
        assert f"]({image}.png)" in text and (tmp_path / f"{image}.png").stat().st_size > 20_000
    assert (tmp_path / "table1.md").exists()


def test_every_subcommand_explains_itself(capsys):
    for command in (
        "demo", "plot", "properties", "multilabel", "attention", "translate", "nli", "bench",
        "reproduce",
    ):  # fmt: skip
        try:
            main([command, "--help"])
        except SystemExit as exit:
            assert exit.code == 0
        text = capsys.readouterr().out
        assert f"usage: sparsegen {command}" in text and len(text.split()) > 25
    assert report.reproduce.__doc__


def test_forward_profile_splits_the_time_and_its_floor_does_the_floors_work():
    from sparsegen import _kernels

    x = torch.randn(5, 37).numpy()
    out = np.empty_like(x)
    _kernels.max_and_write_rows(x, out)  # the floor's work: a max pass and a write
    expected = np.zeros_like(x)
    expected[:, 0] = 1.0
    np.testing.assert_array_equal(out, expected)
    previous = torch.get_num_threads()
    profile = benchmark.forward_profile((8, 16), repeats=2)
    assert torch.get_num_threads() == previous
    assert set(profile) == {"softmax", "sparsemax", "solver", "floor"}
    assert all(t > 0 for t in profile.values())
    made_up = {"softmax": 100.0, "sparsemax": 150.0, "solver": 140.0, "floor": 40.0}
    rows = benchmark.profile_rows({(4096, 16): made_up})
    assert rows[2] == "| 4096×16 | 100 | 150 | 140 | 10 | 40 | 3.50× | 0.40× |"


def test_a_per_shape_script_measures_each_shape_and_writes_its_page(monkeypatch, tmp_path):
    # bench_family.py, bench_profile.py and bench_losses.py are this one command line
    monkeypatch.setattr(benchmark, "SHAPES", [(2, 3), (4, 5)])
    monkeypatch.setattr(benchmark, "keep_freed_memory", lambda: True)
    script = tmp_path / "bench_things.py"
    measured = []

    def measure(shape, repeats):
        measured.append((shape, repeats))
        return {"value": shape[0] * shape[1]}

    def rows(results):
        return [f"| {b}×{k} | {r['value']} |" for (b, k), r in results.items()]

    monkeypatch.setattr("sys.argv", [str(script), "--repeats", "2"])
    benchmark.shape_script("Things.\n\nMore.", str(script), "Things", measure, rows, 7)
    assert measured == [((2, 3), 2), ((4, 5), 2)]
    page = (tmp_path / "things.md").read_text().splitlines()
    assert page[0] == "# Things" and "`python benchmarks/bench_things.py`" in page[2]
    assert page[-2:] == ["| 2×3 | 6 |", "| 4×5 | 20 |"]


def test_family_benchmark_times_every_member_and_single_passes_beside_them():
    ratios = benchmark.family_times((8, 16), repeats=1)
    assert ratios["sparsemax", "float"] == 1.0  # the unit
    for name in benchmark.FAMILY:
        assert (name, "float, masked") in ratios
    for name in benchmark.ONE_PASS:
        assert ratios["one pass", name] > 0
    for name in benchmark.SOFTMAX:
        assert ratios["softmax", name] > 0
    rows = benchmark.family_rows({(8, 16): ratios})
    assert len([row for row in rows if row.startswith("| ")]) == 1 + len(ratios) - 1
    assert any(row.startswith("| one pass | compiled exp transform") for row in rows)
    assert any(row.startswith("| softmax | sg.softmax, masked |") for row in rows)


def test_family_backward_benchmark_takes_every_members_gradients():
    ratios = benchmark.family_backward_times((8, 16), repeats=1)
    assert ratios["sparsemax", "float"] == 1.0  # the unit
    for name in benchmark.FAMILY:
        assert ratios[name, "float, masked"] > 0
        assert ((name, "learnt") in ratios) == (name not in ("sparsemax", "sum-normalization++"))
    assert ratios["softmax", "torch.softmax"] > 0
    run = benchmark._gradients_of(
        benchmark.FAMILY["sparsecone q=1"], torch.randn(3, 5), torch.ones(3, 1), None,
        torch.randn(3, 5),
    )  # fmt: skip
    grad_z, grad_q = run()  # a learnt parameter's gradient is taken, per row
    assert grad_z.shape == (3, 5) and grad_q.shape == (3, 1) and grad_q.abs().sum() > 0
    rows = benchmark.family_backward_rows({(8, 16): ratios})
    assert len([row for row in rows if row.startswith("| ")]) == 1 + len(ratios) - 1
    assert any(row.startswith("| sparsecone q=1 | learnt |") for row in rows)
    page = benchmark.family_page_rows(
        {(8, 16): {"forward": benchmark.family_times((8, 16), 1), "backward": ratios}}
    )
    forward_row = next(
        i for i, row in enumerate(page) if row.startswith("| sparsecone q=1 | tensor")
    )
    assert forward_row < page.index("## Forward and backward") < len(page) - len(ratios)


def test_benchmark_measures_every_mapping_side_by_side(monkeypatch):
    previous = torch.get_num_threads()
    by_threads = benchmark.measure_shape((8, 16), repeats=2, thread_counts=(1, 2))
    assert torch.get_num_threads() == previous
    expected = {"softmax fwd", "softmax fwd+bwd", "sparsemax fwd", "sparsemax fwd+bwd"}
    for times in by_threads.values():
        assert expected <= set(times) and all(t > 0 for t in times.values())
        assert "sparsemax fwd spread" in times  # the rounds' disagreement, kept for the table
    all_times = {(n, (8, 16)): times for n, times in by_threads.items()}
    for times in all_times.values():  # a quiet machine, as far as the table can tell
        times["softmax fwd spread"] = times["sparsemax fwd spread"] = 0.01
    rows = benchmark.ratio_rows(all_times)
    assert rows[2].startswith("| 1 | 8×16 |") and rows[2].count("×") >= 5
    assert rows[3].startswith("| 2 | 8×16 |")
    assert not any("unstable" in row for row in rows)
    all_times[2, (8, 16)]["softmax fwd spread"] = 0.4  # a busy spell during the 2-thread row
    rows = benchmark.ratio_rows(all_times)
    assert "⚠" in rows[3] and "⚠" not in rows[2]
    assert any(row.startswith("⚠ unstable") for row in rows)
    monkeypatch.setattr(benchmark, "entmax", None)  # as in the main job, which lacks it
    assert "entmax not installed (`pip install entmax`)" in benchmark.ratio_rows(all_times)[-1]
    assert isinstance(benchmark.keep_freed_memory(), bool)
