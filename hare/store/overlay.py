"""A store that reads through to another: writes land in ``top``, reads fall back to ``base``.

``hare dedup FILE --against STORE`` deduplicates a file against a store's published index
without writing into that store: the file's features and index work go to a scratch folder
(``top``) and the store's ``index/`` is read through.
"""

from __future__ import annotations

from hare.store import KeyNotFound, ObjectInfo, ObjectStore


class OverlayStore:
    def __init__(self, top: ObjectStore, base: ObjectStore) -> None:
        self.top, self.base = top, base
        self.url = f"{top.url} over {base.url}"

    def put_bytes(self, key: str, data: bytes) -> str:
        return self.top.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.top.get_bytes(key)
        except KeyNotFound:
            return self.base.get_bytes(key)

    def exists(self, key: str) -> bool:
        return self.top.exists(key) or self.base.exists(key)

    def head(self, key: str) -> int | None:
        size = self.top.head(key)
        return size if size is not None else self.base.head(key)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(set(self.top.list(prefix)) | set(self.base.list(prefix)))

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        top = {o.key: o for o in self.top.list_info(prefix)}
        return sorted([*top.values(), *(o for o in self.base.list_info(prefix) if o.key not in top)],
                      key=lambda o: o.key)

    def folders(self, prefix: str) -> list[str]:
        return sorted(set(self.top.folders(prefix)) | set(self.base.folders(prefix)))

    def delete(self, key: str) -> None:
        self.top.delete(key)

    def uri(self, key: str) -> str:
        return self.top.uri(key) if self.top.exists(key) else self.base.uri(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return False if self.base.exists(key) else self.top.put_if_absent(key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.top.get_versioned(key)

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        return self.top.replace_if(key, data, version)
