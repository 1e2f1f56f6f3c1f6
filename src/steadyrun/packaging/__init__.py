"""Your code, where it runs: packagers, packages, and the reproducibility record.

A packager (:class:`GitArchivePackager`, :class:`PatternPackager`,
:class:`HybridPackager`) given to an executor (``packager=...``) makes a package of the
code once per experiment, at launch: a deterministic tar named by the sha256 of its
members, kept in the store's content-addressed cache (:mod:`.stored`). Every attempt of
every task of the experiment (retries, resumes, a background controller) uses that same
package. Each executor ships it its own way and unpacks it once per machine
(:meth:`Package.unpack`); the worker runs with the unpacked folder first on its import
path and as its working folder, so the packaged code runs, not what a cluster happens
to have installed.

Every experiment also gets a reproducibility record (:mod:`.record`): git state, the
uncommitted diff, the package hashes, Python, steadyrun and the installed
distributions, host, user and the resolved configs. ``steadyrun show ID`` prints it and
``steadyrun diff ID1 ID2`` compares two.
"""

from steadyrun.packaging.base import Package, Packager, PackagingError
from steadyrun.packaging.git import GitArchivePackager
from steadyrun.packaging.pattern import HybridPackager, PatternPackager

__all__ = ["GitArchivePackager", "HybridPackager", "Package", "Packager", "PackagingError",
           "PatternPackager"]
