"""The demo's checks: for each signal the synthetic truth plants, the held-out number with its 95 % interval and, in
words, whether it beats chance (and its baseline: random init, the shuffled control)."""

from __future__ import annotations

import pandas as pd

from mvmlm.report.evidence import above_chance, fmt, fmt_ci, wilson_interval

__all__ = ["CEILING", "check", "checks", "print_checks"]

#: AUC at or above which two encoders count as tied at the ceiling (the check says so instead of "not above")
CEILING = 0.98


def check(
    stage: str,
    claim: str,
    value: float,
    low: float,
    high: float,
    chance: float,
    baseline: tuple[str, float] | None = None,
) -> dict:
    """One row of the demo's checks: the number with its CI, and whether it beats chance (and ``baseline``)."""
    verdict = above_chance(value, low, high, chance)
    ok, words = verdict.ok, verdict.words
    if baseline is not None:
        name, reference = baseline
        if min(value, reference) >= CEILING:
            ok = False
            words = f"NOT told apart from {name} ({fmt(reference)}): both at the ceiling, the task is too easy here"
        elif value > reference:
            words += f"; above {name} ({fmt(reference)})"
        elif ok:
            ok, words = False, f"signal NOT shown: above chance ({chance:.3f}), but NOT above {name} ({fmt(reference)})"
        else:
            words += f"; NOT above {name} ({fmt(reference)})"
    return {"stage": stage, "claim": claim, "value": fmt_ci(value, low, high), "ok": bool(ok), "words": words}


def checks(summary: dict) -> list[dict]:
    """Each signal the synthetic truth plants, measured on held-out data (nothing here is tuned on it)."""
    found = []
    after = summary["pretrain"]["after"]
    for key, direction in (("i2t_R@5", "image->text"), ("t2i_R@5", "text->image")):
        n = int(after["breasts"])
        low, high = wilson_interval(round(after[key] * n), n)
        found.append(check("pretrain", f"held-out {direction} R@5", after[key], low, high, after["chance_R@5"]))
    results = pd.DataFrame(summary["probe"]["results"])
    means = results.groupby(["task", "fraction", "encoder"])[["auc", "auc_low", "auc_high"]].mean()
    for (task, fraction, encoder), row in means.iterrows():
        if encoder == "random" or fraction < 0.1:
            continue
        random = means.loc[(task, fraction, "random"), "auc"]
        claim = f"{task} AUC, {fraction:.0%} of training patients"
        found.append(check("probe", claim, row.auc, row.auc_low, row.auc_high, 0.5, ("random init", random)))
    for task, sides in summary["multiview"]["test"]["tasks"].items():
        pooled = sides["pooled"]
        found.append(check("multiview", f"test {task} AUC", pooled["auc"], pooled["auc_low"], pooled["auc_high"], 0.5))
    for model, values in summary["risk"]["models"].items():
        c, shuffled = values["harrell_c"], summary["risk"]["shuffled"].get(model)  # the control may fit fewer inputs
        control = ("shuffled control", shuffled["harrell_c"]["value"]) if shuffled else None
        found.append(check("risk", f"{model} Harrell's C", c["value"], c["low"], c["high"], 0.5, control))
    return found


def print_checks(found: list[dict]) -> None:
    print("\ndoes each stage show its planted signal? (95 % CIs on held-out data)")
    for check in found:
        mark = "yes" if check["ok"] else "NO "
        print(f"  {mark} {check['stage']:<9} {check['claim']:<42} {check['value']}  {check['words']}")
