"""The attention models (Luong attention, Seq2Seq, NLIClassifier) and their training loop."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from torch import nn

import sparsegen as sg
from sparsegen.models import (
    NLIClassifier,
    Seq2Seq,
    TrainingConfig,
    fit,
    glove_embeddings,
    glove_size,
)
from sparsegen.models.training import decay_groups
from sparsegen.nn import LuongAttention
from sparsegen.text import BOS, EOS, PAD, pad_sequences

SPARSE = ["sparsemax", "sparsegen_lin", "sparsehourglass"]


def _keep(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width) < torch.tensor(lengths).unsqueeze(1)


@pytest.mark.parametrize("mapping", ["softmax", *SPARSE])
def test_luong_weights_are_distributions_over_the_kept_positions(mapping):
    torch.manual_seed(0)
    attention = LuongAttention(
        6, 4, mapping=mapping, lam=0.5 if mapping == "sparsegen_lin" else None
    )
    memory, query = torch.randn(3, 5, 4), torch.randn(3, 7, 6) * 3
    keep = _keep([5, 3, 1], 5)
    output, weights, support = attention(query, memory, keep)
    assert output.shape == (3, 7, 6) and weights.shape == (3, 7, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))
    assert (weights >= 0).all() and (weights[~keep.unsqueeze(1).expand(-1, 7, -1)] == 0).all()
    assert torch.equal(support, (weights > 0).sum(-1))
    if mapping != "softmax":
        assert (weights[0] == 0).any(), "the scaled scores leave some exact zeros"
    # the general score and the output, written out
    scores = query @ attention.memory_proj(memory).transpose(1, 2)
    expected = getattr(sg, mapping)(
        scores, mask=keep.unsqueeze(1), **({"lam": 0.5} if mapping == "sparsegen_lin" else {})
    )
    torch.testing.assert_close(weights, expected)
    context = expected @ memory
    torch.testing.assert_close(
        output, torch.tanh(attention.output_proj(torch.cat([context, query], -1)))
    )


def test_luong_one_step_equals_a_sequence_and_temperature_divides_the_scores():
    torch.manual_seed(1)
    attention = LuongAttention(4, mapping="softmax", temperature=0.5, score="dot")
    memory, query = torch.randn(2, 6, 4), torch.randn(2, 3, 4)
    whole = attention(query, memory)
    for t in range(3):
        step = attention(query[:, t], memory)
        torch.testing.assert_close(step.weights, whole.weights[:, t])
    torch.testing.assert_close(
        whole.weights, torch.softmax(query @ memory.transpose(1, 2) / 0.5, -1)
    )


def test_luong_gradcheck_through_sparsemax():
    torch.manual_seed(2)
    attention = LuongAttention(3, mapping="sparsemax", dtype=torch.float64)
    memory = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, m: attention(q, m).output, (query, memory))


def test_luong_bad_arguments():
    with pytest.raises(ValueError, match="'general' or 'dot'"):
        LuongAttention(4, score="concat")
    with pytest.raises(ValueError, match="query_dim == memory_dim"):
        LuongAttention(4, 3, score="dot")
    with pytest.raises(ValueError, match="temperature must be positive"):
        LuongAttention(4, temperature=0)
    with pytest.raises(TypeError, match="keep must be boolean"):
        LuongAttention(4)(torch.randn(1, 4), torch.randn(1, 2, 4), torch.ones(1, 2))
    attention = LuongAttention(4, 3)
    query, memory, keep = torch.randn(2, 5, 4), torch.randn(2, 6, 3), torch.ones(2, 6, dtype=bool)
    keys = attention.keys(memory)
    for args, match in (
        ((query[:1], memory), r"query must have shape \(2, 5, 4\); got \(1, 5, 4\)"),
        ((query[..., :3], memory), r"query must have shape \(2, 5, 4\)"),
        ((query[0, 0], memory), r"query must be \(B, T, query_dim\) or \(B, query_dim\)"),
        ((query, memory[..., :2]), r"memory must have shape \(2, 6, 3\)"),
        ((query, memory, keep[:, :5]), r"keep must have shape \(2, 6\)"),
        ((query, memory, keep, keys[:, :5]), r"keys must have shape \(2, 6, 4\)"),
    ):
        with pytest.raises(ValueError, match=match):
            attention(*args)
    assert attention(query[:, 0], memory, keep, keys).output.shape == (2, 4)  # one step


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_sequences(rows)


@pytest.mark.parametrize("mapping", ["softmax", "sparsemax"])
def test_seq2seq_padding_does_not_change_a_sentence(mapping):
    """A sentence alone and padded beside a longer one gets the same logits and weights."""
    torch.manual_seed(3)
    model = Seq2Seq(20, 15, embed_dim=8, hidden_dim=8, attention=mapping).eval()
    src, lengths = _batch([[4, 5, 6], [7, 8, 9, 10, 11, 12]])
    tgt = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 9, 10]])
    logits, weights = model(src, lengths, tgt)
    alone_logits, alone_weights = model(src[:1, :3], lengths[:1], tgt[:1])
    torch.testing.assert_close(logits[:1], alone_logits)
    torch.testing.assert_close(weights[:1, :, :3], alone_weights)
    assert (weights[0, :, 3:] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))


def _greedy(model: Seq2Seq, src, lengths, max_length: int) -> list[list[int]]:
    """Greedy decoding written independently of translate(): argmax, step by step, over the
    tokens a hypothesis may take (not padding, not BOS)."""
    out = []
    for i in range(src.shape[0]):
        memory = model.encode(src[i : i + 1, : lengths[i]], lengths[i : i + 1])
        state, feed = memory.initial, torch.zeros(1, model.hidden_dim)
        token, ids = torch.tensor([BOS]), []
        for _ in range(max_length):
            feed, state, _ = model.step(token, state, feed, memory)
            logits = model.generator(feed)
            logits[..., [PAD, BOS]] = -torch.inf
            token = logits.argmax(-1)
            if int(token) == EOS:
                break
            ids.append(int(token))
        out.append(ids)
    return out


def test_beam_one_is_greedy_and_a_wider_beam_scores_at_least_as_well():
    torch.manual_seed(4)
    model = Seq2Seq(30, 12, embed_dim=8, hidden_dim=8, attention="sparsemax").eval()
    src, lengths = _batch([[4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14]])
    assert model.translate(src, lengths, beam=1, max_length=9) == _greedy(model, src, lengths, 9)

    def log_prob(i: int, ids: list[int]) -> float:
        tgt = torch.tensor([[BOS, *ids]])
        logits, _ = model(src[i : i + 1, : lengths[i]], lengths[i : i + 1], tgt)
        gold = torch.tensor([*ids, EOS])
        return float(logits[0].log_softmax(-1)[torch.arange(len(gold)), gold].sum())

    greedy = model.translate(src, lengths, beam=1, max_length=30)
    wide = model.translate(src, lengths, beam=5, max_length=30, length_penalty=0.0)
    for i in range(3):
        if len(greedy[i]) < 30 and len(wide[i]) < 30:  # both finished
            assert log_prob(i, wide[i]) >= log_prob(i, greedy[i]) - 1e-4
    with pytest.raises(ValueError, match="beam must be at least 1"):
        model.translate(src, lengths, beam=0)
    for penalty in (math.nan, math.inf):  # (NaN ranked every hypothesis alike: beam 0 won)
        with pytest.raises(ValueError, match="length_penalty must be a finite number"):
            model.translate(src, lengths, length_penalty=penalty)


def test_translations_hold_no_special_ids_and_max_length_zero_is_empty():
    # a model that prefers padding and BOS: the search used to return them inside the ids
    torch.manual_seed(5)
    model = Seq2Seq(30, 12, embed_dim=8, hidden_dim=8).eval()
    with torch.no_grad():
        model.generator.bias[[PAD, BOS]] = 50.0
    src, lengths = _batch([[4, 5, 6, 7], [8, 9]])
    for beam in (1, 3):
        for ids in model.translate(src, lengths, beam=beam, max_length=6):
            assert len(ids) == 6 and not {PAD, BOS, EOS} & set(ids)
    assert model.translate(src, lengths, max_length=0) == [[], []]  # (0 was the default)
    assert model.translate(src[:0], lengths[:0]) == []  # no sentence (max() of nothing)
    with pytest.raises(ValueError, match="max_length must be at least 0"):
        model.translate(src, lengths, max_length=-1)


def test_seq2seq_rejects_empty_sources_and_odd_sizes():
    with pytest.raises(ValueError, match="hidden_dim must be even"):
        Seq2Seq(10, 10, hidden_dim=7)
    model = Seq2Seq(10, 10, embed_dim=4, hidden_dim=4)
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 0]), torch.zeros(2, 2).long())


def _pairs(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Source sentences and targets that map each token to another (a learnable 'language')."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(4, 24, rng.integers(2, 7)).tolist() for _ in range(n)]
    targets = [[(t * 7) % 20 + 4 for t in reversed(s)] for s in sources]
    return sources, targets


def test_a_tiny_seq2seq_overfits_twenty_pairs_to_bleu_100():
    import sacrebleu

    torch.manual_seed(5)
    sources, targets = _pairs(20)
    model = Seq2Seq(24, 24, embed_dim=32, hidden_dim=64, dropout=0.0, attention="sparsemax")
    src, src_len = pad_sequences(sources)
    tgt, _ = pad_sequences(targets, bos=True, eos=True)

    def loss(module, index):
        logits, _ = module(src[index], src_len[index], tgt[index, :-1])
        gold = tgt[index, 1:]
        flat = nn.functional.cross_entropy(
            logits.reshape(-1, 24), gold.reshape(-1), ignore_index=PAD, reduction="sum"
        )
        return flat, int((gold != PAD).sum())

    def exact(m):
        return float(m.translate(src, src_len, beam=1) == targets)

    fit(model, lambda e: [np.arange(20)], loss, exact,
        TrainingConfig(epochs=300, lr=1e-2, patience=300, lr_patience=300, stop_at=1))  # fmt: skip
    hyps = [" ".join(map(str, ids)) for ids in model.translate(src, src_len, beam=5)]
    refs = [" ".join(map(str, ids)) for ids in targets]
    assert sacrebleu.corpus_bleu(hyps, [refs]).score == pytest.approx(100.0)


@pytest.mark.parametrize("mapping", ["softmax", *SPARSE])
def test_nli_weights_are_distributions_over_the_premise(mapping):
    torch.manual_seed(6)
    model = NLIClassifier(30, embed_dim=8, hidden_dim=8, attention=mapping).eval()
    premise, p_len = pad_sequences([[4, 5, 6, 7, 8], [9, 10]])
    hypothesis, h_len = pad_sequences([[11, 12], [13, 14, 15]])
    logits, weights = model(premise * 3 % 30, p_len, hypothesis, h_len)
    assert logits.shape == (2, 3) and weights.shape == (2, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights[1, 2:] == 0).all()
    alone = model(premise[1:, :2] * 3 % 30, p_len[1:], hypothesis[1:], h_len[1:])
    torch.testing.assert_close(alone.logits, logits[1:])


def test_no_attention_has_no_weights_and_uses_the_premise_last_state():
    torch.manual_seed(7)
    model = NLIClassifier(30, embed_dim=8, hidden_dim=8, attention=None, dropout=0.0)
    assert model.attention is None
    premise, p_len = pad_sequences([[4, 5, 6], [7]])
    hypothesis, h_len = pad_sequences([[8], [9, 10]])
    out = model(premise, p_len, hypothesis, h_len)
    assert out.weights is None
    _, (h_l, c_l) = model.premise_lstm(model.embedding(premise[:1]))
    _, (h_n, _) = model.hypothesis_lstm(model.embedding(hypothesis[:1, :1]), (h_l, c_l))
    u = torch.tanh(model.premise_out(h_l[-1]) + model.hypothesis_out(h_n[-1]))
    torch.testing.assert_close(out.logits[:1], model.classifier(u))
    with pytest.raises(ValueError, match="at least one token"):
        model(premise, torch.tensor([3, 0]), hypothesis, h_len)


@pytest.mark.parametrize("attention", [None, "sparsemax"])
def test_a_tiny_nli_model_overfits_thirty_pairs(attention):
    rng = np.random.default_rng(8)
    premises = [rng.integers(4, 20, rng.integers(3, 8)).tolist() for _ in range(30)]
    hypotheses = [rng.integers(4, 20, rng.integers(1, 4)).tolist() for _ in range(30)]
    labels = torch.as_tensor(rng.integers(0, 3, 30))
    p, p_len = pad_sequences(premises)
    h, h_len = pad_sequences(hypotheses)
    torch.manual_seed(8)
    model = NLIClassifier(20, embed_dim=16, hidden_dim=32, attention=attention, dropout=0.0)

    def loss(module, index):
        logits = module(p[index], p_len[index], h[index], h_len[index]).logits
        return nn.functional.cross_entropy(logits, labels[index], reduction="sum"), len(index)

    def accuracy(m):
        return float((m(p, p_len, h, h_len).logits.argmax(1) == labels).float().mean())

    config = TrainingConfig(epochs=200, lr=1e-2, patience=200, lr_patience=200, stop_at=1)
    history = fit(model, lambda e: [np.arange(30)], loss, accuracy, config)
    assert history.best_score == 1.0


def _regression_setup():
    torch.manual_seed(9)
    x, y = torch.randn(40, 3), torch.randn(40, 1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))

    def batches(epoch):
        return np.array_split(np.random.default_rng(epoch).permutation(40), 4)

    def loss(module, index):
        return ((module(x[index]) - y[index]) ** 2).sum(), len(index)

    def score(m):
        return -float(((m(x) - y) ** 2).mean())

    return model, batches, loss, score


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    config = TrainingConfig(epochs=4, lr=0.05, patience=10)
    model, batches, loss, score = _regression_setup()
    straight = fit(model, batches, loss, score, config)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, _, loss, score = _regression_setup()
    calls = {"n": 0}

    def interrupted(epoch):
        if epoch == 3:
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt
        return batches(epoch)

    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(model, interrupted, loss, score, config, checkpoint=path)
    model, _, loss, score = _regression_setup()  # a fresh process: new, untrained model
    resumed = fit(model, interrupted, loss, score, config, checkpoint=path)
    assert [e["valid"] for e in resumed.epochs] == [e["valid"] for e in straight.epochs]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    again = fit(_regression_setup()[0], interrupted, loss, score, config, checkpoint=path)
    assert again.finished and len(again.epochs) == 4  # a finished run only reloads
    with pytest.raises(ValueError, match="other settings"):
        fit(model, batches, loss, score, TrainingConfig(epochs=5), checkpoint=path)


@pytest.mark.parametrize(
    "setting", [{"clip": -1.0}, {"clip": 0.0}, {"epochs": 0}, {"patience": 0}, {"lr": 0.0},
                {"lr_decay": 1.5}, {"weight_decay": -0.1}],
)  # fmt: skip
def test_training_settings_out_of_range_are_refused(setting):
    # a negative clip multiplied the gradients by it (training went uphill), epochs=0
    # trained one epoch and patience=0 stopped after the first
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"got {name}="):
        TrainingConfig(**setting)


@pytest.mark.parametrize(
    "setting", [{"epochs": math.inf}, {"epochs": 2.5}, {"patience": math.inf}, {"epochs": "3"},
                {"seed": 1.0}, {"lr": "1e-3"}, {"stop_at": "1"}],
)  # fmt: skip
def test_training_settings_of_the_wrong_type_are_refused(setting):
    # epochs=inf and patience=inf trained for ever; "3" failed in a comparison
    name = next(iter(setting))
    with pytest.raises(TypeError, match=f"TrainingConfig: {name} must be"):
        TrainingConfig(**setting)
    with pytest.raises(ValueError, match="stop_at must be a number or None, not NaN"):
        TrainingConfig(stop_at=math.nan)
    TrainingConfig(epochs=np.int64(2), stop_at=None)


def test_a_checkpoint_that_is_no_checkpoint_is_warned_of_and_training_starts_over(tmp_path):
    model, batches, loss, score = _regression_setup()
    path = tmp_path / "run.pt"
    for garbage in (b"", b"PK\x03\x04 cut short", b"\x80\x04K\x01."):  # (the last: pickle of 1)
        path.write_bytes(garbage)
        with pytest.warns(UserWarning, match="run.pt is no checkpoint .*; training starts over"):
            history = fit(model, batches, loss, score, TrainingConfig(epochs=2), checkpoint=path)
        assert len(history.epochs) == 2


def test_a_diverged_run_stops_with_a_warning_and_keeps_its_best_epoch():
    model, batches, loss, score = _regression_setup()

    def diverging(module, indices):
        summed, n = loss(module, indices)
        return summed * (math.nan if len(history_rows) >= 2 else 1.0), n

    history_rows = []

    def recorded(m):
        history_rows.append(1)
        return score(m)

    with pytest.warns(RuntimeWarning, match="epoch 3: the training loss is nan"):
        history = fit(model, batches, diverging, recorded, TrainingConfig(epochs=6, patience=6))
    assert len(history.epochs) == 3 and history.best_epoch <= 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # a score that NaN weights still reach (argmax of NaN logits is a class): the diverged
    # epoch was taken as the best, and its NaN weights kept
    model, batches, loss, _ = _regression_setup()
    history_rows = []

    def rising(m):  # 1, 2, 3, ... whatever the weights
        history_rows.append(1)
        return float(len(history_rows))

    with pytest.warns(RuntimeWarning, match="epoch 3: the training loss is nan"):
        history = fit(model, batches, diverging, rising, TrainingConfig(epochs=6, patience=6))
    assert history.best_epoch == 2 and history.epochs[-1]["valid"] > history.best_score
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # an empty validation set's NaN score is never better: said once an epoch
    model, batches, loss, _ = _regression_setup()
    with pytest.warns(RuntimeWarning, match="validation score is NaN"):
        history = fit(model, batches, loss, lambda m: math.nan, TrainingConfig(epochs=2))
    assert history.best_epoch == 0


def test_weight_decay_leaves_the_learnt_mapping_parameters_alone():
    # AdamW's decay pulled log(1 − λ) towards 0, i.e. λ towards sparsemax's, whatever the
    # data said: here λ's gradient is 0 (not None, which AdamW would skip), so it must not move
    net, batches, loss, score = _regression_setup()

    class WithMapping(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.mapping = net, sg.nn.SparsegenLin(lam=0.75, learnable=True)

        def forward(self, x):
            return self.net(x) + 0 * self.mapping.lam

    model = WithMapping()
    weights = net[0].weight.detach().clone()
    fit(model, batches, loss, score, TrainingConfig(epochs=3, weight_decay=0.5, patience=5))
    assert model.mapping.log_one_minus_lam.grad is not None
    assert float(model.mapping.lam) == pytest.approx(0.75, abs=1e-6)
    assert not torch.equal(net[0].weight, weights)  # the rest does train (and decay)
    # a model without learnt mappings keeps one group: its older checkpoints' optimizer loads
    assert len(decay_groups(net)) == 1 and len(decay_groups(model)) == 2


def test_early_stopping_keeps_the_best_epoch():
    model, batches, loss, _ = _regression_setup()
    scores = iter([1.0, 3.0, 2.0, 2.5, 0.0, 9.0])
    history = fit(model, batches, loss, lambda m: next(scores), TrainingConfig(patience=2))
    assert history.best_epoch == 2 and len(history.epochs) == 4 and history.best_score == 3.0


def test_validation_figures_beside_the_score_are_recorded_each_epoch():
    model, batches, loss, _ = _regression_setup()
    scores = iter([1.0, 3.0, 2.0])
    history = fit(
        model,
        batches,
        loss,
        lambda m: {"score": next(scores), "norm": float(m[0].weight.norm())},
        TrainingConfig(epochs=3, patience=5),
    )
    assert [row["valid"] for row in history.epochs] == [1.0, 3.0, 2.0]
    assert history.best_epoch == 2  # chosen on the score, not on the other figures
    norms = [row["norm"] for row in history.epochs]
    assert len(set(norms)) == 3  # measured on each epoch's weights
    assert norms[1] == float(model[0].weight.norm())  # the model keeps the best epoch's


def test_glove_vectors_fill_the_pieces_they_know(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 2 3\ndog 4 5 6\nDog 7 8 9\n")
    matrix, found = glove_embeddings(path, ["<pad>", "▁the", "▁Dog", "s", "▁cat"], 3)
    assert found == 2 and matrix.shape == (5, 3)
    assert matrix[1].tolist() == [1, 2, 3] and matrix[2].tolist() == [7, 8, 9]
    path.write_text("the 1 2\n")
    with pytest.raises(ValueError, match="line 1: 2 values, expected 3"):
        glove_embeddings(path, ["▁the"], 3)
    path.write_text("some,csv,header\nthe 1 2 3\n")  # the first line is read, known or not
    with pytest.raises(ValueError, match="line 1: 0 values, expected 3"):
        glove_embeddings(path, ["▁the"], 3)
    for bad in ("nan", "inf", "1e39"):  # (1e39 overflows float32; NaN trained every model into NaN)
        path.write_text(f"dog 1 2 3\nthe 1 {bad} 3\n")
        with pytest.raises(ValueError, match="line 2: a value that is not a finite float32"):
            glove_embeddings(path, ["▁the"], 3)


def test_glove_files_may_be_gzipped_and_open_with_a_word2vec_count_line(tmp_path):
    plain = tmp_path / "glove.txt"
    plain.write_text("the 1 2 3\ndog 4 5 6\n")
    packed = tmp_path / "glove.txt.gz"
    packed.write_bytes(gzip.compress(b"2 3\nthe 1 2 3\ndog 4 5 6\n"))
    for path in (plain, packed):
        matrix, found = glove_embeddings(path, ["▁dog", "▁the"], 3)
        assert found == 2 and matrix.tolist() == [[4, 5, 6], [1, 2, 3]]
        assert glove_size(path) == 3
    for text, size in (("", None), ("a,b,c\n", None), ("the x y\n", None), ("2 300\n", None)):
        plain.write_text(text)
        assert glove_size(plain) == size
    packed.write_bytes(b"\x1f\x8b" + b"\0" * 20)  # a gzip header, then nothing readable
    with pytest.raises(ValueError, match=r"glove\.txt\.gz, line 1: not a readable gzip file"):
        glove_embeddings(packed, ["▁the"], 3)


def test_the_learning_rate_halves_when_fit_sees_no_better_epoch_and_only_then():
    # ReduceLROnPlateau's relative threshold (1e-4) halved the rate while the score still
    # rose by less, and took a falling negative score for a better one; the row's "lr" was
    # the next epoch's
    for scores, expected in (
        ([50.0, 50.001, 50.002, 50.003], [1e-3] * 4),
        ([-1.0, -1.00005, -1.0001, -1.00014], [1e-3, 1e-3, 5e-4, 2.5e-4]),
    ):
        model, batches, loss, _ = _regression_setup()
        given = iter(scores)
        config = TrainingConfig(epochs=4, patience=10, lr=1e-3, lr_patience=0, lr_decay=0.5)
        history = fit(model, batches, loss, lambda m, given=given: next(given), config)
        assert [row["lr"] for row in history.epochs] == pytest.approx(expected)


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    # every process took cuda:0 (torchrun sets LOCAL_RANK; nothing read it)
    from sparsegen.models.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device() == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device() == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
