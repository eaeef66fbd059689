r"""Sparse attention in Hugging Face ``transformers`` models: ``attn_implementation="sparsemax"``.

``transformers`` (5.x) models compute attention through a registry of functions
chosen by name (``config._attn_implementation``: ``"sdpa"``, ``"eager"``, …), and
build their padding/causal/sliding-window masks through a second registry under
the same name. :func:`register` adds a name to both, so that a model switched to
it gets its masks (a name missing from the mask registry makes ``transformers``
hand the attention no mask at all, and padding is silently attended), and
:func:`sparsify` switches a built or loaded model:

>>> from sparsegen.integrations.transformers import register, sparsify
>>> name = register()  # "sparsemax"; then from_pretrained(..., attn_implementation=name)
>>> model = sparsify(model, "sparsegen_lin", lam=0.5)  # doctest: +SKIP

The attention function computes ``mapping(Q Kᵀ · scaling + mask) V`` with
:func:`sparsegen.attention.scaled_dot_product_attention`:

* grouped-query attention (Llama, Mistral, Qwen2: fewer key/value heads than
  query heads) broadcasts the key/value heads, without copies;
* the masks are the boolean ones ``transformers`` builds for ``"sdpa"``, so padding,
  causal, sliding-window and packed-sequence masks arrive as exclusions. A float
  mask's ``finfo.min`` entries (``"eager"``-style, or one a user passes) exclude too,
  as do any at most ``-1e4``.
  Where ``transformers`` skips a plain causal mask (no padding, queries and keys
  aligned, as for its own sdpa), causality comes from the ``is_causal`` argument,
  else the module's ``is_causal`` (else its config's ``is_decoder``: older encoders
  carry no ``is_causal``), and is applied as a flag: the fused kernel then
  skips the key tiles above the diagonal, where a materialised mask would be read;
* the weights are returned where the model records them (``output_attentions=True``);
  otherwise the attention runs without them, on CUDA in the fused kernel of
  :func:`sparsegen.attention.scaled_dot_product_attention` (softmax in torch's SDPA), so
  the ``(L, S)`` scores never exist;
* dropout on the weights applies only in training;
* an additive position bias (``position_bias``, T5's learnt relative one) is added to
  the scores before the mask excludes, as transformers' own attentions do; it takes the
  unfused path, which passes it its gradient;
* what it cannot honour raises :class:`NotImplementedError`: logit soft-capping
  (``softcap``, Gemma 2), attention sinks (``s_aux`` / ``sinks``, gpt-oss) and
  ``head_mask``.

A learnable ``λ`` / ``q`` (``sparsify(..., learnable=True)``) is an
``nn.Parameter`` of every attention module, ``<attention module>.sparsegen_mapping``:
trained with the model, and saved by ``save_pretrained``. A model loaded with
``from_pretrained`` does not have it (the attention choice is not saved in
``config.json`` either): call :func:`sparsify` again, then
:func:`load_mapping_parameters` to read the trained values back::

    model = AutoModelForCausalLM.from_pretrained(path)
    sparsify(model, "sparsegen_lin", learnable=True, per_head=True)
    load_mapping_parameters(model, path)

``transformers`` is imported when one of these functions is first called; the
extra ``sparsegen[transformers]`` installs it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsegen._extras import needs_extra
from sparsegen.attention import causal_keep, scaled_dot_product_attention
from sparsegen.nn.mappings import MAPPINGS, mapping_key, mapping_module, mapping_name

__all__ = [
    "MAPPING_ATTRIBUTE",
    "attention_modules",
    "load_mapping_parameters",
    "register",
    "sparsify",
]

# The attribute of each attention module that holds its learnable mapping (and so
# the state_dict prefix of its parameters: "...self_attn.sparsegen_mapping.log_q").
MAPPING_ATTRIBUTE = "sparsegen_mapping"

# Arguments transformers may pass that change the attention in a way this function
# cannot reproduce; silently ignoring one would compute a different model.
_REFUSED = {
    "softcap": "logit soft-capping",
    "s_aux": "attention sinks",
    "sinks": "attention sinks",
    "head_mask": "a head mask",
    # DeepSeek sparse attention's top-k keys, which transformers hands to any attention but
    # eager and sdpa instead of folding them into the mask
    "indices": "a top-k key selection",
    "block_indices": "a top-k key selection",
}

# transformers' own implementations: a name of theirs is never taken over.
_BUILT_IN = ("eager", "sdpa", "flash", "flex", "paged")


@dataclass(frozen=True)
class _Spec:
    """What a registered name computes: a mapping, its fixed parameter or a learnable one."""

    name: str
    mapping: str | Callable[..., torch.Tensor]
    parameter: str | None = None
    value: float | None = None
    learnable: bool = False

    def function(self) -> Callable[..., torch.Tensor]:
        """The fixed mapping ``f(scores, mask=keep)``; a learnable one lives on each module."""
        if not isinstance(self.mapping, str):
            return self.mapping
        function = MAPPINGS[self.mapping].function
        if self.parameter is None or self.value is None:
            return function
        return functools.partial(function, **{self.parameter: self.value})


# name -> spec of every name this module registered; transformers' registries are global
# to the process, so this one is too.
_REGISTERED: dict[str, _Spec] = {}


def _transformers() -> tuple[Any, Any, Callable[..., Any]]:
    """transformers' two registries and its boolean mask builder, imported on first use."""
    with needs_extra("transformers", __name__):
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    return AttentionInterface, AttentionMaskInterface, sdpa_mask


