"""Hugging Face transformers models on sparsegen attention: parity with sdpa under softmax,
exact zeros on padding, future and out-of-window keys, generation, learnt λ saved and loaded."""

import functools
import subprocess
import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

import sparsegen as sg  # noqa: E402
from sparsegen.integrations.transformers import (  # noqa: E402
    MAPPING_ATTRIBUTE,
    attention_modules,
    load_mapping_parameters,
    register,
    sparsify,
)

VOCAB, LENGTH, WINDOW = 100, 7, 3
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": VOCAB}
DECODER = {"intermediate_size": 64, "num_key_value_heads": 2}  # GQA: 2 key/value heads for 4
ARCHITECTURES = {
    "bert": lambda: transformers.BertModel(
        transformers.BertConfig(**SIZES, intermediate_size=64, max_position_embeddings=32)
    ),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, bos_token_id=0,
            eos_token_id=0,
        )
    ),
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES, **DECODER)),
    "mistral": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(**SIZES, **DECODER, sliding_window=WINDOW)
    ),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            **SIZES, **DECODER, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
        )
    ),
}  # fmt: skip
DECODERS = ["gpt2", "llama", "mistral", "qwen2"]


def build(architecture, dtype=torch.float64):
    """A tiny random model, in eval mode, on transformers' sdpa attention."""
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture]().to(dtype).eval()
    model.set_attn_implementation("sdpa")
    return model


