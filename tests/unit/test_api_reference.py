"""The API reference (pdoc, built in CI by .ci/run): it builds without a warning, and
every public name, and every public method of a public class, has a docstring."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import pdoc
import pdoc.doc

import natstream
import natstream.server

MODULES = (natstream, natstream.server)


def test_the_reference_builds_without_a_warning(tmp_path: Path) -> None:
    pdoc.render.configure(docformat="google")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*(m.__name__ for m in MODULES), output_directory=tmp_path)
    assert [str(w.message) for w in caught] == []
    page = (tmp_path / "natstream.html").read_text()
    for name in natstream.__all__:
        assert f'id="{name}"' in page, name


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for module in MODULES:
        doc = pdoc.doc.Module(module)
        names = getattr(module, "__all__", [])
        for name in names:
            member = doc.get(name)
            if member is None or not member.docstring.strip():
                missing.append(f"{module.__name__}.{name}")
                continue
            if isinstance(member, pdoc.doc.Class):
                missing.extend(
                    m.fullname
                    for m in member.own_members
                    if isinstance(m, pdoc.doc.Function)
                    and not m.name.startswith("_")
                    and not m.docstring.strip()
                    and inspect.getmodule(m.obj) is not None
                    and inspect.getmodule(m.obj).__name__.startswith("natstream")
                )
    assert missing == []