def register(
    name: str | None = None,
    mapping: str | Callable[..., torch.Tensor] = "sparsemax",
    *,
    lam: float | None = None,
    q: float | None = None,
    learnable: bool = False,
) -> str:
    """Register a sparsegen attention under ``name`` in ``transformers``; returns the name.

    The name goes into both ``transformers.AttentionInterface`` (the attention
    function) and ``transformers.AttentionMaskInterface`` (the mask builder:
    ``transformers``' boolean ``"sdpa"`` masks), so a model with
    ``attn_implementation=name`` gets its padding and causal masks (a plain causal mask
    that ``transformers`` skips arrives as its ``is_causal`` flag, which the function
    applies). Registering
    the same name for the same attention again is a no-op, and a function defined again
    (the same module and qualified name: a notebook cell run twice) replaces its earlier
    self.

    Parameters
    ----------
    name : str, optional
        Defaults to the mapping's name with its parameter, if given:
        ``"sparsemax"``, ``"sparsegen_lin-lam0.5"``, ``"sparsehourglass-q2.0"``,
        and ``"<mapping>-learnable"`` with ``learnable=True``. Required for a
        callable ``mapping``.
    mapping : str or callable
        A name of :data:`sparsegen.nn.MAPPINGS` (``"sparsemax"``, ``"softmax"``,
        ``"sparsegen_lin"``, ``"sparsehourglass"``, …; ``-`` may replace ``_``), one
        of the library's functions or module classes (taken as their names), or a
        function ``f(scores, mask=keep)`` normalising the last dimension.
    lam, q : float, optional
        The mapping's parameter (``lam < 1`` for sparsegen-lin/-exp/-sq, ``q ≥ 0``
        for sparsecone/sparsehourglass); the library's default when omitted.
    learnable : bool
        The parameter lives on each attention module as an ``nn.Parameter``
        (put there by :func:`sparsify`, which also picks its initial value);
        the attention refuses a module without it.

    Raises
    ------
    ValueError
        For a parameter the mapping does not take, a name of ``transformers``'
        own implementations, or a name already registered for another attention.
    """
    if callable(mapping):
        mapping = mapping_name(mapping) or mapping  # the library's own, by their names
    _check_not_another_mappings_name(name, mapping)
    spec = _spec(name, mapping, lam, q, learnable)
    attention_interface, mask_interface, sdpa_mask = _transformers()
    known = _REGISTERED.get(spec.name)
    if known is not None and known != spec and not _redefined(known, spec):
        raise ValueError(
            f"attention {spec.name!r} is already registered for {known}; choose another name"
        )
    if known is None and spec.name in attention_interface():
        raise ValueError(f"attention {spec.name!r} is registered by someone else; choose another")
    # both registries, always together: the mask registry is what makes transformers
    # build padding/causal masks for the name at all
    attention_interface.register(spec.name, _attention_function(spec))
    mask_interface.register(spec.name, _checked_mask(sdpa_mask, spec.name))
    _REGISTERED[spec.name] = spec
    return spec.name


