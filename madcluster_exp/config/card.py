"""The set-up card: every training and evaluation setting of a configuration beside the MADCluster
official code's value, each difference marked.

    python -m madcluster_exp.config.card setup=paper backbone=usad dataset=SMD
    python -m madcluster_exp.config.card experiment=paper_table setup=paper_honest
    python -m madcluster_exp.config.card setup=paper --differences    # only what differs

The arguments are the run's config overrides, composed and checked as ``python -m
madcluster_exp`` composes them (nothing runs). Without ``backbone=`` the card has one section per
backbone of ``experiment=paper_table``. The official values are data, in one place:
``madcluster_exp/data/official_setup.csv`` (key, backbone or ``*``, value in YAML, where the
official code says so). A setting the official code does not fix (e.g. a backbone's
hyper-parameters other than DCdetector's: the paper names none) shows ``—`` and is no difference.
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from madcluster_exp.config.settings import Settings, load
from madcluster_exp.config.store import CONFIG_DIR, compose, normalise_argv

OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "official_setup.csv"
OFFICIAL_COLUMNS = ["key", "backbone", "official", "source"]
#: The config groups (and root keys) whose settings train or evaluate a model.
GROUPS = ("dataset", "backbone", "madcluster", "train", "scoring", "threshold", "metrics")
ROOT_KEYS = ("pipeline", "protocol", "seed", "device", "deterministic")
#: Settings that say where records go or how progress shows, not how a model trains or scores.
NOT_SETTINGS = frozenset(
    {
        "dataset.path",
        "train.progress",
        "train.checkpoint",
        "train.resume",
        "train.num_threads",
        "metrics.save_scores",
    }
)
DIFFERS = "≠"


class OfficialDataError(ValueError):
    """official_setup.csv does not have the expected shape; the message names the row."""


@dataclass(frozen=True)
class Official:
    value: Any
    source: str


@dataclass(frozen=True)
class Row:
    key: str
    #: The value the run uses (the protocol's threshold under protocol=reference).
    value: Any
    official: Optional[Official]
    #: Why the setting has no effect in this configuration ("" when it has one).
    unused: str = ""
    #: Where the value comes from when not from the key itself.
    note: str = ""

    @property
    def differs(self) -> bool:
        return (
            not self.unused
            and self.official is not None
            and not same(self.value, self.official.value)
        )


def load_official(path: Path = OFFICIAL) -> Dict[str, Dict[str, Official]]:
    """backbone (or ``*``) -> key -> official value, checked: the columns, one row per (key,
    backbone), every value valid YAML."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    reader = csv.reader(lines)
    header = next(reader)
    if header != OFFICIAL_COLUMNS:
        raise OfficialDataError(f"{path}: columns {header}; expected {OFFICIAL_COLUMNS}")
    out: Dict[str, Dict[str, Official]] = {}
    for i, row in enumerate(reader, start=1):
        if len(row) != len(OFFICIAL_COLUMNS):
            raise OfficialDataError(
                f"{path}: data row {i} has {len(row)} fields; expected {len(OFFICIAL_COLUMNS)}"
            )
        key, backbone, text, source = row
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise OfficialDataError(
                f"{path}: data row {i} ({key}): {text!r} is not YAML: {exc}"
            ) from None
        table = out.setdefault(backbone, {})
        if key in table:
            raise OfficialDataError(f"{path}: data row {i}: {key} for {backbone} given twice")
        table[key] = Official(value, source)
    return out


