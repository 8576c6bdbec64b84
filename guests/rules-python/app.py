"""The reference rule set (guests/conformance/RULES.md) in Python, as a Tessera rules guest.

Built by `just guests` with componentize-py (pinned in requirements.txt):

    componentize-py -d wit -w rules componentize app -p guests/rules-python -o rules-python.wasm

`wit_world` is generated from wit/tessera.wit at build time; nothing generated is committed.
"""

import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

# RULES.md: digits with an optional fraction, nothing else, so every language parses alike.
CONFIDENCE = re.compile(r"[0-9]+(\.[0-9]*)?")


def confidence(key: str, value: str) -> float:
    if CONFIDENCE.fullmatch(value):
        parsed = float(value)
        if 0.0 <= parsed <= 1.0:
            return parsed
    raise Err(types.Error_Internal(f'config key {key}: "{value}" is not a confidence in [0, 1]'))


def items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Rules:
    def __init__(self, config: list[tuple[str, str]]):
        self.categories: dict[str, str] = {}
        self.default_category = "uncategorized"
        self.min_confidence = 0.5
        self.category_min: dict[str, float] = {}
        self.review: list[str] = []
        self.tenant_deny: dict[str, list[str]] = {}
        self.tenant_min: dict[str, float] = {}
        for key, value in config:
            tenant, _, setting = key.removeprefix("tenant.").rpartition(".")
            if key.startswith("category."):
                self.categories[key.removeprefix("category.")] = value
            elif key == "default-category":
                self.default_category = value
            elif key == "min-confidence":
                self.min_confidence = confidence(key, value)
            elif key.startswith("min-confidence."):
                self.category_min[key.removeprefix("min-confidence.")] = confidence(key, value)
            elif key == "review":
                self.review = items(value)
            elif key.startswith("tenant.") and tenant and setting == "deny":
                self.tenant_deny[tenant] = items(value)
            elif key.startswith("tenant.") and tenant and setting == "min-confidence":
                self.tenant_min[tenant] = confidence(key, value)
            else:
                raise Err(types.Error_Internal(f"config key {key}: unknown (see RULES.md)"))

    def decide(self, preds: list[types.Prediction], meta: list[tuple[str, str]]) -> types.Decision:
        if not preds:
            raise Err(types.Error_InvalidInput("no predictions"))
        label, score = preds[0].label, preds[0].score
        category = self.categories.get(label, self.default_category)
        tenant = next((v for k, v in meta if k == "x-tenant"), "")
        review = label in self.review
        tags = (["review"] if review else []) + ([f"tenant:{tenant}"] if tenant else [])
        if tenant and category in self.tenant_deny.get(tenant, []):
            reason = f'category "{category}" is not accepted for tenant "{tenant}"'
            return types.Decision(False, reason, category, tags)
        threshold = self.tenant_min.get(tenant) if tenant in self.tenant_min else None
        if threshold is None:
            threshold = self.category_min.get(category, self.min_confidence)
        if score < threshold:
            reason = f'confidence {score:.2f} for "{label}" is below the {category} threshold {threshold:.2f}'
            return types.Decision(False, reason, category, tags)
        reason = f'"{label}" is {category} at {score:.2f}' + ("; review needed" if review else "")
        return types.Decision(True, reason, category, tags)


class WitWorld(wit_world.WitWorld):
    def decide(
        self, preds: list[types.Prediction], meta: list[tuple[str, str]], config: list[tuple[str, str]]
    ) -> types.Decision:
        return Rules(config).decide(preds, meta)


def _warm_up() -> None:
    """Runs the rules a few times while componentize-py pre-initializes the component (it
    snapshots the interpreter after importing this module): CPython specializes the bytecode
    of what runs (its adaptive interpreter), and the snapshot keeps it, so a fresh instance
    (Tessera makes one per request) does not redo that inside its call: 0.64 -> 0.48 ms served
    (docs/PERFORMANCE.md). It decides nothing that matters and leaves no state behind."""
    configs = [
        [("category.a", "x"), ("min-confidence", "0.5"), ("min-confidence.x", "0.4"), ("review", "a, b"),
         ("tenant.t.deny", "y"), ("tenant.t.min-confidence", "0.9"), ("default-category", "z")],
        [("bad", "1")],
    ]
    preds = [[], [types.Prediction(0, "a", 0.7)], [types.Prediction(1, "c", 0.1)]]
    for config in configs:
        for meta in ([], [("x-tenant", "t")]):
            for p in preds:
                for _ in range(8):
                    try:
                        WitWorld().decide(p, meta, config)
                    except Err:
                        pass


_warm_up()