def _checked_mask(sdpa_mask: Callable[..., Any], name: str) -> Callable[..., Any]:
    """transformers' boolean mask builder, refusing a model whose code never calls the
    attention interface: loaded with ``attn_implementation=name`` (nothing checks the
    architecture there, as :func:`sparsify` does), such a model would add this boolean
    mask (or None, a skipped causal mask) to its scores as if it were its own additive one,
    attending to padding and to future tokens with its own softmax."""

    def mask(*args: Any, config: Any = None, **kwargs: Any) -> Any:
        refused = _refused_model(type(config))
        if refused is not None:
            raise ValueError(
                f"{refused} does not call transformers' attention interface: "
                f"attn_implementation={name!r} cannot run in it (it would keep its own "
                "softmax on a mask built for another attention); load it with its own "
                "attention, and see sparsegen.integrations.transformers.sparsify"
            )
        return sdpa_mask(*args, config=config, **kwargs)

    return mask


@torch.compiler.assume_constant_result  # (a compiled model's trace reads the verdict)
def _refused_model(config_class: type) -> str | None:
    return _refused_model_of(config_class)


@functools.cache
def _refused_model_of(config_class: type) -> str | None:
    """The name of the base model class transformers maps ``config_class`` to, where that
    class's module never calls the attention interface; else None."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        model = MODEL_MAPPING[config_class]
    except (KeyError, ValueError):
        return None
    source = _source(sys.modules[model.__module__])
    return None if source is None or "ALL_ATTENTION_FUNCTIONS" in source else model.__name__


def _redefined(known: _Spec, spec: _Spec) -> bool:
    """Whether ``spec`` is ``known`` with its function defined again: the same module and
    qualified name (a notebook cell run twice), which then replaces it."""

    def where(f: object) -> tuple[str, str] | None:
        if not inspect.isfunction(f):  # (a name, a partial, a module: compared as they are)
            return None
        return f.__module__, f.__qualname__

    same_else = dataclasses.replace(known, mapping=spec.mapping) == spec
    return (
        same_else
        and where(known.mapping) is not None
        and where(known.mapping) == where(spec.mapping)
    )


def _check_not_another_mappings_name(
    name: str | None, mapping: str | Callable[..., torch.Tensor]
) -> None:
    """``register("sparsegen_lin")`` names sparsemax (``mapping``'s default) "sparsegen_lin":
    a ``ValueError`` rather than an attention that is not the one its name says."""
    key = mapping_key(name) if isinstance(name, str) else None  # (_checked_name: the rest)
    named = mapping if isinstance(mapping, str) else getattr(mapping, "__name__", "")
    if key in MAPPINGS and key != mapping_key(named):
        raise ValueError(
            f"register: name {name!r} is a mapping's name, but mapping={mapping!r} is what the "
            f"attention would compute; for that mapping pass register(mapping={name!r})"
        )


def _spec(
    name: str | None,
    mapping: str | Callable[..., torch.Tensor],
    lam: float | None,
    q: float | None,
    learnable: bool,
) -> _Spec:
    """Check the request and give it its name."""
    for label, value in (("lam", lam), ("q", q)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(
                f"{label} must be a number; per-head values are learnt (sparsify(..., "
                f"learnable=True, per_head=True)); got {type(value).__name__}"
            )
    if not isinstance(mapping, str):
        if not callable(mapping):
            raise TypeError(f"mapping must be a name or a callable; got {type(mapping).__name__}")
        if name is None:
            raise ValueError(
                "a callable mapping needs a name: register(name, mapping), or "
                "sparsify(model, mapping, name=...)"
            )
        if lam is not None or q is not None or learnable:
            raise ValueError("lam/q/learnable apply to the library's mappings, not to a callable")
        return _Spec(_checked_name(name), mapping)
    key = mapping_key(mapping)
    # mapping_module checks the name and that the mapping takes the parameter given
    module = mapping_module(key, lam=lam, q=q, learnable=learnable)
    parameter = getattr(type(module), "parameter", None)
    value = {"lam": lam, "q": q}.get(parameter) if parameter else None
    value = None if value is None else float(value) + 0.0  # (-0.0 is 0.0: one name)
    if name is None:
        name = key
        if learnable:
            name += "-learnable"
        elif value is not None:
            name += f"-{parameter}{value!r}"
    return _Spec(_checked_name(name), key, parameter, None if learnable else value, learnable)


def _checked_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"the attention's name must be a string; got {name!r}")
    if not name:
        raise ValueError("the attention's name must be a non-empty string; got ''")
    # "/" names are read as Hub kernels, "|" splits off "paged|"; substrings of the
    # built-in names switch on their special handling inside transformers
    if "/" in name or "|" in name or any(word in name for word in _BUILT_IN):
        raise ValueError(
            f"attention name {name!r} may hold no '/' or '|' nor any of {', '.join(_BUILT_IN)} "
            "(transformers reads those as its own implementations)"
        )
    return name


def _attention_function(spec: _Spec) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    fixed = None if spec.learnable else spec.function()

    def sparsegen_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' attention interface: ``(B, H, L, D)`` in, ``(B, L, H, D)`` out."""
        _refuse(kwargs, spec.name)
        mapping = fixed if fixed is not None else _module_mapping(module, spec)
        mask, causal = _mask(
            attention_mask,
            query.shape[-2],
            key.shape[-2],
            query.device,
            kwargs.get("is_causal"),
            _module_is_causal(module),
            kwargs.get("sliding_window"),
        )
        if kwargs.get("position_bias") is not None:
            mask, causal = _biased(kwargs["position_bias"], mask, causal, key.shape[-2])
        need_weights = _weights_wanted(module, kwargs)
        result = scaled_dot_product_attention(
            query,
            key,
            value,
            mask,
            dropout_p=dropout if module.training else 0.0,
            is_causal=causal,
            scale=scaling,
            enable_gqa=query.shape[-3] != key.shape[-3],
            mapping=mapping,
            need_weights=need_weights,
            need_support=False,
        )
        output, weights = (result.output, result.weights) if need_weights else (result, None)
        return output.transpose(1, 2).contiguous(), weights

    sparsegen_attention.__qualname__ = f"sparsegen_attention[{spec.name}]"
    return sparsegen_attention


def _module_is_causal(module: nn.Module) -> bool:
    """The module's ``is_causal``; for one without (older encoders: ALIGN's, CLAP's text
    models), its config's ``is_decoder``: such a module attends as eager attention does
    without a mask, to every key, unless its model is a decoder."""
    causal = getattr(module, "is_causal", None)
    if causal is None:
        causal = getattr(getattr(module, "config", None), "is_decoder", False)
    return bool(causal)


# Where each attention module last chose to compute its weights, for a gradient
# checkpoint's recomputation (see _weights_wanted).
_WEIGHTS_CHOSEN = "_sparsegen_weights_chosen"


def _weights_wanted(module: nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether the model records the attention weights: ``output_attentions`` passed down,
    or asked of the output hooks by which ``transformers`` collects them (where a model
    has none, the weights are returned, as its own attention would).

    A gradient checkpoint recomputes the layer in the backward pass, where the hooks'
    collector is gone: it must compute what the forward did (else torch's checkpoint
    finds other tensors saved), so the forward's choice is kept on the module and read
    back there."""
    if kwargs.get("output_attentions"):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return True
    collected = _active_collector.get()
    if collected is None and _in_backward():
        return module.__dict__.get(_WEIGHTS_CHOSEN, False)
    wanted = collected is None or any("attentions" in key for key in collected)
    if not torch.compiler.is_compiling():  # (a compiled checkpoint replays its own graph)
        module.__dict__[_WEIGHTS_CHOSEN] = wanted
    return wanted


def _in_backward() -> bool:
    """Whether autograd is running a backward pass on this thread (where a checkpoint
    recomputes its forward)."""
    return torch._C._current_graph_task_id() != -1


def _refuse(kwargs: dict[str, Any], name: str) -> None:
    for argument, what in _REFUSED.items():
        if kwargs.get(argument) is not None:
            raise NotImplementedError(
                f"attn_implementation={name!r} cannot apply {what} ({argument}=...), which "
                "this model uses: keep it on 'sdpa' or 'eager'"
            )


def _refuse_model(model: nn.Module, modules: list[nn.Module], name: str) -> None:
    """What :func:`_refuse` would refuse at the first forward, refused before ``sparsify``
    changes the model, where the model's config or modules say it: Gemma 2's logit
    soft-capping, gpt-oss's attention sinks, DeepSeek sparse attention's top-k keys."""
    configs = [getattr(part, "config", None) for part in model.modules()]
    if any(getattr(config, "attn_logit_softcapping", None) is not None for config in configs):
        _refuse({"softcap": True}, name)
    top_k = ("index_topk", "index_topk_blocks")  # DeepSeek-V3.2 and GLM-MoE-DSA; MiniMax-M3
    if any(getattr(config, key, None) is not None for config in configs for key in top_k) or any(
        getattr(module, "indexer", None) is not None for module in model.modules()
    ):
        _refuse({"indices": True}, name)
    if any(hasattr(module, "sinks") for module in modules):
        _refuse({"sinks": True}, name)


def _module_mapping(module: nn.Module, spec: _Spec) -> nn.Module:
    mapping = getattr(module, MAPPING_ATTRIBUTE, None)
    expected = MAPPINGS[str(spec.mapping)]
    if type(mapping) is not expected:
        raise RuntimeError(
            f"attn_implementation={spec.name!r} learns its parameter on each attention module, "
            f"and {type(module).__name__} has no {expected.__name__} as .{MAPPING_ATTRIBUTE}: "
            f"call sparsegen.integrations.transformers.sparsify(model, {spec.mapping!r}, "
            "learnable=True) first"
        )
    return mapping


def _mask(
    attention_mask: torch.Tensor | None,
    length: int,
    source_length: int,
    device: torch.device,
    is_causal: bool | None,
    module_is_causal: bool,
    sliding_window: int | None,
) -> tuple[torch.Tensor | None, bool]:
    """``(mask, is_causal)`` to apply: transformers' 4-D mask (cut to the keys, as its eager
    attention does), or, where it passed none or a 2-D ``(batch, keys)`` padding mask (1 =
    a real token), causality from the flags: the ``is_causal`` flag (top-left aligned, as
    torch's; the fused kernel then skips the tiles above the diagonal), or, with a sliding
    window, a materialised mask."""
    padding = None
    if attention_mask is not None:
        attention_mask = attention_mask[..., :source_length]
        if attention_mask.dim() != 2:
            return attention_mask, False
        # a raw padding mask, as models that build no 4-D mask hand it on: additive if
        # float, else 1/True = a real token
        padding = attention_mask[:, None, None, :]
        if not padding.is_floating_point():
            padding = padding.bool()
    causal = module_is_causal if is_causal is None else is_causal
    # one query (a decoding step) sees the whole cache, as transformers' sdpa decides too
    if not causal or length == 1:
        return padding, False
    if sliding_window is None:
        return padding, True
    # key j within the window of query i: j − i > −window
    keep = causal_keep(length, source_length, device).triu(1 - sliding_window)
    return keep if padding is None else _excluded(padding, keep), False


def _biased(
    bias: torch.Tensor, mask: torch.Tensor | None, causal: bool, source_length: int
) -> tuple[torch.Tensor, bool]:
    """``(attn_mask, is_causal)`` with T5's additive position bias (``(batch or 1, heads,
    L, S)`` floats, learnt: the unfused path, which passes it a gradient) added to the
    scores before the mask excludes: its eager attention's ``scores + bias + mask``."""
    bias = bias[..., :source_length]
    if causal:  # the bias is a full (L, S) tensor already: the causal mask joins it
        causal_mask = causal_keep(bias.shape[-2], source_length, bias.device)
        mask = causal_mask if mask is None else _excluded(mask, causal_mask)
    if mask is None:
        return bias, False
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, -math.inf), False
    return bias + mask, False


