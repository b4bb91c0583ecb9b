"""The hooks a plugin may implement, one per component family: `register_<family>(register)`,
made from nvllm.registry.FAMILIES (a new family is an entry there, not a function here). Hooks only
register: each receives the family's `register` and calls it with component classes, each carrying
a string `name` and a `Config` dataclass."""
import pluggy

from nvllm.registry import FAMILIES, Family

hookspec = pluggy.HookspecMarker("nvllm")
hookimpl = pluggy.HookimplMarker("nvllm")


def spec(family: Family):
    """The hookspec of `family`: `family.hook(register)`, with its one-line docstring."""
    def hook(register):
        pass

    hook.__name__ = hook.__qualname__ = family.hook
    hook.__doc__ = f"Register {family.what}: subclasses of ``{family.base}``."
    return hookspec(hook)


globals().update({family.hook: spec(family) for family in FAMILIES.values()})
