"""``python -m steadyrun.packaging.unpack TAR``: unpack a package where it runs.

Unpacks ``TAR`` (named ``<sha256>.tar.gz``) once into the folder ``<sha256>`` beside
it, checking the hash, and prints that folder's path. A batch script runs it on the
node before the worker; several jobs may run it at once (the first one unpacks, the
others reuse its folder). Exit status 0, or 1 with the reason on stderr.
"""

from __future__ import annotations

import os
import sys

from steadyrun.packaging.base import SUFFIX, PackagingError, unpack


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or not os.path.basename(args[0]).endswith(SUFFIX):
        print("usage: python -m steadyrun.packaging.unpack DIR/<sha256>.tar.gz",
              file=sys.stderr)
        return 1
    sha = os.path.basename(args[0])[: -len(SUFFIX)]
    try:
        print(unpack(args[0], sha))
    except PackagingError as e:
        print(f"steadyrun.packaging.unpack: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
