"""The optimize stages' parameter rules, in one light module (no TensorFlow) that the stages and
kfopt.config both call, so `kfopt run --set ...` and a stage given bad values fail with the same words."""

from __future__ import annotations

from typing import Sequence

from kfopt.errors import ConfigError


def pruned_name(sparsity: float) -> str:
    return f"pruned_{int(round(sparsity * 100)):02d}"


def budget(accuracy_budget: float, min_agreement: float, fallback_max_attempts: int) -> None:
    if accuracy_budget < 0:
        raise ConfigError(f"accuracy_budget must be >= 0 percentage points, got {accuracy_budget}; "
                          "use 0 to allow no accuracy loss at all.")
    if not 0 <= min_agreement <= 1:
        raise ConfigError(f"min_agreement must be in [0, 1], got {min_agreement}.")
    if fallback_max_attempts < 0:
        raise ConfigError(f"fallback_max_attempts must be >= 0 (0 = no fallback), got {fallback_max_attempts}.")


def prune(sparsities: list[float], epochs: int) -> None:
    if not sparsities:
        raise ConfigError("prune_sparsities is empty; give at least one target sparsity, e.g. [0.5, 0.8].")
    for s in sparsities:
        if not 0 < s < 1:
            raise ConfigError(f"Pruning sparsity must be in (0, 1) (the fraction of weights set to zero), got {s}.")
    names = [pruned_name(s) for s in sparsities]
    if len(set(names)) != len(names):
        raise ConfigError(f"prune_sparsities {sparsities} name the same variant twice ({', '.join(names)}); "
                          "give sparsities that differ by at least 0.01.")
    if epochs < 2:
        raise ConfigError(f"prune_epochs must be at least 2 (pruning must end before fine-tuning does), got {epochs}.")


def student_widths(student_width: float | Sequence[float]) -> tuple[float, ...]:
    """The student-width search space, widest (safest) first; one number (the old form) is a one-point space."""
    widths = [student_width] if isinstance(student_width, (int, float)) else list(student_width)
    if not widths:
        raise ConfigError("student_width is empty; give the widths to search, e.g. [0.75, 0.5, 0.25], "
                          "or one width, e.g. [0.5].")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, (int, float)):
            raise ConfigError(f"student_width entries must be numbers in (0, 1), got {width!r}.")
        if width >= 1:
            raise ConfigError(f"student_width {width} makes the student larger than the teacher (or as large); "
                              "use widths in (0, 1), e.g. 0.5 for half the filters/units.")
        if not width > 0:
            raise ConfigError(f"student_width must be in (0, 1), got {width}.")
    if len(set(widths)) != len(widths):
        raise ConfigError(f"student_width {widths} names a width twice; give each width to search once.")
    return tuple(sorted(widths, reverse=True))


def distill(student_width: float | Sequence[float], temperature: float, alpha: float, epochs: int,
            patience: int) -> tuple[float, ...]:
    """The distill settings checked; returns the width search space, widest first."""
    widths = student_widths(student_width)
    if temperature <= 0:
        raise ConfigError(f"distill_temperature must be positive, got {temperature}.")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"distill_alpha (the weight of the hard-label loss) must be in [0, 1], got {alpha}.")
    if epochs < 1:
        raise ConfigError(f"distill_epochs must be at least 1, got {epochs}.")
    if patience < 1:
        raise ConfigError(f"distill_patience must be at least 1 (epochs without a lower validation loss "
                          f"before a student's training stops), got {patience}.")
    return widths
