"""The comparison of two sets of predictions, image by image, and the verdict.

`compare` puts our predictions and the reference's side by side per image: top-k of both
with ImageNet labels, top-1 and top-k agreement, the largest probability and logit
differences, and a verdict against a `Tolerance` (default: top-1 and top-5 agree on every
image, in order, and max |Δprob| < 1e-4). Classes are compared by identity, never sorted
first.

Example::

    result = compare(ours, reference, inputs.names)
    print(result.report())
    sys.exit(result.exit_code)          # 0 pass, 1 fail
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightconv.errors import EXIT_CHECK_FAILED, EXIT_OK, CheckFailed, UsageError
from weightconv.verify.labels import class_label
from weightconv.verify.predictions import Predictions

#: Classes per image compared by default.
TOP = 5


@dataclass(frozen=True)
class Tolerance:
    """What must hold on every image for a pass.

    `prob`: max |Δprobability| must be below it; `top1`/`top5`: the top-1 class / the top-5
    classes (in order) must agree, where two classes whose reference probabilities differ by
    no more than twice the image's own max |Δprob| may swap (a tie within rounding);
    `logit`: when set, max |Δlogit| / max(1, max |reference logit|) must be below it.
    """

    prob: float = 1e-4
    top1: bool = True
    top5: bool = True
    logit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The card's ``tolerance`` entry."""
        return {"prob": self.prob, "top1": self.top1, "top5": self.top5, "logit": self.logit}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Tolerance:
        """The tolerance a card's ``tolerance`` entry states (defaults for what it leaves out)."""
        return cls(
            prob=float(entry.get("prob", 1e-4)),
            top1=bool(entry.get("top1", True)),
            top5=bool(entry.get("top5", True)),
            logit=None if entry.get("logit") is None else float(entry["logit"]),
        )


#: For cards that do not state a tolerance: published predictions made by other software
#: (another JPEG decoder and resize) differ from a correct conversion's by more than float
#: rounding, so only gross differences count; the top-1 and top-5 classes still must agree.
PUBLISHED_CARD_TOLERANCE = Tolerance(prob=1e-2)


