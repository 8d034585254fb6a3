"""The kinds of training run: approximate joint training, or one step of the 4-step schedule.

    kind = RunKind.of("train-rpn", stage=2)    # RunKind.STAGE2_RPN
    kind.trainable                             # {"shared": False, "rpn": True, "detector": False}
    kind.value                                 # "stage2-rpn"

The values are the names a run stores: ``meta["stage"]`` of its checkpoints, the stage folders
of ``train-alt``. A run's ``config.yaml`` stores the command and ``--stage`` it came from.
"""

from __future__ import annotations

from enum import Enum

from frcnn_cli.errors import InputError


class RunKind(str, Enum):
    """What one run trains (Section 3.2): the shared convs, the RPN's own layers, the detector
    head's own layers. Steps 1 and 2 start from ImageNet weights and train the shared convs;
    steps 3 and 4 start from the step before and keep them frozen."""

    step: int | None  # the paper's step, 1 to 4
    trains: tuple[bool, bool, bool]

    #                   value              step  trains: shared  rpn    detector
    JOINT =            ("joint",           None,         True,   True,  True)
    STAGE1_RPN =       ("stage1-rpn",      1,            True,   True,  False)
    STAGE1_DETECTOR =  ("stage1-detector", 2,            True,   False, True)
    STAGE2_RPN =       ("stage2-rpn",      3,            False,  True,  False)
    STAGE2_DETECTOR =  ("stage2-detector", 4,            False,  False, True)

    def __new__(cls, value: str, step: int | None, shared: bool, rpn: bool, detector: bool):
        kind = str.__new__(cls, value)
        kind._value_ = value
        kind.step, kind.trains = step, (shared, rpn, detector)
        return kind

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, command: str, stage: int | None) -> RunKind:
        """The kind a command runs: ``train``, or ``train-rpn`` / ``train-detector --stage N``."""
        if command == "train":
            return cls.JOINT
        for kind in cls.steps():
            if kind.command == command and kind.stage == stage:
                return kind
        raise InputError(f"{command} --stage {stage} is not a training run "
                         "(train, or train-rpn / train-detector with --stage 1 or 2)")

    @classmethod
    def steps(cls) -> tuple[RunKind, ...]:
        """The four steps of the alternating schedule, in order."""
        return tuple(kind for kind in cls if kind.step is not None)

    @property
    def trainable(self) -> dict[str, bool]:
        """``model.set_trainable`` arguments: which parameter groups learn."""
        return dict(zip(("shared", "rpn", "detector"), self.trains, strict=True))

    @property
    def is_rpn(self) -> bool:
        """Steps 1 and 3: the RPN alone, on its anchors (no detector head, no proposals)."""
        return self.step is not None and not self.trains[2]

    @property
    def is_detector(self) -> bool:
        """Steps 2 and 4: the Fast R-CNN head on fixed proposals (the RPN not run)."""
        return self.step is not None and not self.trains[1]

    @property
    def stage(self) -> int | None:
        """``--stage``: 1 for steps 1 and 2, 2 for steps 3 and 4; None for joint training."""
        return None if self.step is None else (self.step + 1) // 2

    @property
    def command(self) -> str:
        """The command that trains this kind of run."""
        if self.is_rpn:
            return "train-rpn"
        return "train-detector" if self.is_detector else "train"

    @property
    def previous(self) -> RunKind | None:
        """The step whose model steps 3 and 4 start from (``--init``); None otherwise."""
        return RunKind.steps()[self.step - 2] if self.stage == 2 else None
