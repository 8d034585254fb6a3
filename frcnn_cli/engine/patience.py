"""The best validation so far, and early stopping (``train.patience``).

Each validation's mAP is compared with the best before it. Only a higher one is progress: a
tie is not, or a run whose mAP has stopped moving (its learning rate run down) would never
stop. With ``train.patience`` P, the run ends after P validations in a row without progress,
and its ``model.pt`` is the best validation's weights (``best.pt``). The count is kept in
``last.pt``'s meta (:meth:`Patience.meta`), so a resumed run counts on where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Patience:
    """``patience``: validations without progress that end the run (None: never);
    ``best``: the best validation mAP (-1 before the first); ``best_iteration``: where it was
    reached; ``stale``: validations since then."""

    patience: int | None
    best: float = -1.0
    best_iteration: int | None = None
    stale: int = 0

    def observe(self, value: float, iteration: int) -> bool:
        """Count the validation of ``iteration`` that scored ``value``; True when it is the
        best so far (the first always is)."""
        if self.best < 0 or value > self.best:
            self.best, self.best_iteration, self.stale = value, iteration, 0
            return True
        self.stale += 1
        return False

    @property
    def stop_reason(self) -> str | None:
        """Why the run should stop now, or None while it should go on."""
        if self.patience is None or self.stale < self.patience:
            return None
        return (f"validation mAP has not improved for {self.stale} validations "
                f"(train.patience {self.patience}); the best, {self.best:.4f}, was at "
                f"iteration {self.best_iteration}")

    def meta(self) -> dict[str, Any]:
        """What ``last.pt`` keeps of it (``best_map`` as checkpoints always had)."""
        return {"best_map": self.best, "best_iteration": self.best_iteration,
                "stale_validations": self.stale}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], patience: int | None) -> Patience:
        """As :meth:`meta` kept it (a run from before patience existed counts from 0)."""
        best_iteration = meta.get("best_iteration")
        return cls(patience, float(meta.get("best_map", -1.0)),
                   None if best_iteration is None else int(best_iteration),
                   int(meta.get("stale_validations", 0)))
