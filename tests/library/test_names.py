"""Public names follow one rule; the old names are deprecated aliases of the new ones."""

import importlib
import inspect
import re
import warnings

import pytest

import sparsegen as sg
import sparsegen.nn as snn
from sparsegen import jacobian, losses
from sparsegen.nn import _deprecated
from sparsegen.nn.losses import _Loss
from sparsegen.nn.mappings import _Mapping

# Words written in capitals rather than capitalised: "pp" spells "++".
ACRONYMS = {"pp"}


def camel(name: str) -> str:
    """The rule: one capital per underscore-separated word (an acronym all capitals)."""
    return "".join(w.upper() if w in ACRONYMS else w.capitalize() for w in name.split("_"))


def test_camel():
    assert camel("sparsehourglass") == "Sparsehourglass"
    assert camel("sparsegen_lin") == "SparsegenLin"
    assert camel("sum_normalization_pp") == "SumNormalizationPP"
    assert camel("sparsehourglass_hinge_loss") == "SparsehourglassHingeLoss"


def _exported(module, kind):
    return {name: getattr(module, name) for name in module.__all__ if kind(getattr(module, name))}


def test_every_mapping_module_is_the_camel_case_of_a_function():
    functions = _exported(sg, inspect.isfunction)
    modules = {
        name: obj
        for name, obj in _exported(snn, inspect.isclass).items()
        if issubclass(obj, _Mapping)
    }
    assert len(modules) == 11
    by_camel = {camel(name): function for name, function in functions.items()}
    for name, cls in modules.items():
        assert cls.__name__ == name
        assert name in by_camel, f"{name} is no function of sparsegen.__all__ in CamelCase"
        assert cls.function is by_camel[name]
    # and the other way: every mapping but sparsegen (which takes any g) has its module
    assert set(snn.MAPPINGS) == set(functions) - {"sparsegen"}
    for key, cls in snn.MAPPINGS.items():
        assert cls.__name__ == camel(key)


def test_every_loss_module_is_the_camel_case_of_a_loss_function():
    functions = {camel(name) for name in _exported(losses, inspect.isfunction)}
    modules = [
        name for name, obj in _exported(snn, inspect.isclass).items() if issubclass(obj, _Loss)
    ]
    assert len(modules) == 5
    for name in modules:
        assert name in functions, f"{name} is no function of sparsegen.losses in CamelCase"


@pytest.mark.parametrize("module", [sg, losses, jacobian, snn], ids=lambda m: m.__name__)
def test_functions_are_snake_case_and_classes_camel_case(module):
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name), name
        elif inspect.isclass(obj):
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", name), name
            assert obj.__name__ == name


# Every old name, where it could be imported from, and its new name.
OLD_NAMES = [
    ("sparsegen.nn", "SparseCone", "Sparsecone"),
    ("sparsegen.nn", "SparseHourglass", "Sparsehourglass"),
    ("sparsegen.nn", "SparseHourglassHingeLoss", "SparsehourglassHingeLoss"),
    ("sparsegen.nn.mappings", "SparseCone", "Sparsecone"),
    ("sparsegen.nn.mappings", "SparseHourglass", "Sparsehourglass"),
    ("sparsegen.nn.losses", "SparseHourglassHingeLoss", "SparsehourglassHingeLoss"),
]


def test_the_table_of_old_names_is_complete():
    table = {
        (m, old, new) for m, names in _deprecated.RENAMED.items() for old, new in names.items()
    }
    assert table == set(OLD_NAMES)


@pytest.mark.parametrize("where, old, new", OLD_NAMES)
def test_old_names_are_deprecated_aliases(where, old, new):
    module = importlib.import_module(where)
    with pytest.warns(FutureWarning, match=rf"{where}\.{old} is deprecated .* 0\.2; use .*\.{new}"):
        alias = getattr(module, old)
    assert alias is getattr(module, new)
    assert old not in vars(module) and old not in getattr(module, "__all__", ())
    assert old not in dir(module)


def test_from_import_of_an_old_name_warns_at_the_import():
    namespace = {}
    with pytest.warns(FutureWarning, match="use sparsegen.nn.Sparsehourglass") as record:
        exec(compile("from sparsegen.nn import SparseHourglass", "user.py", "exec"), namespace)
    # at the user's line (twice: import's hasattr, then the getattr; Python shows it once)
    assert {w.filename for w in record} == {"user.py"}
    old = namespace["SparseHourglass"]
    assert isinstance(snn.Sparsehourglass(q=0.5), old)
    module = old(q=0.5)  # the same class: no second warning, a Sparsehourglass
    assert isinstance(module, snn.Sparsehourglass) and type(module).__name__ == "Sparsehourglass"


def test_unknown_names_still_raise_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in (snn, importlib.import_module("sparsegen.nn.mappings")):
            with pytest.raises(AttributeError, match="has no attribute 'Sparsegenlin'"):
                module.Sparsegenlin  # noqa: B018
            assert not hasattr(module, "SparseHourGlass")
