"""The public surface: every public module declares ``__all__``; every object a package exports
(and each of its public methods and properties) has a docstring, and every exported class and
function shows a short example."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import curriculum

ALIASES = {"curriculum.knn", "curriculum.knn_exact", "curriculum.loader", "curriculum.stream", "curriculum.curation",
           "curriculum.global_mining", "curriculum.neighbourhood", "curriculum.contrastive", "curriculum.data",
           "curriculum.cli.__main__"}
# what users import: the package and its subpackages' exports, pacing, the integrations
SURFACE = ["curriculum", "curriculum.difficulty", "curriculum.pacing", "curriculum.sampling", "curriculum.mining",
           "curriculum.selection", "curriculum.store", "curriculum.neighbors"]
OPTIONAL = {"curriculum.integrations.lightning": "lightning", "curriculum.integrations.transformers": "transformers"}


def _public_modules() -> list[str]:
    out = []
    for m in pkgutil.walk_packages(curriculum.__path__, "curriculum."):
        if m.name in ALIASES or any(p.startswith("_") for p in m.name.split(".")[1:]):
            continue
        out.append(m.name)
    return out


@pytest.mark.parametrize("name", _public_modules())
def test_every_public_module_declares_all(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    mod = importlib.import_module(name)
    assert isinstance(getattr(mod, "__all__", None), list), f"{name} has no __all__"
    missing = [a for a in mod.__all__ if not hasattr(mod, a)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def _exported() -> list[tuple[str, object]]:
    seen, out = set(), []
    for name in SURFACE + list(OPTIONAL):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr in mod.__all__:
            obj = getattr(mod, attr)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append((f"{name}.{attr}", obj))
    return out


def _doc(cls: type, name: str) -> str:
    """A member's docstring, inherited along the MRO when an override has none."""
    for base in cls.__mro__:
        member = vars(base).get(name)
        member = member.fget if isinstance(member, property) else member
        if member is not None and getattr(member, "__doc__", None):
            return member.__doc__
    return ""


def test_every_exported_object_has_a_docstring_with_an_example():
    no_doc, no_example = [], []
    for qual, obj in _exported():
        doc = inspect.getdoc(obj) or ""
        if not doc:
            no_doc.append(qual)
        elif ">>>" not in doc:
            no_example.append(qual)
        if inspect.isclass(obj):
            for mn, member in vars(obj).items():
                if mn.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                if not _doc(obj, mn):
                    no_doc.append(f"{qual}.{mn}")
    assert not no_doc, f"no docstring: {no_doc}"
    assert not no_example, f"no example: {no_example}"
    assert len(_exported()) > 60