def same(a: Any, b: Any) -> bool:
    """Equal as settings: numbers to 1e-9 relative (1e-05 and 1.0e-05), sequences item by item,
    closed choices by their text."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return str(a) == str(b)


def _is_setting(key: str) -> bool:
    group = key.split(".", 1)[0]
    if "." not in key:
        return key in ROOT_KEYS
    return group in GROUPS and key not in NOT_SETTINGS


def _unused(key: str, settings: Settings) -> str:
    """Why ``key`` has no effect in this configuration ("" when it has one)."""
    cfg = settings.cfg
    if key.startswith("threshold.") and cfg.protocol == "reference":
        return "protocol=reference thresholds at the best F1 on test labels"
    if key == "dataset.val_fraction" and cfg.dataset.validation == "test":
        return "dataset.validation=test trains on all of each training series"
    if not cfg.madcluster.enabled and (
        (key.startswith("madcluster.") and key != "madcluster.enabled") or key == "scoring.combine"
    ):
        return "MADCluster is off"
    return ""


def card_rows(settings: Settings, official: Optional[Dict[str, Dict[str, Official]]] = None):
    """One :class:`Row` per training or evaluation setting of ``settings``, with the official
    value for its backbone where the official code fixes one. Under protocol=reference the
    threshold the run uses is the protocol's (the test-label oracle), whatever threshold.kind
    says; a setting without effect here is shown as unused and is no difference."""
    official = load_official() if official is None else official
    backbone = settings.cfg.backbone.name
    table = {**official.get("*", {}), **official.get(backbone, {})}
    keys = [k for k in settings.params if _is_setting(k)]
    order = {g: i for i, g in enumerate(("",) + GROUPS)}
    keys.sort(key=lambda k: (order.get(k.split(".", 1)[0] if "." in k else "", 0), k))
    rows = []
    for k in keys:
        value, note, unused = settings.params[k], "", _unused(k, settings)
        if k == "threshold.kind" and settings.cfg.protocol == "reference":
            value, note, unused = "oracle", "protocol=reference's", ""
        rows.append(Row(k, value, table.get(k), unused, note))
    return rows


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def render(title: str, rows: Sequence[Row], differences_only: bool = False) -> str:
    """A markdown section: the settings table and a line naming the differences."""
    diff = [r for r in rows if r.differs]
    lines = [
        f"## {title}",
        "",
        f"{len(diff)} of {sum(r.official is not None for r in rows)} settings with an official "
        f"value differ from it ({DIFFERS})"
        + (": " + ", ".join(r.key for r in diff) if diff else "")
        + ".",
    ]
    if differences_only and not diff:
        return "\n".join(lines)
    lines += [
        "",
        "| setting | this run | official | | official source |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if differences_only and not r.differs:
            continue
        off = "—" if r.official is None else _text(r.official.value)
        source = "" if r.official is None else r.official.source
        mark = DIFFERS if r.differs else ""
        value = _text(r.value) + (f" ({r.note})" if r.note else "")
        if r.unused:
            value += f" (unused: {r.unused})"
        lines.append(f"| `{r.key}` | {value} | {off} | {mark} | {source} |")
    return "\n".join(lines)


def paper_backbones() -> List[str]:
    """The backbone options ``experiment=paper_table`` sweeps, as its file lists them."""
    exp = yaml.safe_load((Path(CONFIG_DIR) / "experiment" / "paper_table.yaml").read_text())
    return exp["hydra"]["sweeper"]["params"]["backbone"].split(",")


def cards(overrides: Sequence[str], differences_only: bool = False) -> str:
    """The card of a command line's overrides: one section per backbone (``backbone=`` given:
    that one; else every backbone of experiment=paper_table)."""
    overrides = normalise_argv(list(overrides))
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == "backbone"]
    choices = [None] if given else paper_backbones()
    official = load_official()
    shown = " ".join(overrides) or "(defaults)"
    out = [f"# Set-up card: {shown}", "", f"Official values: {OFFICIAL.name} (commit 59dc097)."]
    for choice in choices:
        extra = [] if choice is None else [f"backbone={choice}"]
        settings = load(compose([*overrides, *extra]), warn=False)
        option = choice or given[-1].split("=", 1)[1]
        title = (
            option
            if option == settings.cfg.backbone.name
            else (f"{option} ({settings.cfg.backbone.name})")
        )
        out += ["", render(title, card_rows(settings, official), differences_only)]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return 0
    differences_only = "--differences" in argv
    overrides = [a for a in argv if a != "--differences"]
    unknown = [a for a in overrides if a.startswith("-")]
    if unknown:
        print(f"unknown option {unknown[0]}; expected --differences or --help", file=sys.stderr)
        return 2
    print(cards(overrides, differences_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
