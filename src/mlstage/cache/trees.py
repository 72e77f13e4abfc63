"""Dataset trees: a complete dataset as a read-only folder of hard links into ``objects/``.

A tree is built in ``datasets/.tmp-<fp>``, sealed (``mlstage.cache.seal``) and published by
one rename, so nobody ever sees half of one. Only the holder of the dataset's stage lock
builds, publishes, rebuilds or discards its tree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mlstage.cache import seal as seals
from mlstage.cache.files import CacheFiles, move_tree, rmtree
from mlstage.cache.index import CacheIndex
from mlstage.cache.objects import Objects
from mlstage.errors import CacheError
from mlstage.manifest import Manifest


class Trees:
    """Building, publishing, checking and removing the trees of the cache at ``files.root``."""

    def __init__(self, files: CacheFiles, index: CacheIndex, objects: Objects) -> None:
        self.files = files
        self.index = index
        self.objects = objects

    def build(self, manifest: Manifest, digests: Sequence[str], fingerprint: str) -> None:
        """Build the tree of ``manifest`` (``digests[i]`` holds entry i) in its temp folder."""
        tmp = str(self.files.building_path(fingerprint))
        rmtree(self.files.building_path(fingerprint))  # a killed stager's (we hold the lock)
        os.mkdir(tmp)
        made: set[str] = {tmp}
        link = self.objects.link
        for path, digest in zip(manifest.paths(), digests, strict=True):
            dest = f"{tmp}/{path}"
            parent = dest.rpartition("/")[0]
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                while parent not in made:  # record every folder makedirs may have created
                    made.add(parent)
                    parent = parent.rpartition("/")[0]
            try:
                link(digest, dest)
            except FileNotFoundError as exc:
                raise CacheError(
                    f"object {digest[:12]} for {path} vanished while building {fingerprint[:12]}",
                    hint="something outside mlstage deletes cache files; "
                    "run `mlstage cache verify --repair`",
                ) from exc
        for d in sorted(made, key=lambda p: p.count("/"), reverse=True):
            os.chmod(d, 0o555)

    def publish(self, fingerprint: str) -> None:
        """Move the built tree into place (replacing any tree there) and seal it: one
        ``lstat`` a file and a folder, the seal written beside the dataset's record."""
        final = self.files.dataset_path(fingerprint)
        self.discard(fingerprint)  # a crash's leftover, or the broken tree being replaced
        move_tree(self.files.building_path(fingerprint), final)
        seals.take(str(final)).save(self.files.seal_path(fingerprint))

    def discard(self, fingerprint: str) -> None:
        """Remove a dataset's tree that is not (or no longer) handed out: one a staging
        published but never indexed (it failed or died in between; its hard links would keep
        the objects' disk space after eviction frees their rows), a crash's leftover, or a
        damaged tree being rebuilt. Only with the dataset's stage lock held."""
        path = self.files.dataset_path(fingerprint)
        if os.path.lexists(path):
            trash = self.files.trash(f"ds-{fingerprint}")
            move_tree(path, trash)
            rmtree(trash)

    def intact(self, fingerprint: str) -> bool:
        """True when the dataset's tree is exactly as sealed (one ``lstat`` per file)."""
        sealed = seals.Seal.load(self.files.seal_path(fingerprint))
        return sealed is not None and seals.intact(
            str(self.files.dataset_path(fingerprint)), sealed
        )

    def reseal(self, fingerprint: str) -> None:
        """Seal the dataset's tree as it is now (its files were just verified); with the
        dataset's stage lock held."""
        seals.take(str(self.files.dataset_path(fingerprint))).save(
            self.files.seal_path(fingerprint)
        )
