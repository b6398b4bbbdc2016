"""Choose an MGCC model's "no lesion" rule on its validation images and say what it is worth.

Scores, per image at native resolution with normals included, the model without a rule, the
rule chosen on all validation images (in-sample, optimistic), and a 5-fold cross-validated
estimate (each fold scored with the rule chosen on the other folds). Per-class IoU for each.
With ``--classifier`` an image-level lesion classifier is first fitted on the training split
(every discovered case that is not a validation image) and the rule thresholds its
probability. With ``--out`` the chosen rule is stored in a copy of the model
(config["decision"]).

    python scripts/busi_decision.py --model M.safetensors [--names-from OTHER] [--out M2]
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _per_class(ious, classes) -> dict:
    out = {"all": round(float(np.mean(ious)), 4)}
    for c in sorted(set(classes)):
        out[c] = round(float(np.mean([i for i, k in zip(ious, classes) if k == c])), 4)
    return out


def _maps(model, samples):
    """Working-size probability maps, image-level features and masks (no rule applied)."""
    import torch

    from napari_textdiff.core.mgcc.decision import image_features
    from napari_textdiff.core.mgcc.preprocess import image_tensor, normalize_input

    probs, feats, masks = [], [], []
    for s in samples:
        ex = s.load(channels=model.channels)
        x = image_tensor(ex.image, model.channels, model.size)[None]
        with torch.no_grad():
            logits, bott = model.net.eval().forward_with_bottleneck(normalize_input(x))
        prob = torch.sigmoid(logits.float())
        probs.append(prob[0, 0].numpy())
        feats.append(image_features(prob, bott)[0])
        masks.append(np.asarray(ex.mask))
    return probs, np.asarray(feats), masks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/busi")
    p.add_argument("--names-from", default=None,
                   help="take the validation names from this bundle instead of --model")
    p.add_argument("--out", default=None, help="write the model with the chosen rule here")
    p.add_argument("--classifier", action="store_true",
                   help="fit an image-level lesion classifier on the training split")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    from napari_textdiff.core.bundle import read_bundle_header
    from napari_textdiff.core.datasets import discover
    from napari_textdiff.core.mgcc import decision as D
    from napari_textdiff.core.mgcc.model import MGCCModel

    torch.set_num_threads(a.threads)
    model = MGCCModel.load(a.model, device="cpu")
    model.decision = None
    names = set(read_bundle_header(a.names_from or a.model)["meta"].get("validation") or [])
    if not names:
        raise SystemExit("no validation names recorded")
    everything = [s for s in discover(a.data) if s.has_mask]
    samples = sorted((s for s in everything if s.name in names), key=lambda s: s.name)
    classes = [s.meta.get("class", "") for s in samples]
    probs, feats, masks = _maps(model, samples)
    clf, lesion, grid = None, None, D.GRID
    if a.classifier:
        train = [s for s in everything if s.name not in names]
        _, tfeats, tmasks = _maps(model, train)
        clf = D.fit_lesion_classifier(tfeats, [bool(m.any()) for m in tmasks])
        lesion, grid = D.lesion_probability(clf, feats), D.GRID_CLASSIFIER
    none = D._table(probs, masks, model.threshold, False)[:, 0]
    rule, score = D.choose_rule(probs, masks, grid, lesion)
    tab = D._table(probs, masks, rule["threshold"], rule["largest_only"], lesion)
    chosen = D.rule_ious(tab, rule)
    empty = D._empty(rule, tab[:, 2], tab[:, 3], tab[:, 4], tab[:, 5])
    cv = D.cross_validate_rule(probs, masks, folds=5, seed=0, grid=grid, groups=classes,
                               lesion=lesion)
    report = {"model": a.model, "n": len(samples), "classifier": bool(clf),
              "no_rule": _per_class(none, classes),
              "rule": rule, "in_sample": _per_class(chosen, classes),
              "cv5": _per_class(cv["iou"], classes), "cv_rules": cv["rules"],
              "emptied": {c: f"{int(sum(e for e, k in zip(empty, classes) if k == c))}/"
                             f"{classes.count(c)}" for c in sorted(set(classes))}}
    print(json.dumps(report, indent=1))
    if a.out:
        model.threshold = float(rule.pop("threshold"))
        model.decision = {**rule, **({"lesion_classifier": clf} if clf else {})}
        model.meta["decision_tuning"] = {k: report[k] for k in
                                         ("n", "no_rule", "in_sample", "cv5", "emptied")}
        model.save(a.out, dtype=torch.float16)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
