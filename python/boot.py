# Stage two of the worker bootstrap, sent by the master over the control pipe (fd 5).
#
# Why: the worker code ships inside the hurricane binary, and a container's root filesystem is often
# read-only, so nothing is written to disk. The master starts `python -c STAGE_ONE`, where stage one
# reads this file from fd 5 and execs it. This file then reads the embedded `hurricane` package and
# the worker's config from the same pipe, installs a finder for the package (first on sys.meta_path,
# so the binary's own copy wins over any installed one) and hands over to hurricane.worker.main.
#
# Runs with the globals of __main__; `f` is the buffered control pipe opened by stage one.
import importlib.abc
import importlib.util
import json
import sys


class _EmbeddedPackage(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    def __init__(self, sources):
        self._sources = sources  # name -> (is_package, source text)

    def _origin(self, name):
        is_pkg = self._sources[name][0]
        return "<hurricane>/" + name.replace(".", "/") + ("/__init__.py" if is_pkg else ".py")

    def find_spec(self, name, path=None, target=None):
        if name not in self._sources:
            return None
        return importlib.util.spec_from_loader(
            name, self, origin=self._origin(name), is_package=self._sources[name][0]
        )

    def is_package(self, name):
        return self._sources[name][0]

    def get_source(self, name):
        return self._sources[name][1]

    def get_code(self, name):
        return compile(self._sources[name][1], self._origin(name), "exec", dont_inherit=True)


def _read_modules(pipe):
    sources = {}
    for _ in range(int(pipe.readline())):
        name, is_pkg, size = pipe.readline().split()
        sources[name.decode()] = (is_pkg == b"1", pipe.read(int(size)).decode("utf-8"))
    return sources


_finder = _EmbeddedPackage(_read_modules(f))
sys.meta_path.insert(0, _finder)
_config = json.loads(f.readline())
del _finder, _read_modules, _EmbeddedPackage

import hurricane.worker  # noqa: E402

hurricane.worker.main(_config, f)
