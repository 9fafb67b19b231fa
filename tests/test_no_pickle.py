"""House rule: nothing in src/ unpickles, loads a class named by a message, or torch.loads without weights_only."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "confide"
FORBIDDEN = re.compile(
    r"^\s*(import|from)\s+(pickle|cloudpickle|dill|marshal|shelve)\b"
    r"|allow_pickle\s*=\s*True"
    r"|torch\.load\((?![^)]*weights_only\s*=\s*True)"
    r"|(?<![.\w])(eval|exec)\(|importlib\.import_module\(",
    re.MULTILINE,
)


# The one dynamic import: a job's own task (task.name python). Its module is looked for in one folder only, the
# job file's or, at a deployed site, the operator's --code folder, and a site imports only the entry its own copy of
# the job names (deploy.site_code): a message never picks the code. tests/workloads/test_own_task.py holds it to that.
ENTRY_LOADER = ("workloads/entry.py", "importlib.import_module(")


def test_no_module_in_src_can_unpickle() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for match in FORBIDDEN.finditer(path.read_text()):
            line = path.read_text()[: match.start()].count("\n") + 1
            if (str(path.relative_to(SRC)), match.group(0).strip()) == ENTRY_LOADER:
                continue
            offenders.append(f"{path.relative_to(SRC)}:{line}: {match.group(0).strip()}")

    assert list(SRC.rglob("*.py")), "no sources found"
    assert offenders == []
