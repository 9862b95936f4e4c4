"""Label sets as token tries, and the logits mask that keeps decoding on them.

Each label's verbalizer is tokenized once into a path; where one label's path
is a prefix of another's (`1` and `10`), the shorter path ends with the
end-of-answer token so the two stay distinguishable. A model constrained by
`mask_logits` can only ever produce a path of the trie. Pure Python over token
ids: testable without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mtserve.errors import ValidationError


@dataclass(frozen=True)
class LabelTrie:
    names: tuple[str, ...]
    paths: tuple[tuple[int, ...], ...]
    end_id: int

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        verbalizers: Sequence[str],
        encode: Callable[[str], Sequence[int]],
        end_id: int,
        where: str = "labels",
    ) -> LabelTrie:
        raw = [tuple(encode(v)) for v in verbalizers]
        for i, path in enumerate(raw):
            if not path:
                raise ValidationError(f"{where}[{i}].verbalizer", "tokenizes to nothing", verbalizers[i])
        seen: dict[tuple[int, ...], int] = {}
        for i, path in enumerate(raw):
            if path in seen:
                j = seen[path]
                raise ValidationError(
                    f"{where}[{i}].verbalizer",
                    f"tokenizes to the same ids as labels[{j}] ({verbalizers[j]!r}), so the two cannot be told apart",
                    verbalizers[i],
                )
            seen[path] = i
        paths = []
        for path in raw:
            is_prefix = any(other != path and other[: len(path)] == path for other in raw)
            paths.append(path + (end_id,) if is_prefix else path)
        return cls(names=tuple(names), paths=tuple(paths), end_id=end_id)

    @property
    def single_token(self) -> bool:
        """Every label is one distinct token: the prompt's last logits decide."""
        return all(len(p) == 1 for p in self.paths)

    def allowed_next(self, prefix: Sequence[int]) -> set[int]:
        """Tokens that continue some label path after `prefix` (empty when a path is complete)."""
        n = len(prefix)
        prefix = tuple(prefix)
        return {p[n] for p in self.paths if len(p) > n and p[:n] == prefix}

    def complete(self, prefix: Sequence[int]) -> str | None:
        """The label whose whole path is `prefix`, if any."""
        prefix = tuple(prefix)
        for name, path in zip(self.names, self.paths):
            if path == prefix:
                return name
        return None


def mask_logits(logits: torch.Tensor, allowed: set[int] | Sequence[int]) -> torch.Tensor:
    """Logits of one position with every token outside `allowed` set to -inf."""
    mask = torch.full_like(logits, -math.inf)
    index = torch.tensor(sorted(allowed), dtype=torch.long, device=logits.device)
    mask[..., index] = 0.0
    return logits + mask
