"""sparsegen.nn.MultiheadAttention inside torch's Transformer layers: the chosen mapping is the
one that runs (train and eval, with and without grad; torch's fused softmax fast path is
never taken), and sparsify_attention swaps an existing model's attention keeping its weights."""

import pytest
import torch
from torch import nn

import sparsegen as sg

D, HEADS = 16, 4


def _encoder(**kwargs):
    layer = nn.TransformerEncoderLayer(D, HEADS, dim_feedforward=32, dropout=0.0, **kwargs)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=kwargs.get("batch_first", False))


def _inputs(batch_first=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 6, D, generator=generator)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    padding[2, 5:] = True
    return (x if batch_first else x.transpose(0, 1)), padding


class WeightRecorder:
    """Hooks that make an attention module return its per-head weights, and keep them."""

    def __init__(self, attention):
        self.weights = []
        self.handles = [
            attention.register_forward_pre_hook(self._ask, with_kwargs=True),
            attention.register_forward_hook(self._keep),
        ]

    @staticmethod
    def _ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def _keep(self, module, args, output):
        self.weights.append(output[1])

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _padding_gets_nothing(weights, padding):
    """Weights are distributions with exact zeros, none on padded keys."""
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert (weights[padding[:, None, None, :].expand_as(weights)] == 0).all()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_encoder_runs_the_sparse_mapping(training, grad, batch_first):
    torch.manual_seed(0)
    model = sg.nn.sparsify_attention(_encoder(batch_first=batch_first), "sparsemax")
    model.train(training)
    x, padding = _inputs(batch_first)
    recorder = WeightRecorder(model.layers[0].self_attn)
    with torch.set_grad_enabled(grad):
        recorded = model(x, src_key_padding_mask=padding)
    recorder.remove()
    (weights,) = recorder.weights
    assert (weights == 0).any()  # sparsemax, not softmax
    _padding_gets_nothing(weights, padding)
    # Without the hooks (torch's fast path would take over in eval / no_grad) the
    # output is the same: the sparse attention still runs.
    with torch.set_grad_enabled(grad):
        plain = model(x, src_key_padding_mask=padding)
    torch.testing.assert_close(plain, recorded)


def test_softmax_twin_computes_torchs_model():
    # The same weights with mapping="softmax" give torch's own outputs, also against
    # its fused eval path with nested tensors (compared on the positions it keeps).
    torch.manual_seed(1)
    reference = _encoder(batch_first=True).eval()
    x, padding = _inputs()
    with torch.no_grad():
        expected = reference(x, src_key_padding_mask=padding)
        got = sg.nn.sparsify_attention(reference, "softmax")(x, src_key_padding_mask=padding)
    torch.testing.assert_close(got[~padding], expected[~padding], atol=1e-5, rtol=1e-5)


def test_sparse_attention_changes_the_function():
    torch.manual_seed(2)
    x, padding = _inputs()
    dense = _encoder(batch_first=True).eval()
    sparse = sg.nn.sparsify_attention(_encoder(batch_first=True).eval(), "sparsegen_lin", lam=0.5)
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        assert not torch.allclose(sparse(x, src_key_padding_mask=padding), dense(x))


