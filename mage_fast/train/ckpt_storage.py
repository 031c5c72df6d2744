"""Who writes and who checks which file of a checkpoint folder, on shared or node-local disks.

Shared storage (the default): one folder that every rank sees; rank 0 writes `mage_meta.json`
and one marker, `COMMITTED`, listing every rank's files. Node-local storage (DeepSpeed's
`"checkpoint": {"use_node_local_storage": true}`): each machine's disk holds only its own ranks'
files, so local rank 0 of every node writes `mage_meta.json` and a marker of its own,
`COMMITTED.rank<R>` (R: the node's first global rank), listing the files of the node's ranks.
The markers have distinct names, so the folders of all nodes can be copied into one folder and
resumed from there (ZeRO-3: every file but the meta file is one rank's).

A marker records the ranks it covers (`ranks`) and the world size of the save (`world`); the
shared `COMMITTED` of older versions records neither and covers every rank. A file named
`zero_pp_rank_R_...` belongs to rank R; the others (meta file, ZeRO-2's model states, the
recovery script) are checked by the rank that writes the marker.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from mage_fast.train.dist import all_gather_objects

MARKER = "COMMITTED"
_NODE_MARKER = re.compile(r"^COMMITTED\.rank(\d+)$")
_OWNER = re.compile(r"zero_pp_rank_(\d+)_")


@dataclass(frozen=True)
class Storage:
    """This rank's place: `node_ranks` is None on shared storage, else the global ranks of its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    node_ranks: tuple[int, ...] | None = None

    @property
    def node_local(self) -> bool:
        return self.node_ranks is not None

    @property
    def writer(self) -> bool:
        """This rank writes the meta file and the marker of its folder (and prunes it)."""
        return self.local_rank == 0 if self.node_local else self.rank == 0

    @property
    def marker(self) -> str:
        return f"{MARKER}.rank{min(self.node_ranks)}" if self.node_local else MARKER

    def ranks_to_check(self, saved_world: int) -> list[int]:
        """Ranks of the save whose files this rank verifies: its own; on shared storage after a
        change of world size, every saved rank R with R % world == rank."""
        if self.node_local:
            return [self.rank]
        return [r for r in range(saved_world) if r % self.world == self.rank]


def create(rank: int, world: int, local_rank: int, node_local: bool) -> Storage:
    """This rank's Storage (call on every rank: node-local storage gathers every rank's node).
    A node is the ranks with the same first rank, rank - local_rank (the deepspeed launcher and
    torchrun number a machine's ranks consecutively)."""
    if not node_local:
        return Storage(rank, world, local_rank)
    first = rank - local_rank
    starts = all_gather_objects(first, world)
    return Storage(rank, world, local_rank, tuple(r for r, s in enumerate(starts) if s == first))


def file_owner(name: str) -> int | None:
    """The saved rank a checkpoint file belongs to, or None for a file of the marker's writer."""
    m = _OWNER.search(name)
    return int(m.group(1)) if m else None


def is_marker(name: str) -> bool:
    return name == MARKER or bool(_NODE_MARKER.match(name))


def read_markers(folder: str) -> dict[str, dict]:
    """{marker file name: its content} of a checkpoint folder; unreadable markers count as absent."""
    found = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not is_marker(name):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                found[name] = json.load(f)
        except (OSError, ValueError):
            continue
    return found


def covered(marker: dict, saved_world: int) -> list[int]:
    """The saved ranks whose files a marker lists."""
    return list(marker.get("ranks", range(saved_world)))


def mine(name: str, rank: int, storage: Storage) -> bool:
    """Whether `storage`'s rank checks file `name` listed for saved rank `rank`."""
    owner = file_owner(name)
    return owner == rank if owner is not None else storage.writer


def has_marker(folder: str) -> bool:
    return os.path.isdir(folder) and any(is_marker(n) for n in os.listdir(folder))
