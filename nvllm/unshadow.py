"""`python -m nvllm.run` (serve, tools ...) from the directory that holds a clone named `nvllm`, as
docs/plugins.md lays a plugin out beside the clone: Python puts that directory first on sys.path,
and the clone (no __init__.py at its root) becomes a namespace package `nvllm` that hides the
installed one, whose editable finder Python asks only after its own path search. The entry point
module itself is still found (the clone's root has no run.py), so it calls `unshadow()` before
importing anything else of nvllm: the real package replaces the namespace one, with one line on
stderr saying why, since the user's own `import nvllm` from that directory would still fail. This
module imports nothing of nvllm's."""
import importlib.util
import sys
from pathlib import Path


def unshadow() -> None:
    package = sys.modules.get("nvllm")
    if package is None or getattr(package, "__file__", None) is not None:
        return  # the real package: nothing shadows it
    real = Path(__file__).resolve().parent
    shadow = next(iter(getattr(package, "__path__", [])), "a directory named nvllm")
    print(f"nvllm: {shadow} hides the installed nvllm package from Python started in {Path.cwd()}; nvllm's "
          f"commands use {real}, but `import nvllm` in your own code run here fails (run it from another directory)",
          file=sys.stderr)
    loaded = {name: module for name, module in sys.modules.items() if name.startswith("nvllm.")}
    for name, module in loaded.items():  # found under the shadow (nvllm.plugins -> ./nvllm/plugins): forget them
        if not str(getattr(module, "__file__", "") or "").startswith(str(real)) and name != __name__:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location("nvllm", real / "__init__.py", submodule_search_locations=[str(real)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["nvllm"] = module
    spec.loader.exec_module(module)