def _excluded(mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``mask`` (boolean, True = keep, or additive) with the positions ``keep`` leaves out
    excluded too."""
    if mask.dtype == torch.bool:
        return mask & keep
    return mask.masked_fill(~keep, -math.inf)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that call ``transformers``' attention interface.

    Told by their code, which looks the interface up (``ALL_ATTENTION_FUNCTIONS``), or,
    where the source is not at hand, by the attributes those modules carry: a score scale
    (``scaling``, or CLIP's ``scale``) and ``is_causal``. The model classes, which hold
    the implementation's name, are left out.
    """
    return [
        module
        for module in model.modules()
        if _calls_the_interface(module) and not hasattr(module, "set_attn_implementation")
    ]


def _calls_the_interface(module: nn.Module) -> bool:
    source = _source(type(module))
    if source is not None:
        return "ALL_ATTENTION_FUNCTIONS" in source
    scaled = hasattr(module, "scaling") or hasattr(module, "scale")
    return scaled and hasattr(module, "is_causal")


@functools.cache
def _source(code: object) -> str | None:
    try:
        return inspect.getsource(code)
    except (OSError, TypeError):
        return None


def sparsify(
    model: nn.Module,
    mapping: str | Callable[..., torch.Tensor] = "sparsemax",
    *,
    lam: float | None = None,
    q: float | None = None,
    learnable: bool = False,
    per_head: bool = False,
    name: str | None = None,
) -> nn.Module:
    """Switch a ``transformers`` model's attention to a sparsegen mapping, in place.

    Registers the attention (:func:`register`) and sets it with
    ``model.set_attn_implementation``. Returns ``model``, for chaining.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Built or loaded; its architecture must use ``transformers``' attention
        interface (all recent ones do: BERT, GPT-2, Llama, Mistral, Qwen2, …).
    mapping, lam, q
        As in :func:`register`; with ``learnable``, ``lam`` / ``q`` is the
        initial value (default ``lam = 0``, ``q = 1``).
    learnable : bool
        Give every attention module (:func:`attention_modules`) the mapping as a
        module with an ``nn.Parameter``, at ``<module>.sparsegen_mapping``
        (replacing one there before): in ``model.parameters()``, trained,
        and saved by ``save_pretrained``. :func:`load_mapping_parameters` reads
        it back into a loaded model sparsified the same way.
    per_head : bool
        With ``learnable``, one value per query head instead of one per layer.
    name : str, optional
        The registered name (default: :func:`register`'s).

    Notes
    -----
    With ``learnable=False`` any ``sparsegen_mapping`` left by an earlier
    learnable call is removed, so ``model.state_dict()`` holds what the model
    uses. The choice is not written to ``config.json``: a saved model loads
    with its default attention unless ``attn_implementation=`` is given again.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify takes a transformers model; got {type(model).__name__}")
    if per_head and not learnable:
        raise ValueError("per_head=True needs learnable=True: a fixed value is the same per head")
    registered = register(name, mapping, lam=lam, q=q, learnable=learnable)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"found no attention module in {type(model).__name__}: transformers models "
            "whose attention goes through its AttentionInterface are supported"
        )
    if not any(hasattr(part, "set_attn_implementation") for part in model.modules()):
        # a layer or attention module shares its model's config: switching it would switch
        # every layer of the model, and a learnable mapping would reach this part only
        raise ValueError(
            f"sparsify takes a whole transformers model (or a module holding one): "
            f"{type(model).__name__} is part of one, whose config says the attention of all "
            "its layers"
        )
    # everything that can fail comes before the model changes
    _refuse_model(model, modules, registered)
    learnt = [_learnable_mapping(model, m, mapping, lam, q, per_head) for m in modules if learnable]
    _switch_attention(model, modules, registered)
    _warn_of_other_attention(model, modules, registered)
    for module, learnt_mapping in zip(modules, learnt or [None] * len(modules), strict=True):
        if learnt_mapping is not None:
            setattr(module, MAPPING_ATTRIBUTE, learnt_mapping)
        elif hasattr(module, MAPPING_ATTRIBUTE):
            delattr(module, MAPPING_ATTRIBUTE)
    return model


def _switch_attention(model: nn.Module, modules: list[nn.Module], registered: str) -> None:
    """Set the attention implementation of the model, and of every part of it that holds
    its own copy of the config (T5's encoder and decoder stacks: setting the model's
    leaves theirs as they were), to ``registered``; raise where an attention module's
    config still says another."""
    for part in model.modules():  # (the model first)
        config = getattr(part, "config", None)
        if getattr(config, "_attn_implementation", registered) == registered:
            continue
        if hasattr(part, "set_attn_implementation"):
            part.set_attn_implementation(registered)
        elif part is model:
            config._attn_implementation = registered
    for part in [model, *modules]:
        kept = getattr(getattr(part, "config", None), "_attn_implementation", registered)
        if kept != registered:
            raise RuntimeError(
                f"{type(part).__name__} of {type(model).__name__} kept attn_implementation="
                f"{kept!r}: its architecture cannot switch attention"
            )


def _warn_of_other_attention(model: nn.Module, modules: list[nn.Module], registered: str) -> None:
    """Warn of the attention that stays as it was: modules named so (``…Attention``) that do
    not call the interface, neither around nor inside one that does (a DeBERTa encoder in
    an ``EncoderDecoderModel``, SigLIP's pooling head of ``nn.MultiheadAttention``)."""
    covered = {id(m) for switched in modules for m in switched.modules()}
    covering = {id(m) for m in model.modules() if any(id(s) in covered for s in m.modules())}
    others = {
        path: type(module).__name__
        for path, module in model.named_modules()
        if "Attention" in type(module).__name__
        and not hasattr(module, "set_attn_implementation")
        and id(module) not in covered | covering
    }
    outermost = [p for p in others if not any(p.startswith(o + ".") for o in others)]
    if outermost:
        shown = ", ".join(f"{p} ({others[p]})" for p in outermost[:4])
        warnings.warn(
            f"sparsify: {len(outermost)} attention module(s) of {type(model).__name__} do not "
            f"go through transformers' AttentionInterface and keep their own attention, not "
            f"{registered!r}: {shown}{', …' if len(outermost) > 4 else ''}",
            stacklevel=3,
        )


def _learnable_mapping(
    model: nn.Module,
    module: nn.Module,
    mapping: str | Callable[..., torch.Tensor],
    lam: float | None,
    q: float | None,
    per_head: bool,
) -> nn.Module:
    shape = (_heads(model, module), 1, 1) if per_head else ()
    reference = next((p for p in module.parameters() if p.is_floating_point()), None)
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    return mapping_module(mapping, lam=lam, q=q, learnable=True, parameter_shape=shape, **factory)


def _heads(model: nn.Module, module: nn.Module) -> int:
    """The number of query heads: the module's attribute, else its config's, else the model's."""
    for source in (module, getattr(module, "config", None), model.config):
        for attribute in ("num_heads", "num_attention_heads"):
            heads = getattr(source, attribute, None)
            if isinstance(heads, int):
                return heads
    raise ValueError(f"cannot tell how many heads {type(module).__name__} has for per_head=True")


def load_mapping_parameters(model: nn.Module, path: str | os.PathLike) -> int:
    """Load the learnt ``λ`` / ``q`` of a model saved with ``save_pretrained``; returns how many.

    ``from_pretrained`` builds the model without them (they are not part of its
    architecture, and it warns that it ignored them); after
    ``sparsify(model, mapping, learnable=True, per_head=...)``, as before saving,
    this reads them from the checkpoint in ``path`` (safetensors or ``.bin``,
    sharded or not).

    Raises
    ------
    ValueError
        When the model has no learnable mapping, or the checkpoint lacks one of them.
    """
    with needs_extra("transformers", __name__):
        from transformers.modeling_utils import load_state_dict

    own = {k: v for k, v in model.state_dict().items() if f".{MAPPING_ATTRIBUTE}." in k}
    if not own:
        raise ValueError(
            "the model has no learnable mapping: call sparsify(model, mapping, learnable=True) "
            "as before saving it, then load"
        )
    names = _saved_names(model, own)
    found: dict[str, torch.Tensor] = {}
    for file in _checkpoint_files(os.fspath(path)):
        try:
            state = load_state_dict(file)
        except Exception as error:  # (safetensors' own error type is no OSError or ValueError)
            raise ValueError(f"{file}: not a readable checkpoint ({error})") from error
        found.update({key: state[n] for key, saved in names.items() for n in saved if n in state})
    missing = sorted(own.keys() - found.keys())
    if missing:
        raise ValueError(
            f"{path} holds no {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}: was it "
            "saved from a model sparsified with the same mapping, learnable and per_head?"
        )
    for key, value in found.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{path} holds {key} of shape {tuple(value.shape)} for a mapping parameter of "
                f"shape {tuple(own[key].shape)}: sparsify with the per_head it was saved with"
            )
    model.load_state_dict(found, strict=False)
    return len(found)


def _saved_names(model: nn.Module, own: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """The names ``save_pretrained`` may have written each of ``own`` under: transformers
    renames some models' weights on saving (its weight conversions, which
    ``from_pretrained`` reverts), and a checkpoint of another head class has the base
    model's prefix where this model has not, or the other way round."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without weight conversions saves the names as they are

        def revert_weight_conversion(model: nn.Module, state: dict) -> dict:
            return state

    prefix = f"{getattr(model, 'base_model_prefix', '') or ''}."
    names = {}
    for key, value in own.items():
        try:
            (saved,) = revert_weight_conversion(model, {key: value})
        except Exception:  # a conversion that cannot take one tensor alone: the name as is
            saved = key
        variants = (prefix + saved, saved.removeprefix(prefix)) if prefix != "." else ()
        names[key] = list(dict.fromkeys((saved, *variants)))
    return names


def _shards(index: str) -> list[str]:
    """The shard files a checkpoint index names: file names in its own folder (a path
    elsewhere, ``../../x``, is refused, not read)."""
    try:
        with open(index) as stream:
            weight_map = json.load(stream)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{index}: not a checkpoint index (JSON with a 'weight_map' of weight names to "
            f"shard files): {error!r}"
        ) from error
    strays = [s for s in shards if os.path.basename(s) != s or s in ("", ".", "..")]
    if strays:
        raise ValueError(f"{index}: the shards must be files beside it; got {strays[:3]}")
    return shards


def _checkpoint_files(path: str) -> list[str]:
    """The weight files of a ``save_pretrained`` folder, shards included."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
        if os.path.isfile(os.path.join(path, index)):
            return [os.path.join(path, shard) for shard in _shards(os.path.join(path, index))]
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin (or index) in {path}")
