"""Print pip constraints that keep the base image's Python packages (Ray and its deps) as they are.

Used by infra/docker/Dockerfile (``pip install -c``). Every package installed in the base image is
pinned to its installed version, which is the version Ray's compiled lock file
(``/home/ray/requirements_compiled.txt``, when the image has one) resolved it to; a disagreement
is reported on stderr. The lock file is not passed to ``pip -c`` whole: it is Ray's CI lock and also
pins packages the image does not ship (torch, mlflow, optuna...), possibly below cktf's floors
(``mlflow>=3``) or at a torch build other than the CUDA one wanted here; those are left free.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(sys.argv[1] if len(sys.argv) > 1 else "/home/ray/requirements_compiled.txt")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


installed = {canon(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
locked: dict[str, str] = {}
if LOCK.is_file():
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if m:
            locked[canon(m.group(1))] = m.group(3)

for name in sorted(installed):
    if name in {"pip", "setuptools", "wheel"}:
        continue
    # the installed version wins when the lock file disagrees: it is what Ray runs on
    version = installed[name]
    if locked.get(name) not in (None, version):
        print(f"# {name}: lock file says {locked[name]}, image has {version}", file=sys.stderr)
    print(f"{name}=={version}")
