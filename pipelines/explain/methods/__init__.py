"""The built-in explanation methods, one per file; importing this package registers each.

Files are imported in name order, so the registry's order (and the ``choose from`` list of its
errors) does not depend on the file system. The libraries a method computes with (Captum; zennit,
which brings torchvision) are imported when it first runs, not here: the server and a precompute
that never use them start about 3 s of a core sooner (``benchmarks/bench_first_page.py``).
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    importlib.import_module(f"{__name__}.{_module.name}")
