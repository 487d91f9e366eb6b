"""The registries of datasets and models: a name → spec mapping that refuses a second spec under one
name and answers a miss with the valid names."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from atomdd.errors import unknown_name


class _Named(Protocol):
    name: str


S = TypeVar("S", bound=_Named)


class Registry(dict[str, S], Generic[S]):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, spec: S) -> S:
        if spec.name in self:
            raise ValueError(f"{self.kind} {spec.name!r} registered twice")
        self[spec.name] = spec
        return spec

    def get_spec(self, name: str) -> S:
        try:
            return self[name]
        except KeyError:
            raise unknown_name(self.kind, name, list(self)) from None
