"""One argument style for every sub-command: Hydra-style ``key=value`` read by Hydra's own
override parser (lists as ``[a,b]``, quoting as on the main command line), ``--help`` on each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from madcluster_exp.errors import ExpectedError


class UsageError(ExpectedError, ValueError):
    """A command line the sub-command cannot read; the message shows its usage."""


@dataclass(frozen=True)
class Option:
    help: str
    kind: type = str  # str | int | float | bool | list
    default: Any = None
    required: bool = False


def _convert(key: str, raw: str, parsed: Any, opt: Option) -> Any:
    if opt.kind is str:
        return raw  # the text as typed: run ids such as 0123e4 must not become numbers
    if opt.kind is list:
        return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]
    if opt.kind is bool:
        if isinstance(parsed, bool):
            return parsed
        raise UsageError(f"{key}={raw!r}: expected true or false")
    try:
        return opt.kind(parsed)
    except (TypeError, ValueError):
        raise UsageError(f"{key}={raw!r}: expected a value of type {opt.kind.__name__}") from None


def usage_text(usage: str, options: Dict[str, Option]) -> str:
    width = max(len(k) for k in options)
    lines = ["usage:", usage.rstrip(), "", "options (key=value):"]
    for key, opt in options.items():
        extra = (
            " (required)"
            if opt.required
            else (f" (default: {opt.default})" if opt.default is not None else "")
        )
        lines.append(f"  {key:<{width}}  {opt.help}{extra}")
    return "\n".join(lines)


def parse(
    argv: Sequence[str], options: Dict[str, Option], usage: str, positional: Optional[str] = None
) -> Dict[str, Any]:
    """``key=value`` arguments (and at most one bare argument stored under ``positional``) as a
    dict with defaults filled in; ``-h``/``--help`` prints the usage and exits 0."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if any(a in ("-h", "--help") for a in argv):
        print(usage_text(usage, options))
        raise SystemExit(0)
    out: Dict[str, Any] = {k: o.default for k, o in options.items()}
    pairs: List[str] = []
    for arg in argv:
        if "=" in arg:
            pairs.append(arg)
        elif positional is not None and out.get(positional) is None:
            out[positional] = arg
        else:
            raise UsageError(f"unexpected argument {arg!r}\n\n{usage_text(usage, options)}")
    try:
        parsed = OverridesParser.create().parse_overrides(pairs)
    except OverrideParseException as exc:
        raise UsageError(f"{exc}\n\n{usage_text(usage, options)}") from None
    for override, text in zip(parsed, pairs):
        key = override.key_or_group
        if key not in options:
            raise UsageError(f"unknown option {key!r}; expected one of {', '.join(options)}")
        out[key] = _convert(key, text.split("=", 1)[1], override.value(), options[key])
    missing = [k for k, o in options.items() if o.required and out.get(k) is None]
    if missing:
        raise UsageError(
            f"missing {', '.join(f'{k}=' for k in missing)}\n\n{usage_text(usage, options)}"
        )
    return out
