"""Techniques as passes over variants: each module declares its config, which variants it accepts (by
format and precision read from kfopt.json, never from names) and one `run` that writes new variants."""