def batch(right_padding=True):
    """Token ids and a padding mask: row 0 has 3 padded positions, at its end or its start."""
    ids = torch.randint(1, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    if right_padding:
        mask[0, -3:] = 0
    else:
        mask[0, :3] = 0
    return ids, mask


def outputs(model, ids, mask, **kwargs):
    result = model(input_ids=ids, attention_mask=mask, **kwargs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state, result


def test_register_registers_the_attention_and_its_mask_under_deterministic_names():
    names = {
        register(): "sparsemax",
        register(mapping="sparsegen-lin"): "sparsegen_lin",
        register(mapping="sparsegen_lin", lam=0.5): "sparsegen_lin-lam0.5",
        register(mapping="sparsehourglass", q=2): "sparsehourglass-q2.0",
        register(mapping="sparsecone", learnable=True): "sparsecone-learnable",
        register(mapping="softmax"): "softmax",
    }
    for got, expected in names.items():
        assert got == expected
        # the mask registry is what makes transformers build padding masks for a name
        assert got in AttentionInterface() and got in AttentionMaskInterface()
    assert register(mapping="sparsegen_lin", lam=0.5) == "sparsegen_lin-lam0.5"  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        register("sparsegen_lin-lam0.5", "sparsegen_lin", lam=0.25)
    with pytest.raises(ValueError, match="own implementations"):
        register("sdpa")
    with pytest.raises(ValueError, match="takes no q"):
        register(mapping="sparsemax", q=1.0)
    # the library's own functions and module classes are their names (as every other API
    # takes them), and a NumPy number is a number
    assert register(mapping=sg.sparsemax) == "sparsemax"
    assert register(mapping=sg.sparsegen_lin, lam=0.5) == "sparsegen_lin-lam0.5"
    assert register(mapping=sg.nn.Sparsehourglass, q=2) == "sparsehourglass-q2.0"
    assert register(mapping="sparsegen_lin", lam=np.float32(0.25)) == "sparsegen_lin-lam0.25"
    assert register(mapping="sparsegen_lin", lam=-0.0) == "sparsegen_lin-lam0.0"  # one name
    with pytest.raises(ValueError, match=r"needs a name: .* sparsify\(model, mapping, name="):
        register(mapping=lambda scores, dim=-1, mask=None: scores.softmax(dim))
    assert register("my_sparsemax", sg.sparsemax) in AttentionMaskInterface()
    # a function defined again (a notebook cell run twice) replaces itself; another
    # function under its name is refused
    cell = "def scaled(scores, mask=None):\n    return sg.sparsemax(scores * {}, mask=mask)"
    for factor in (2, 3):
        namespace = {"sg": sg}
        exec(cell.format(factor), namespace)
        assert register("my_cell", namespace["scaled"]) == "my_cell"
    assert AttentionInterface()["my_cell"] is not None
    with pytest.raises(ValueError, match="already registered"):
        register("my_cell", sg.sparsemax)
    with pytest.raises(ValueError, match="already registered"):
        register("my_cell", functools.partial(namespace["scaled"]))
    # a mapping's name for another mapping (register's first argument is the name: the
    # mapping defaults to sparsemax) would register an attention that its name belies
    with pytest.raises(ValueError, match=r"pass register\(mapping='sparsegen_lin'\)"):
        register("sparsegen_lin")


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_softmax_through_the_integration_matches_sdpa_with_gradients(architecture):
    model = build(architecture)
    ids, mask = batch()
    real = mask.bool()

    def run():
        model.zero_grad()
        logits = outputs(model, ids, mask)[0]
        (logits[real].sin().sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits[real].detach(), grads

    expected, expected_grads = run()
    sparsify(model, "softmax")
    assert model.config._attn_implementation == "softmax"
    got, grads = run()
    with torch.no_grad():  # the integration's function ran: sdpa returns no weights
        assert outputs(model, ids, mask, output_attentions=True)[1].attentions[0] is not None
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-10, rtol=1e-8, msg=name)


def t5():
    """A tiny random T5 on transformers' sdpa attention: encoder and decoder stacks that hold
    their own copies of the config, and a learnt relative position bias added to the scores
    (by sdpa as an additive mask)."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config).double().eval()


def test_t5_switches_both_stacks_and_adds_its_position_bias():
    model = t5()
    ids, mask = batch()

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4]).logits
        logits.sin().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    expected, expected_grads = run()
    sparsify(model, "softmax")
    assert {m.config._attn_implementation for m in attention_modules(model)} == {"softmax"}
    got, grads = run()
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-10, rtol=1e-8, msg=name)

    sparsify(model, "sparsemax")
    sparse, grads = run()
    assert not torch.allclose(sparse, expected)  # the mapping is used, in both stacks
    for stack in ("encoder", "decoder"):
        bias = grads[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        assert bias.abs().sum() > 0  # the learnt bias is trained through the mapping
    with torch.no_grad():
        result = model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4], output_attentions=True
        )
    for weights in (*result.encoder_attentions, *result.cross_attentions):
        assert weights[0][..., ~mask[0].bool()].eq(0).all()  # padded keys
    for weights in result.decoder_attentions:
        assert weights.triu(1).eq(0).all()  # future keys


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("right_padding", [True, False])
def test_sparsemax_gives_exact_zeros_on_padded_future_and_out_of_window_keys(
    architecture, right_padding
):
    model = sparsify(build(architecture), "sparsemax")
    ids, mask = batch(right_padding)
    real = mask.bool()
    with torch.no_grad():
        logits, result = outputs(model, ids, mask, output_attentions=True)
        changed = ids.masked_fill(~real, 7)  # other tokens where the padding is
        changed_logits = outputs(model, changed, mask)[0]
    torch.testing.assert_close(changed_logits[real], logits[real], atol=0, rtol=0)
    assert len(result.attentions) == 2
    rows, columns = torch.arange(LENGTH)[:, None], torch.arange(LENGTH)
    for layer, weights in enumerate(result.attentions):
        assert weights.shape == (2, 4, LENGTH, LENGTH)
        assert weights[0][..., ~real[0]].eq(0).all()  # padded keys
        if architecture in DECODERS:
            assert weights[..., columns > rows].eq(0).all()  # future keys
        windowed = architecture == "mistral" or (architecture == "qwen2" and layer >= 1)
        if windowed:
            assert weights[..., columns <= rows - WINDOW].eq(0).all()
        kept = weights[real.unsqueeze(1).expand(-1, 4, -1)]
        torch.testing.assert_close(kept.sum(-1), torch.ones(kept.shape[:-1], dtype=kept.dtype))
        assert (kept == 0).any()  # sparse, not only masked


@pytest.mark.parametrize("architecture", DECODERS)
def test_generation_with_and_without_cache_and_left_padding_agree(architecture):
    model = sparsify(build(architecture), "sparsegen_lin", lam=0.5)
    model.generation_config.eos_token_id = None  # four new tokens in every row, never cut short
    ids, mask = batch(right_padding=False)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(ids, attention_mask=mask, **settings)
        uncached = model.generate(ids, attention_mask=mask, use_cache=False, **settings)
        alone = model.generate(ids[:1, 3:], **settings)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[0, 3:], alone[0])  # the left-padded row is the row alone


def test_learnt_lambda_trains_and_round_trips_through_save_pretrained(tmp_path):
    model = sparsify(
        build("llama", torch.float32), "sparsegen_lin", lam=0.2, learnable=True, per_head=True
    )
    names = [n for n, _ in model.named_parameters() if MAPPING_ATTRIBUTE in n]
    assert len(names) == 2 and model.config._attn_implementation == "sparsegen_lin-learnable"
    before = model.model.layers[0].self_attn.sparsegen_mapping.lam.detach().clone()
    assert before.shape == (4, 1, 1)
    ids, mask = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    after = model.model.layers[0].self_attn.sparsegen_mapping.lam.detach()
    assert not torch.equal(after, before) and (after < 1).all()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)

    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert not hasattr(loaded.model.layers[0].self_attn, MAPPING_ATTRIBUTE)
    assert loaded.config._attn_implementation != "sparsegen_lin-learnable"  # not in config.json
    sparsify(loaded, "sparsegen_lin", learnable=True, per_head=True)
    assert load_mapping_parameters(loaded, tmp_path) == 2
    torch.testing.assert_close(loaded.model.layers[0].self_attn.sparsegen_mapping.lam, after)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, expected)

    sparsify(loaded, "sparsemax")  # a fixed mapping drops the learnable one
    assert not any(MAPPING_ATTRIBUTE in key for key in loaded.state_dict())
    with pytest.raises(ValueError, match="no learnable mapping"):
        load_mapping_parameters(loaded, tmp_path)


def test_a_checkpoint_that_is_not_one_is_a_value_error_naming_its_file(tmp_path):
    model = sparsify(build("gpt2"), "sparsegen_lin", lam=0.3, learnable=True)
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"not for a model")
    folder = tmp_path / "saved"
    folder.mkdir()
    index = folder / "model.safetensors.index.json"
    for text, match in (
        ("{not json", "not a checkpoint index"),
        ('{"metadata": {}}', "not a checkpoint index"),  # (no weight_map: a KeyError)
        ('{"weight_map": [1, 2]}', "not a checkpoint index"),
        ('{"weight_map": {"w": "../secret.safetensors"}}', r"shards must be files beside it"),
        ('{"weight_map": {"w": ".."}}', r"shards must be files beside it"),
    ):
        index.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_mapping_parameters(model, folder)
    index.unlink()
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)  # (safetensors: header too large)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable checkpoint"):
        load_mapping_parameters(model, folder)


def test_register_refuses_a_name_that_is_not_a_string():
    for name in (3, b"sparsemax"):
        with pytest.raises(TypeError, match="the attention's name must be a string"):
            register(name)
    with pytest.raises(ValueError, match="non-empty"):
        register("")


def _learnt(model):
    return {k: v for k, v in model.state_dict().items() if MAPPING_ATTRIBUTE in k}


def test_learnt_parameters_load_where_save_pretrained_renamed_them(tmp_path):
    # ViT's weights are renamed on saving (transformers' weight conversions, which
    # from_pretrained reverts); a causal LM's checkpoint loads into its base model,
    # whose names lack the "model." prefix; a per_head mismatch names itself.
    vit = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, image_size=8, patch_size=4)  # fmt: skip
    cases = [
        (transformers.ViTModel(vit), transformers.ViTModel),
        (build("llama", torch.float32), transformers.LlamaModel),
    ]
    for i, (model, loader) in enumerate(cases):
        sparsify(model, "sparsegen_lin", lam=0.3, learnable=True, per_head=True)
        with torch.no_grad():
            for value in _learnt(model).values():
                value.uniform_(-2.0, -0.1)  # log(1 − λ): a λ of its own in each head
        model.save_pretrained(tmp_path / str(i))
        loaded = sparsify(loader.from_pretrained(tmp_path / str(i)), "sparsegen_lin",
                          learnable=True, per_head=True)  # fmt: skip
        assert load_mapping_parameters(loaded, tmp_path / str(i)) == 2
        saved = list(_learnt(model).values())
        for got, expected in zip(_learnt(loaded).values(), saved, strict=True):
            torch.testing.assert_close(got, expected)
        shared = sparsify(loader.from_pretrained(tmp_path / str(i)), "sparsegen_lin",
                          learnable=True)  # fmt: skip
        with pytest.raises(ValueError, match="per_head"):
            load_mapping_parameters(shared, tmp_path / str(i))


def test_a_learnable_name_without_its_parameters_says_what_to_call():
    model = build("gpt2")
    model.set_attn_implementation(register(mapping="sparsegen_exp", learnable=True))
    with pytest.raises(RuntimeError, match="learnable=True"):
        model(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="per_head"):
        sparsify(model, "sparsegen_lin", lam=0.5, per_head=True)


def test_bfloat16_smoke():
    model = sparsify(build("qwen2", torch.bfloat16), "sparsehourglass", q=0.5, learnable=True)
    ids, mask = batch()
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    grad = model.model.layers[0].self_attn.sparsegen_mapping.log_q.grad
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_the_attention_function_refuses_what_it_cannot_honour_and_drops_out_in_training():
    attention = AttentionInterface()[register()]
    module = attention_modules(build("llama"))[0]
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64)
    kv = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    for argument in ("softcap", "s_aux", "sinks", "head_mask", "indices", "block_indices"):
        with pytest.raises(NotImplementedError, match=argument):
            attention(module, q, kv, kv, None, **{argument: torch.ones(1)})
    # no mask: causal from the module; weights always returned
    output, weights = attention(module, q, kv, kv, None, scaling=0.5, dropout=0.5)
    assert output.shape == (1, 5, 4, 8) and weights.shape == (1, 4, 5, 5)
    assert weights.triu(1).eq(0).all()  # eval: no dropout either, so rows sum to one
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 5, dtype=torch.float64))
    expected = sg.attention.scaled_dot_product_attention(
        q, kv, kv, is_causal=True, scale=0.5, enable_gqa=True
    )
    torch.testing.assert_close(output, expected.transpose(1, 2))
    # an eager-style float mask: finfo.min excludes, a fully masked row is empty
    float_mask = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    float_mask[..., 2, :] = torch.finfo(torch.float64).min
    _, weights = attention(module, q, kv, kv, float_mask, is_causal=False)
    assert weights[..., 2, :].eq(0).all() and weights[..., 3, :].sum().item() == pytest.approx(4)
    module.train()
    _, dropped = attention(module, q, kv, kv, None, dropout=0.5)
    assert (dropped > 1).any()  # survivors scaled by 1 / (1 - p)


def test_sparsify_finds_nothing_in_a_model_without_attention_modules():
    with pytest.raises(ValueError, match="no attention module"):
        sparsify(torch.nn.Linear(2, 2))


TEXT = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
# Models whose attention modules carry no `scaling` (CLIP, SigLIP: `scale`) or no
# `is_causal` (LayoutLM, ALIGN): sparsify refused them, and ALIGN's encoder, whose mask
# transformers skips without padding, attended causally.
ENCODERS = {
    "clip_text": lambda: transformers.CLIPTextModel(
        transformers.CLIPTextConfig(**TEXT, intermediate_size=64, projection_dim=32)
    ),
    "layoutlm": lambda: transformers.LayoutLMModel(
        transformers.LayoutLMConfig(**TEXT, intermediate_size=64)
    ),
    "align_text": lambda: transformers.AlignTextModel(
        transformers.AlignTextConfig(**TEXT, intermediate_size=64)
    ),
}


@pytest.mark.parametrize("architecture", list(ENCODERS))
def test_encoders_without_scaling_or_is_causal_are_sparsified_and_stay_bidirectional(
    architecture,
):
    torch.manual_seed(0)
    model = ENCODERS[architecture]().double().eval()
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    # (CLIP's eager attention takes its softmax in float32: sdpa where the model has it)
    model.set_attn_implementation("sdpa" if model._supports_sdpa else "eager")
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    sparsify(model, "softmax")
    assert attention_modules(model)
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected)
    sparsify(model, "sparsegen_lin", lam=0.2, learnable=True)  # every module gets its λ
    assert all(hasattr(m, MAPPING_ATTRIBUTE) for m in attention_modules(model))
    model(input_ids=ids).last_hidden_state.sum().backward()


def test_attention_that_stays_as_it_was_is_named_in_a_warning():
    # an encoder-decoder whose DeBERTa encoder does not call the interface: its attention
    # stayed softmax without a word, while the BERT decoder's became sparsemax
    encoder = transformers.DebertaV2Config(**TEXT, intermediate_size=64)
    decoder = transformers.BertConfig(**TEXT, intermediate_size=64, is_decoder=True,
                                      add_cross_attention=True)  # fmt: skip
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = transformers.EncoderDecoderModel(config=config).eval()
    with pytest.warns(UserWarning, match=r"1 attention module\(s\) of EncoderDecoderModel .* "
                      r"keep their own attention, not 'sparsemax': encoder\.encoder\.layer\.0"
                      r"\.attention \(DebertaV2Attention\)") as caught:  # fmt: skip
        sparsify(model, "sparsemax")
    assert caught[0].filename == __file__  # the caller's line
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = model(input_ids=ids, decoder_input_ids=ids, output_attentions=True)
    assert (result.encoder_attentions[0] > 0).all()  # as the warning says
    assert (result.decoder_attentions[0] == 0).any()


def test_supported_models_are_sparsified_without_a_warning():
    import warnings

    for architecture in ARCHITECTURES:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "sparsify")
            sparsify(build(architecture), "sparsemax")


def test_a_model_loaded_with_the_name_that_never_calls_the_interface_is_refused():
    # BLOOM builds its masks through the registry but keeps its own attention, adding the
    # boolean mask (or None, a skipped causal mask) as its additive one: it attended to
    # future tokens with its own softmax
    config = transformers.BloomConfig(hidden_size=32, n_layer=1, n_head=4, vocab_size=VOCAB)
    model = transformers.BloomForCausalLM._from_config(config, attn_implementation=register())
    with pytest.raises(ValueError, match="BloomModel does not call transformers' attention"):
        model(torch.randint(0, VOCAB, (2, 5)))


def test_a_compiled_model_on_the_registered_attention_is_one_graph():
    model = build("llama", torch.float32)
    model.set_attn_implementation(register())
    ids, mask = batch()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(ids, attention_mask=mask).logits, expected)


def test_a_model_the_attention_cannot_serve_is_refused_before_it_changes():
    # Gemma 2's logit soft-capping: refused at the first forward only, after the switch
    config = transformers.Gemma2Config(**TEXT, intermediate_size=64, num_key_value_heads=2,
                                       head_dim=8)  # fmt: skip
    model = transformers.Gemma2ForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    with pytest.raises(NotImplementedError, match="soft-capping"):
        sparsify(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(not hasattr(transformers, "GlmMoeDsaConfig"), reason="transformers < 5.x")
def test_a_model_with_top_k_key_selection_is_refused_before_it_changes():
    # DeepSeek sparse attention hands its top-k keys to any attention but eager and sdpa
    # as indices=: ignored, they would attend to every key (a different model)
    config = transformers.GlmMoeDsaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=2,
        num_experts_per_tok=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
        v_head_dim=8, qk_nope_head_dim=8, index_topk=2, index_head_dim=8, index_n_heads=2,
        first_k_dense_replace=1, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.GlmMoeDsaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    with pytest.raises(NotImplementedError, match="top-k key selection"):
        sparsify(model, "softmax")
    assert model.config._attn_implementation == "sdpa"


def test_every_top_k_key_selection_is_refused_up_front():
    # MiniMax-M3 says its selection as index_topk_blocks, and any DSA layer has an indexer
    from sparsegen.integrations.transformers import _refuse_model

    indexed = torch.nn.Sequential(torch.nn.Linear(2, 2))
    indexed[0].indexer = torch.nn.Linear(2, 2)
    models = [indexed]
    if hasattr(transformers, "MiniMaxM3VLTextConfig"):
        models.append(torch.nn.Module())
        models[-1].config = transformers.MiniMaxM3VLTextConfig(num_hidden_layers=1)
    for model in models:
        with pytest.raises(NotImplementedError, match="top-k key selection"):
            _refuse_model(model, [], "softmax")
    _refuse_model(build("llama"), [], "softmax")  # (a model without one passes)


def test_sparsify_takes_a_whole_model_not_one_of_its_layers():
    # a layer shares its model's config: switching it would switch every layer
    model = build("llama")
    for part in (model.model.layers[1], model.model.layers[1].self_attn):
        with pytest.raises(ValueError, match="whole transformers model"):
            sparsify(part, "sparsegen_lin", learnable=True)
    assert model.config._attn_implementation == "sdpa"
    assert not any(MAPPING_ATTRIBUTE in key for key in model.state_dict())
    wrapper = torch.nn.ModuleDict({"lm": model})  # a module holding a model is taken
    sparsify(wrapper, "sparsemax")
    assert model.config._attn_implementation == "sparsemax"
    with pytest.raises(TypeError, match="sparsify takes a transformers model; got str"):
        sparsify("model")  # (a name to load is not taken: an AttributeError had said so)


def test_sparsify_attention_points_hugging_face_models_to_the_integration():
    model = build("bert")
    with pytest.warns(UserWarning, match=r"integrations\.transformers\.sparsify"):
        assert sg.nn.sparsify_attention(model) is model


def test_a_raw_two_dimensional_padding_mask_is_combined_with_causality():
    attention = AttentionInterface()[register()]
    module = attention_modules(build("llama"))[0]
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    kv = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    padding = torch.ones(2, 5, dtype=torch.long)
    padding[1, 3:] = 0
    additive = torch.zeros(2, 5, dtype=torch.float64).masked_fill(padding == 0, -torch.inf)
    for mask in (padding, additive):
        _, weights = attention(module, q, kv, kv, mask)
        assert weights[1, ..., 3:].eq(0).all() and weights.triu(1).eq(0).all()
        full = torch.ones(5, 5, dtype=torch.bool).tril() & padding.bool()[:, None, None, :]
        expected = attention(module, q, kv, kv, full)[1]
        torch.testing.assert_close(weights, expected)


def test_without_transformers_the_module_imports_and_names_the_extra():
    code = """
import sys
sys.modules["transformers"] = None  # as if it were not installed
import sparsegen._extras
sparsegen._extras.OPTIONAL.setdefault("transformers", "transformers")
import sparsegen.integrations.transformers as integration
try:
    integration.register()
except sparsegen._extras.MissingExtra as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == (
        "sparsegen.integrations.transformers needs transformers: "
        "pip install 'sparsegen[transformers]'"
    ), result.stderr


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_weights_are_computed_only_where_the_model_records_them(architecture, monkeypatch):
    # Without output_attentions the attention runs without weights (on CUDA: the fused
    # kernel, which never builds them); with it, every layer returns its weights.
    from sparsegen.integrations import transformers as integration

    asked = []
    original = integration.scaled_dot_product_attention

    def recording(*args, need_weights=False, **kwargs):
        asked.append(need_weights)
        return original(*args, need_weights=need_weights, **kwargs)

    monkeypatch.setattr(integration, "scaled_dot_product_attention", recording)
    model = sparsify(build(architecture), "sparsemax")
    ids, mask = batch()
    with torch.no_grad():
        plain = outputs(model, ids, mask)[0]
        assert asked == [False, False]
        logits, result = outputs(model, ids, mask, output_attentions=True)
    assert asked[2:] == [True, True] and all(w is not None for w in result.attentions)
    torch.testing.assert_close(logits, plain, atol=0, rtol=0)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_a_plain_causal_mask_arrives_as_the_causal_flag_and_gives_the_masked_output(
    architecture, monkeypatch
):
    # Unpadded, transformers skips the causal mask (as for its own sdpa) and the attention
    # applies causality as a flag, which lets the fused kernel skip the tiles above the
    # diagonal; the rows equal those of a batch whose padded third row makes the mask real.
    from sparsegen.integrations import transformers as integration

    seen = []
    original = integration.scaled_dot_product_attention

    def recording(query, key, value, mask, **kwargs):
        seen.append((mask is None, kwargs["is_causal"]))
        return original(query, key, value, mask, **kwargs)

    monkeypatch.setattr(integration, "scaled_dot_product_attention", recording)
    model = sparsify(build(architecture), "sparsemax")
    ids, _ = batch()
    padded_ids = torch.cat([ids, ids[:1]])
    padded_mask = torch.ones_like(padded_ids)
    padded_mask[2, -3:] = 0
    with torch.no_grad():
        flagged = outputs(model, ids, torch.ones_like(ids))[0]
        assert seen == [(True, True)] * 2
        masked = outputs(model, padded_ids, padded_mask)[0][:2]
    assert seen[2:] == [(False, False)] * 2
    torch.testing.assert_close(flagged, masked, atol=1e-12, rtol=0)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("mapping", ["softmax", "sparsegen_lin"])
def test_gradient_checkpointing_recomputes_what_the_forward_computed(
    mapping, reentrant, monkeypatch
):
    # The backward's recomputation has no output collector: it must still compute without
    # weights, as the forward did (torch's checkpoint refused other saved tensors), and
    # give the gradients of the model without checkpoints.
    from sparsegen.integrations import transformers as integration

    options = {"lam": 0.5, "learnable": True} if mapping == "sparsegen_lin" else {}
    ids, mask = batch()
    asked, grads = [], []
    original = integration.scaled_dot_product_attention

    def recording(*args, need_weights=False, **kwargs):
        asked.append(need_weights)
        return original(*args, need_weights=need_weights, **kwargs)

    monkeypatch.setattr(integration, "scaled_dot_product_attention", recording)
    for checkpointed in (False, True):
        model = sparsify(build("llama").train(), mapping, **options)
        if checkpointed:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        asked.clear()
        model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss.backward()
        assert asked == [False] * (4 if checkpointed else 2)  # (recomputed: twice)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
