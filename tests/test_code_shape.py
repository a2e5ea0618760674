"""The package keeps the shape its rules ask for (tools/code_shape.py): short functions, no
import cycles, no imports of another module's underscored names, ``__all__`` everywhere, and
the eager accelerator imported by its one dispatch point only."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "code_shape.py"


def _tool():
    spec = importlib.util.spec_from_file_location("code_shape", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["code_shape"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fprune_breaks_no_shape_rule():
    tool = _tool()
    assert tool.problems(tool.measure()) == []


def test_the_shape_check_sees_a_cycle_a_long_function_and_an_underscored_import(tmp_path):
    """The rules can fail: a small package that breaks each of them is caught."""
    package = tmp_path / "fprune"
    package.mkdir()
    (package / "__init__.py").write_text("__all__ = []\n")
    (package / "a.py").write_text(
        '__all__ = ["f"]\n\n\ndef f():\n    from fprune.b import _g\n\n    return _g()\n'
    )
    long_body = "".join(f"    x{i} = {i}\n" for i in range(90))
    (package / "b.py").write_text(
        'from fprune import a\n\n__all__ = ["h"]\n\n\n'
        f"def _g():\n    return a\n\n\ndef h():\n{long_body}"
    )
    (package / "c.py").write_text("import fprune._eager\n\nX = 1\n")
    (package / "_eager.py").write_text("__all__ = []\n")
    broken = _tool().problems(_tool().measure(package))
    assert any(line.startswith("import cycle: fprune.a <-> fprune.b") for line in broken)
    assert any("function of 91 lines" in line and "fprune.b" in line for line in broken)
    assert "underscored import: fprune.a: from fprune.b import _g" in broken
    assert "module without __all__: fprune.c" in broken
    assert "imports the accelerator (only fprune.masking may): fprune.c" in broken
