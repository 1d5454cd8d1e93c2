"""Dataset command line.

    python -m madcluster_exp.data list
    python -m madcluster_exp.data download NAME [--data-dir datasets] [--mirror URL]
    python -m madcluster_exp.data prepare NAME --from PATH [--data-dir datasets]

NAME is SMD, MSL, SMAP or PSM. ``--mirror URL`` fetches <URL>/<NAME>/<file> instead of the
public source; ``--sources FILE`` reads another source description (tests use it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from madcluster_exp.data.download import SOURCES, download, load_sources, prepare_from, status
from madcluster_exp.data.series import DataError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m madcluster_exp.data",
        description="Fetch, verify and unpack benchmark datasets.",
    )
    ap.add_argument("--data-dir", type=Path, default=Path("datasets"))
    ap.add_argument("--sources", type=Path, default=SOURCES)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="which datasets are installed")
    d = sub.add_parser("download", help="download, verify and unpack a dataset")
    d.add_argument("name")
    d.add_argument("--mirror", default=None)
    p = sub.add_parser("prepare", help="verify and unpack files downloaded by hand")
    p.add_argument("name")
    p.add_argument("--from", dest="origin", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        sources = load_sources(args.sources)
        if args.command == "list":
            for name, state in status(args.data_dir, sources).items():
                print(f"{name:6} {state}")
        elif args.command == "download":
            download(args.name, args.data_dir, sources, args.mirror)
        else:
            prepare_from(args.name, args.origin, args.data_dir, sources)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
