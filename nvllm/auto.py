"""`auto`, for the families and switches that have it.

A family with an `auto` option (attention, forward) lets its components choose themselves: each
ranks the device types it is fit for (`auto_rank`, lowest first) and has a `check` that raises,
naming the reason, where it cannot run. `choose` takes the best-ranked one whose check passes and
says what it chose and why it passed over the others (metrics.json keeps that note).

An engine switch that is `auto|true|false` is held as `bool | None` (None: auto): `tristate`
reads it from YAML, the command line or Python."""
from collections.abc import Callable

from nvllm import registry
from nvllm.errors import ConfigError

AUTO = "auto"


def choose(family: str, device_type: str, check: Callable[[type], None], where: str,
           ruled_out: dict[str, str] | None = None) -> tuple[str, str]:
    """(the name `family=auto` takes here, the note saying so). `check(cls)` raises ConfigError
    (or ImportError for a missing package) where `cls` cannot run; `ruled_out` maps names the
    configuration excludes to the reason; `where` describes the run for the note."""
    ruled_out = ruled_out or {}
    ranked = sorted((cls.auto_rank[device_type], name, cls) for name in registry.names(family)
                    if device_type in (cls := registry.get(family, name)).auto_rank)
    passed_over = []
    for _, name, cls in ranked:
        try:
            if name in ruled_out:
                raise ConfigError(ruled_out[name])
            check(cls)
        except (ConfigError, ImportError) as e:
            passed_over.append(f"{name}: {str(e).splitlines()[0]}")
            continue
        note = f"{family}=auto chose {name} ({where})"
        if passed_over:
            note += "; passed over " + "; ".join(passed_over)
        return name, note
    raise ConfigError(f"{family}=auto found nothing that runs here ({where}): "
                      + ("; ".join(passed_over) or f"no {family} ranks {device_type} (auto_rank)"))


def tristate(key: str, value) -> bool | None:
    """An `auto|true|false` switch as None, True or False; anything else is refused naming `key`."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return {"auto": None, "true": True, "false": False}[value.lower()]
    raise ConfigError(f"{key}={value!r} is not allowed: use auto, true or false")
