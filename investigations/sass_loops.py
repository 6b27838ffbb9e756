"""The loops of a kernel's SASS (``cuobjdump -sass``), for the investigations that count what
a loop issues: ``cuda_k_loop_instructions.py``, ``triton_alignment.py``,
``triton_tf32x3_forms.py``, ``triton_kmajor_inputs.py``."""

from __future__ import annotations

import re
from collections import Counter

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")  # (address, text)
BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def loops(sass: str) -> list[list[str]]:
    """The instructions of each loop, in the order of their branches: from a backward
    branch's target to the branch."""
    code = [(int(address, 16), text) for address, text in INSTRUCTION.findall(sass)]
    at = {address: i for i, (address, _) in enumerate(code)}
    found = []
    for i, (address, text) in enumerate(code):
        branch = BRANCH.search(text)
        target = int(branch.group(1), 16) if branch else address
        if target < address and target in at:
            found.append([t for _, t in code[at[target] : i + 1]])
    return found


def opcodes(instructions: list[str]) -> Counter:
    """Each opcode's count (predicates and modifiers dropped: ``@!P0 LDS.64`` is LDS)."""
    return Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in instructions)