def test_sparsify_attention_keeps_weights_configuration_and_mode():
    torch.manual_seed(3)
    model = nn.Transformer(D, HEADS, 1, 1, dim_feedforward=32, dropout=0.1, batch_first=True)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sg.nn.sparsify_attention(model, "sparsehourglass", q=0.5, learnable=True, per_head=True)
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert not attentions  # none of torch's left
    sparse = [m for m in model.modules() if isinstance(m, sg.nn.MultiheadAttention)]
    assert len(sparse) == 3  # encoder self, decoder self and cross attention
    state = model.state_dict()
    for key, value in before.items():
        assert torch.equal(state[key], value), key
    for module in sparse:
        assert not module.training and module.batch_first and module.dropout == 0.1
        assert module.mapping.log_q.shape == (HEADS, 1, 1)
    assert any("mapping.log_q" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_decoder_and_full_transformer(training):
    torch.manual_seed(4)
    model = nn.Transformer(D, HEADS, 2, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    sg.nn.sparsify_attention(model, "sparsemax").train(training)
    source, padding = _inputs()
    target = torch.randn(3, 5, D)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    cross = WeightRecorder(model.decoder.layers[0].multihead_attn)
    own = WeightRecorder(model.decoder.layers[0].self_attn)
    out = model(
        source,
        target,
        tgt_mask=causal,
        tgt_is_causal=True,
        src_key_padding_mask=padding,
        memory_key_padding_mask=padding,
    )
    assert out.shape == (3, 5, D) and torch.isfinite(out).all()
    _padding_gets_nothing(cross.weights[0], padding)
    upper = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    assert (own.weights[0][..., upper] == 0).all()  # causal: no weight on the future
    if training:
        out.sum().backward()
        attention = model.decoder.layers[0].multihead_attn
        assert attention.in_proj_weight.grad.abs().sum() > 0


def test_hand_built_encoder_layer_stays_sparse_in_eval():
    # A user who assigns the module by hand (no sparsify_attention) is covered too.
    layer = nn.TransformerEncoderLayer(D, HEADS, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.self_attn = sg.nn.MultiheadAttention(D, HEADS, batch_first=True, mapping="sparsemax")
    layer.eval()
    x, padding = _inputs()
    recorder = WeightRecorder(layer.self_attn)
    with torch.no_grad():
        hooked = layer(x, src_key_padding_mask=padding)
    recorder.remove()
    assert (recorder.weights[0] == 0).any()
    with torch.no_grad():
        torch.testing.assert_close(layer(x, src_key_padding_mask=padding), hooked)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("mapping", ["sparsemax", "softmax"])
def test_hand_built_encoder_packing_nested_tensors(mapping):
    # An encoder built around torch's attention packs a padded batch into a nested
    # tensor in eval without grad, and still does once its attention is replaced by hand:
    # the sparse module attends to each sequence's own keys, as on the padded batch.
    encoder = _encoder(batch_first=True).eval()
    reference = _encoder(batch_first=True).eval()
    reference.use_nested_tensor = False
    for layer, twin in zip(encoder.layers, reference.layers, strict=True):
        twin.load_state_dict(layer.state_dict())
        for model in (layer, twin):
            attention = sg.nn.MultiheadAttention(D, HEADS, batch_first=True, mapping=mapping)
            attention.load_state_dict(layer.self_attn.state_dict())
            model.self_attn = attention
    x, padding = _inputs()
    with torch.no_grad():
        packed = encoder(x, src_key_padding_mask=padding)
        padded = reference(x, src_key_padding_mask=padding)
    torch.testing.assert_close(packed[~padding], padded[~padding])
    assert (packed[padding] == 0).all()  # torch's nested path gives zeros at the padding
    nested = torch.nested.nested_tensor([x[0, :4], x[1, :2]])
    with pytest.raises(ValueError, match="nested-tensor inputs"):
        encoder.layers[0].self_attn(nested, nested, nested)  # weights asked for
    with pytest.raises(ValueError, match="batch first"):
        sg.nn.MultiheadAttention(D, HEADS)(nested, nested, nested, need_weights=False)


def test_a_model_without_torch_attention_is_unchanged():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="replaced no attention module"):
        assert sg.nn.sparsify_attention(model) is model
    assert isinstance(model[0], nn.Linear)


def test_a_failed_sparsify_attention_changes_nothing_and_subclasses_are_named():
    # a bad λ raised after the encoders were told to drop their nested-tensor fast path
    model = _encoder(batch_first=True)
    with pytest.raises(ValueError, match="lam must be < 1"):
        sg.nn.sparsify_attention(model, "sparsegen_lin", lam=2.0)
    assert model.use_nested_tensor
    assert all(type(layer.self_attn) is nn.MultiheadAttention for layer in model.layers)

    class Logged(nn.MultiheadAttention):  # its own code, which a twin would not keep
        pass

    holder = nn.ModuleDict({"own": Logged(D, HEADS), "plain": nn.MultiheadAttention(D, HEADS)})
    with pytest.warns(UserWarning, match="left Logged as they are"):
        sg.nn.sparsify_attention(holder)
    assert type(holder["own"]) is Logged
    assert isinstance(holder["plain"], sg.nn.MultiheadAttention)
    # nothing replaced ("the model is unchanged"): the encoder keeps its fast path too
    only_own = nn.ModuleDict({"encoder": _encoder(batch_first=True), "own": Logged(D, HEADS)})
    for layer in only_own["encoder"].layers:
        layer.self_attn = Logged(D, HEADS, batch_first=True)
    with pytest.warns(UserWarning, match="model is unchanged"):
        sg.nn.sparsify_attention(only_own)
    assert only_own["encoder"].use_nested_tensor


def test_sparsify_attention_keeps_a_parametrized_output_projection():
    # weight_norm on out_proj: the twin's state dict had other keys ("Missing key(s) in
    # state_dict: out_proj.weight"); the twin takes torch's projection module itself
    layer = nn.TransformerEncoderLayer(D, HEADS, 32, dropout=0.0, batch_first=True).eval()
    torch.nn.utils.parametrizations.weight_norm(layer.self_attn.out_proj)
    projection = layer.self_attn.out_proj
    x = torch.randn(2, 5, D)
    expected = layer(x)
    sg.nn.sparsify_attention(layer, "softmax")
    assert isinstance(layer.self_attn, sg.nn.MultiheadAttention)
    assert layer.self_attn.out_proj is projection
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer(x).sum().backward()
    assert projection.parametrizations.weight.original1.grad is not None
