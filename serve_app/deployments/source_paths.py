"""Source files named as a reader knows them: from the folder they were imported from.

``/stats``' census (await_census.py) and loop profile (loop_profile.py) both name code by file.
A file under ``/root/.pyenv/.../site-packages/ray/serve/_private/replica.py`` reads best as
``ray/serve/_private/replica.py``; the GPU machine installs with ``pip --target /tmp/site``, a
folder with no ``site-packages`` in its name, so the folders are ``sys.path``'s, not a pattern.
"""

from __future__ import annotations

import sys
import sysconfig

STDLIB = "stdlib"  # the standard library
IMPORTED = "imported"  # under another sys.path folder (site-packages, /tmp/site, the project)
OUTSIDE = "outside"  # under none: a script, <stdin>, a Cython source path


class SourcePaths:
    """``relative(path)`` against this process's ``sys.path`` as it was when made, cached per
    path (a census names thousands of frames from a few hundred files)."""

    def __init__(self) -> None:
        self.stdlib = sysconfig.get_paths()["stdlib"].rstrip("/")
        roots = {entry.rstrip("/") for entry in sys.path if entry and not entry.startswith(self.stdlib)}
        self.roots = sorted(roots, key=len, reverse=True)  # the deepest folder that holds a file wins
        self._known: dict[str, tuple[str, str]] = {}

    def relative(self, path: str) -> tuple[str, str]:
        """(``path`` from the folder it was imported from, STDLIB, IMPORTED or OUTSIDE). A path
        with ``-packages/`` or ``serve_app/`` is cut there even outside ``sys.path`` (an editable
        install imports this project through a finder, not a folder); otherwise an OUTSIDE path
        is returned whole."""
        known = self._known.get(path)
        if known is None:
            known = self._known[path] = self._relative(path)
        return known

    def _relative(self, path: str) -> tuple[str, str]:
        if path.startswith(self.stdlib + "/"):
            return path[len(self.stdlib) + 1 :], STDLIB
        for root in self.roots:
            if path.startswith(root + "/"):
                return path[len(root) + 1 :], IMPORTED
        if "-packages/" in path:
            return path.rsplit("-packages/", 1)[1], IMPORTED
        if "serve_app/" in path:
            return "serve_app/" + path.rsplit("serve_app/", 1)[1], IMPORTED
        return path, OUTSIDE