@dataclass
class VerifyResult:
    """The verdict, per image and overall; `to_dict` is JSON-ready, `report` is text."""

    subject: str
    reference: str
    inputs: str
    images: list[dict[str, Any]]
    summary: dict[str, Any]
    tolerance: Tolerance
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every image and the logits are within the tolerance."""
        return bool(self.summary["passed"])

    @property
    def exit_code(self) -> int:
        """0 when it passed, 1 (a check failed) when not."""
        return EXIT_OK if self.passed else EXIT_CHECK_FAILED

    def failures(self) -> list[dict[str, Any]]:
        """The entries of the images that failed."""
        return [image for image in self.images if not image["passed"]]

    def to_dict(self) -> dict[str, Any]:
        """The verdict as a JSON-ready document (the CLI's ``--json`` output)."""
        return {
            "ok": self.passed,
            "verdict": "pass" if self.passed else "fail",
            "exit_code": self.exit_code,
            "subject": self.subject,
            "reference": self.reference,
            "inputs": self.inputs,
            "tolerance": self.tolerance.to_dict(),
            "summary": self.summary,
            "images": self.images,
            "notes": self.notes,
        }

    def check(self) -> VerifyResult:
        """Raise CheckFailed (exit code 1) with a one-line summary unless it passed."""
        if not self.passed:
            raise CheckFailed(self.headline())
        return self

    def headline(self) -> str:
        """The verdict in one line: PASS or FAIL, agreement counts and largest differences."""
        s = self.summary
        verdict = "PASS" if self.passed else "FAIL"
        line = (
            f"{verdict}: top-1 agrees on {s['top1_agree']}/{s['images']} images, top-"
            f"{s['k']} on {s['topk_agree']}/{s['images']}; max |Δprob| "
            f"{_g(s['max_abs_prob_diff'])} (tolerance {self.tolerance.prob:g})"
        )
        if s.get("max_abs_logit_diff") is not None:
            line += (
                f"; max |Δlogit| {_g(s['max_abs_logit_diff'])} = "
                f"{_g(s['relative_logit_diff'])} of the logit scale "
                f"{s['logit_scale']:.3g}"
            )
        return line

    def report(self, *, all_images: bool = True) -> str:
        """A readable report: what was compared, a line per image, the disagreements in
        detail (both top-k lists), and the verdict."""
        lines = [
            f"verify {self.subject}",
            f"  against {self.reference}",
            f"  inputs  {self.inputs}",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        width = max(12, *(len(image["image"]) for image in self.images))
        lines.append(
            f"  {'image':<{width}}  {'ours: top-1':<34}  {'reference: top-1':<34}"
            f"  {'max|Δprob|':>10}"
        )
        for image in self.images:
            if not all_images and image["passed"]:
                continue
            ours, ref = image["ours"][0], image["reference"][0]
            mark = "ok" if image["passed"] else "FAIL"
            lines.append(
                f"  {image['image']:<{width}}  {_entry(ours):<34}  {_entry(ref):<34}"
                f"  {_g(image['max_abs_prob_diff']):>10}  {mark}"
            )
        for image in self.failures():
            lines.append(f"  {image['image']}:")
            lines += [f"    - {problem}" for problem in image["problems"]]
            lines.append("      ours:      " + ", ".join(_entry(e) for e in image["ours"]))
            lines.append("      reference: " + ", ".join(_entry(e) for e in image["reference"]))
        lines.append(self.headline())
        return "\n".join(lines)


def _entry(entry: dict[str, Any]) -> str:
    label = entry["label"]
    label = label if len(label) <= 22 else label[:21] + "…"
    prob = "?" if entry["prob"] is None else f"{entry['prob']:.4f}"
    return f"{entry['class']} {label} {prob}"


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _ranks_agree(
    ours: list[int], ref: list[int], ref_prob: Callable[[int], float | None], window: float
) -> tuple[bool, bool]:
    """(agree, by a tie): the same classes in the same order, or differing only where the
    reference's probabilities of the two classes are within `window`."""
    if ours == ref:
        return True, False
    for a, b in zip(ours, ref, strict=False):
        if a == b:
            continue
        pa, pb = ref_prob(a), ref_prob(b)
        if pa is None or pb is None or abs(pa - pb) > window:
            return False, False
    return len(ours) == len(ref), True


def compare(
    ours: Predictions,
    reference: Predictions,
    names: Sequence[str],
    *,
    tolerance: Tolerance | None = None,
    k: int = TOP,
    subject: str = "",
    inputs: str = "",
    notes: Sequence[str] = (),
) -> VerifyResult:
    """Compare two sets of predictions image by image and give the verdict."""
    tol = tolerance or Tolerance()
    if ours.count != len(names) or reference.count != len(names):
        raise UsageError(f"{len(names)} images but {ours.count} and {reference.count} predictions")
    classes = ours.num_classes or reference.num_classes
    problems_all: list[str] = []
    if ours.num_classes and reference.num_classes and ours.num_classes != reference.num_classes:
        problems_all.append(
            f"{ours.num_classes} classes here, {reference.num_classes} in the reference"
        )
    images = []
    max_prob = 0.0
    max_logit: float | None = None
    logit_scale = 0.0
    top1_agree = topk_agree = ties = 0
    for i, name in enumerate(names):
        ref_top = reference.top_k(i, k)
        our_top = ours.top_k(i, len(ref_top))
        # probability differences over every class when both sides have them, else over the
        # classes the reference lists
        listed = [c for c, _ in ref_top]
        problems = list(problems_all)
        missing = [c for c in listed if ours.prob_of(i, c) is None]
        if (
            ours.probabilities is not None
            and reference.probabilities is not None
            and ours.probabilities.shape == reference.probabilities.shape
        ):
            diff = np.abs(ours.probabilities[i] - reference.probabilities[i])
            worst = int(np.argmax(diff))
            prob_diff = float(diff[worst])
        else:
            diffs = {c: abs((ours.prob_of(i, c) or 0.0) - p) for c, p in ref_top}
            worst = max(diffs, key=lambda c: diffs[c])
            prob_diff = diffs[worst]
            if missing:
                problems.append(
                    f"the reference lists class{'es' if len(missing) > 1 else ''} "
                    f"{', '.join(map(str, missing))}, which this model (with "
                    f"{ours.num_classes} classes) does not have"
                )
        logit_diff = None
        if (
            ours.logits is not None
            and reference.logits is not None
            and ours.logits.shape == reference.logits.shape
        ):
            logit_diff = float(np.abs(ours.logits[i] - reference.logits[i]).max())
            max_logit = max(max_logit or 0.0, logit_diff)
            logit_scale = max(logit_scale, float(np.abs(reference.logits[i]).max()))
        window = 2 * min(prob_diff, tol.prob)
        ref_prob = functools.partial(reference.prob_of, i)
        a1, tie1 = _ranks_agree([c for c, _ in our_top[:1]], listed[:1], ref_prob, window)
        ak, tiek = _ranks_agree([c for c, _ in our_top], listed, ref_prob, window)
        top1_agree += a1
        topk_agree += ak
        ties += bool((a1 and tie1) or (ak and tiek))
        if not a1:
            (oc, op), (rc, rp) = our_top[0], ref_top[0]
            theirs = reference.prob_of(i, oc)
            mine = ours.prob_of(i, rc)
            problems.append(
                f"top-1 differs: {oc} '{class_label(oc, classes)}' ({op:.4f}) here, "
                f"{rc} '{reference.label(rc, classes)}' ({rp:.4f}) in the reference; "
                + (
                    f"the reference gives {oc} {theirs:.4f}"
                    if theirs is not None
                    else f"the reference does not list {oc}"
                )
                + (
                    f", this model gives {rc} {mine:.4f}"
                    if mine is not None
                    else f", this model has no class {rc}"
                )
            )
        if not ak:
            our_classes = [c for c, _ in our_top]
            only_ours = [c for c in our_classes if c not in listed]
            only_ref = [c for c in listed if c not in our_classes]
            if only_ours or only_ref:
                problems.append(
                    f"top-{k} differ: only here "
                    + (", ".join(f"{c} '{class_label(c, classes)}'" for c in only_ours) or "-")
                    + "; only in the reference "
                    + (", ".join(f"{c} '{reference.label(c, classes)}'" for c in only_ref) or "-")
                )
            else:
                problems.append(
                    f"top-{k} are the same classes in another order: here "
                    f"{our_classes}, in the reference {listed}"
                )
        if not prob_diff < tol.prob:
            problems.append(
                f"max |Δprob| {_g(prob_diff)} at class {worst} "
                f"'{reference.label(worst, classes)}' "
                f"({_p(ours.prob_of(i, worst), 'no such class')} here, "
                f"{_p(reference.prob_of(i, worst))} in the reference) is not below "
                f"{tol.prob:g}"
            )
        max_prob = max(max_prob, prob_diff)
        passed = (
            not problems_all
            and (a1 or not tol.top1)
            and (ak or not tol.top5)
            and prob_diff < tol.prob
            and not missing
        )
        images.append(
            {
                "image": name,
                "passed": bool(passed),
                "top1_agree": bool(a1),
                f"top{k}_agree": bool(ak),
                "tie": bool(tie1 or tiek),
                "max_abs_prob_diff": prob_diff,
                "max_abs_logit_diff": logit_diff,
                "ours": [_json_entry(c, p, classes) for c, p in our_top],
                "reference": [
                    {**_json_entry(c, p, classes), "label": reference.label(c, classes)}
                    for c, p in ref_top
                ],
                "problems": problems,
            }
        )
    relative = None if max_logit is None else max_logit / max(1.0, logit_scale)
    logit_ok = tol.logit is None or relative is None or relative < tol.logit
    passed = all(image["passed"] for image in images) and logit_ok
    summary = {
        "passed": passed,
        "images": len(names),
        "k": k,
        "top1_agree": top1_agree,
        "topk_agree": topk_agree,
        "ties": ties,
        "max_abs_prob_diff": max_prob,
        "max_abs_logit_diff": max_logit,
        "logit_scale": logit_scale if max_logit is not None else None,
        "relative_logit_diff": relative,
        "failed_images": [image["image"] for image in images if not image["passed"]],
    }
    all_notes = [*notes, *ours.notes, *reference.notes]
    if not logit_ok:
        all_notes.append(
            f"max |Δlogit| is {_g(relative)} of the logit scale, not below {tol.logit:g}"
        )
    return VerifyResult(
        subject or ours.source,
        reference.source,
        inputs,
        images,
        summary,
        tol,
        list(dict.fromkeys(all_notes)),
    )


def _p(value: float | None, absent: str = "not listed") -> str:
    return absent if value is None else f"{value:.4f}"


def _json_entry(cls: int, prob: float | None, classes: int | None) -> dict[str, Any]:
    return {
        "class": int(cls),
        "label": class_label(cls, classes),
        "prob": None if prob is None else float(prob),
    }


__all__ = ["PUBLISHED_CARD_TOLERANCE", "TOP", "Tolerance", "VerifyResult", "compare"]
