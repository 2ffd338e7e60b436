"""The optimize stages' parameter rules, in one light module (no TensorFlow) that the stages and
kfopt.config both call, so `kfopt run --set ...` and a stage given bad values fail with the same words."""

from __future__ import annotations

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


def distill(student_width: float, temperature: float, alpha: float, epochs: int) -> None:
    if student_width >= 1:
        raise ConfigError(f"student_width {student_width} makes the student larger than the teacher (or as large); "
                          "use a width in (0, 1), e.g. 0.5 for half the filters/units.")
    if student_width <= 0:
        raise ConfigError(f"student_width must be in (0, 1), got {student_width}.")
    if temperature <= 0:
        raise ConfigError(f"distill_temperature must be positive, got {temperature}.")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"distill_alpha (the weight of the hard-label loss) must be in [0, 1], got {alpha}.")
    if epochs < 1:
        raise ConfigError(f"distill_epochs must be at least 1, got {epochs}.")
