"""Self-teaching: the co-trained float self (its own BatchNorm), the distillation-loss registry, the weight schedule,
and the float self as an artefact (val, predict, export with as_float=True)."""

from __future__ import annotations

import json
from copy import deepcopy

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import load_checkpoint
from conftest import IMGSZ, fake_batch, read_csv, tiny_quant_model

from ghost_yolo import GhostYOLO
from ghost_yolo.cli import entrypoint
from ghost_yolo.distill import (
    KD_LOSSES,
    BoxDistributionLoss,
    ChannelWiseLoss,
    ClassScoreLoss,
    PassOutputs,
    parse_kd,
)
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.nn.switch_bn import SwitchableBatchNorm2d, float_bn_layers
from ghost_yolo.quant import drop_float_bn, float_mode, set_quant_enabled, to_float_self


def _stats(model: nn.Module, which: str) -> dict[str, torch.Tensor]:
    """Running statistics of the quantized (``q``) or float (``f``) BatchNorm set."""
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running_mean" in k and ((".float_bn." in k) == (which == "f")) and not k.startswith("distiller")}


# The co-trained float self ------------------------------------------------------------------------------------------
def test_bn_sets_stay_apart_and_both_losses_reach_shared_weights():
    """A co-trained step: the student pass updates only the quantized BN statistics, the float pass only the float
    ones; the float pass's detection loss (fp_loss) and the student's both send gradient into the shared convs."""
    m = tiny_quant_model()
    plain = [b for b in m.modules() if type(b) is nn.BatchNorm2d]  # only the float twins are plain BatchNorms
    assert len(float_bn_layers(m)) == 81 and len(plain) == 81
    assert all(isinstance(b, SwitchableBatchNorm2d) for b in m.modules() if isinstance(b, nn.BatchNorm2d) and b not in plain)
    q0, f0 = _stats(m, "q"), _stats(m, "f")
    assert all(torch.equal(q0[k.replace(".float_bn.", ".")], v) for k, v in f0.items())  # both sets start equal
    batch = fake_batch()
    # the student pass alone (as plain QAT computes it) moves only the quantized statistics
    with torch.no_grad():
        m.predict(batch["img"])
    q1, f1 = _stats(m, "q"), _stats(m, "f")
    assert all(torch.equal(f0[k], f1[k]) for k in f0) and any(not torch.equal(q0[k], q1[k]) for k in q0)
    with torch.no_grad(), float_mode(m):  # the float pass alone moves only the float statistics
        m.predict(batch["img"])
    q2, f2 = _stats(m, "q"), _stats(m, "f")
    assert all(torch.equal(q1[k], q2[k]) for k in q1) and any(not torch.equal(f1[k], f2[k]) for k in f1)
    # full distilled step: gradients of both detection losses reach the shared weights and each BN set
    loss, items = m.loss(batch)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "kd_loss", "kd_cls", "kd_dfl", "fp_loss"]
    assert items["fp_loss"] > 0 and items["kd_loss"] > 0
    assert items["kd_loss"].item() == pytest.approx((items["kd_cls"] + items["kd_dfl"]).item(), rel=1e-5)
    loss.sum().backward()
    stem = m.model[0]
    assert stem.bn.weight.grad.abs().sum() > 0 and stem.bn.float_bn.weight.grad.abs().sum() > 0
    # the float pass's own loss reaches the shared conv weights: compare with the student-only gradient
    g_all = stem.conv.weight.grad.clone()
    m.zero_grad()
    student_only = deepcopy(m)
    student_only.distiller.float_self = "shared"
    student_only.distiller.weights = dict.fromkeys(student_only.distiller.weights, 0.0)
    student_only.loss(batch)[0].sum().backward()
    assert not torch.allclose(g_all, student_only.model[0].conv.weight.grad)


def test_float_mode_uses_float_bn_and_restores():
    """float_mode switches quantizers off and the float BN set on, then restores both; to_float_self is that, kept."""
    m = tiny_quant_model().eval()
    for b in float_bn_layers(m):  # make the two sets differ
        b.float_bn.bias.data += 0.5
    x = torch.rand(1, 4, IMGSZ, IMGSZ)
    with torch.no_grad():
        q = m.predict(x)[0]
        with float_mode(m):
            f = m.predict(x)[0]
        assert all(not b.use_float for b in float_bn_layers(m))
        assert torch.equal(m.predict(x)[0], q)
        fs = to_float_self(deepcopy(m))
        assert not float_bn_layers(fs) and "float_bn" not in fs.yaml["quant"]
        assert torch.allclose(fs.predict(x)[0], f, atol=1e-5) and not torch.allclose(f, q, atol=1e-3)


def test_fused_quantized_model_carries_no_float_bn():
    """Fusing a co-trained model gives exactly the fused model of the same weights without the float set."""
    m = tiny_quant_model().eval()
    for b in float_bn_layers(m):
        b.float_bn.weight.data *= 3  # a float set that would change outputs if it leaked into the fused model
    plain = deepcopy(m)
    drop_float_bn(plain)
    del plain.distiller
    a, b = deepcopy(m).fuse(verbose=False), plain.fuse(verbose=False)
    assert not any("float_bn" in k for k in a.state_dict())
    x = torch.rand(2, 4, IMGSZ, IMGSZ)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize("kd", ["ost", "cls+dfl"])
def test_weight_zero_leaves_no_gradient_behind(kd):
    """A zero-weighted distiller gives every parameter the gradient plain QAT gives it, bit for bit, and the loss's
    own parameters (OST's gate) none at all: zeros would still enter the clip norm and AdamW's weight decay, which
    made kd_weight=0 drift from plain QAT on some CPUs."""
    batch = fake_batch()
    zero = tiny_quant_model(kd=kd, float_self="shared", weight=0.0)
    plain = deepcopy(zero)
    del plain.distiller
    zero.loss(batch)[0].sum().backward()
    plain.loss(batch)[0].sum().backward()
    assert all(p.grad is None for p in zero.distiller.parameters())
    grads = {k: p.grad for k, p in plain.named_parameters() if p.grad is not None}
    assert grads and grads.keys() == {k for k, p in zero.named_parameters() if p.grad is not None}
    assert all(torch.equal(grads[k], p.grad) for k, p in zero.named_parameters() if k in grads)


@pytest.mark.slow
def test_weight_zero_reproduces_plain_qat(synth_yaml, trained, tmp_path):
    """kd=ost with kd_weight=0 (shared float self) trains exactly the weights plain QAT trains for the same seed."""
    best = trained / "weights" / "best.pt"
    common = dict(data=str(synth_yaml), bits=4, epochs=1, imgsz=IMGSZ, batch=8, workers=0, project=str(tmp_path),
                  plots=False, val=False, seed=0, deterministic=True)
    GhostYOLO(best).train(name="plain", kd="none", **common)
    GhostYOLO(best).train(name="zero", kd="ost", kd_weight=0.0, float_self="shared", **common)
    a, _ = load_checkpoint(tmp_path / "plain" / "weights" / "last.pt")
    b, _ = load_checkpoint(tmp_path / "zero" / "weights" / "last.pt")
    sa, sb = a.state_dict(), b.state_dict()
    shared = [k for k in sa if not k.startswith("distiller")]
    assert shared and all(torch.equal(sa[k], sb[k]) for k in shared)


# Losses -------------------------------------------------------------------------------------------------------------
def _head(b=2, nc=3, r=4, a=10, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"boxes": torch.randn(b, 4 * r, a, generator=g, dtype=torch.float64),
            "scores": torch.randn(b, nc, a, generator=g, dtype=torch.float64),
            "feats": [torch.randn(b, 5, 4, 4, generator=g, dtype=torch.float64),
                      torch.randn(b, 5, 2, 2, generator=g, dtype=torch.float64)]}


def _ref_cls(s, t):
    p = t.sigmoid()
    q = s.sigmoid()
    kl = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    w = p.max(1, keepdim=True).values
    return (kl * w).sum() / w.sum()


def _ref_dfl(s, t, scores, temp):
    b, c, a = s.shape
    ps = torch.softmax(s.view(b, 4, c // 4, a) / temp, 2)
    pt = torch.softmax(t.view(b, 4, c // 4, a) / temp, 2)
    kl = (pt * (pt / ps).log()).sum(2).mean(1)
    w = scores.sigmoid().max(1).values
    return temp**2 * (kl * w).sum() / w.sum()


def _ref_cwd(s_maps, t_maps, temp):
    total = 0
    for s, t in zip(s_maps, t_maps):
        ps = torch.softmax(s.flatten(2) / temp, 2)
        pt = torch.softmax(t.flatten(2) / temp, 2)
        total = total + temp**2 * (pt * (pt / ps).log()).sum(2).mean()
    return total


@pytest.mark.parametrize("loss", [ClassScoreLoss(), BoxDistributionLoss(2.0), ChannelWiseLoss(3.0)],
                         ids=["cls", "dfl", "cwd"])
def test_head_losses_zero_when_equal_and_match_reference(loss):
    """Each head loss is 0 when student and teacher agree, and its value and gradient equal a direct reference."""
    teacher = PassOutputs([], _head(seed=1))
    student_head = {k: [f.clone().requires_grad_() for f in v] if isinstance(v, list) else v.clone().requires_grad_()
                    for k, v in _head(seed=2).items()}
    same, _ = loss(PassOutputs([], teacher.head), teacher)
    assert abs(same.item()) < 1e-6
    value, aux = loss(PassOutputs([], student_head), teacher)
    assert aux is None and value.item() > 0
    if isinstance(loss, ClassScoreLoss):
        ref = _ref_cls(student_head["scores"], teacher.head["scores"])
        inputs = [student_head["scores"]]
    elif isinstance(loss, BoxDistributionLoss):
        ref = _ref_dfl(student_head["boxes"], teacher.head["boxes"], teacher.head["scores"], loss.temperature)
        inputs = [student_head["boxes"]]
    else:
        ref = _ref_cwd(student_head["feats"], teacher.head["feats"], loss.temperature)
        inputs = student_head["feats"]
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    g = torch.autograd.grad(value, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(ref, inputs)
    assert all(torch.allclose(a.double(), b, rtol=1e-4, atol=1e-7) for a, b in zip(g, g_ref))


def test_registry_and_parse():
    """kd= names losses by registry name, '+'-joined; unknown names list the known ones."""
    assert set(KD_LOSSES) == {"ost", "cls", "dfl", "cwd"}
    assert parse_kd("cwd+cls+dfl") == ["cwd", "cls", "dfl"] and parse_kd("none") == [] and parse_kd(None) == []
    assert parse_kd("auto") == ["auto"]
    with pytest.raises(ValueError, match=r"kd=ost\+kl: unknown distillation loss 'kl'. Known losses: .*ost"):
        parse_kd("ost+kl")


def test_cosine_schedule():
    """kd_schedule=cosine: 1 at the start of the quantized phase, 0.01 at its end; constant stays 1."""
    m = tiny_quant_model(kd="cls")
    d = m.distiller
    assert d.scale() == 1.0
    d.schedule = "cosine"
    for p, v in ((0.0, 1.0), (0.5, 0.505), (1.0, 0.01)):
        d.progress = p
        assert d.scale() == pytest.approx(v)


def test_item_columns_are_fixed_from_the_start():
    """Outside the quantized phase (and at eval) the distiller's columns exist at 0: results.csv keeps its columns."""
    m = tiny_quant_model(kd="ost+cls")
    set_quant_enabled(m, False)  # the float phase
    _, items = m.loss(fake_batch())
    assert list(items)[3:] == ["kd_loss", "kd_ost", "kd_cls", "fp_loss"]
    assert items["kd_loss"] == 0 and items["fp_loss"] > 0


# The float self as an artefact ----------------------------------------------------------------------------------------
def test_float_self_val_predict_export(qtrained, easy_yaml, tmp_path, log):
    """best.pt of a co-trained run validates, predicts and exports as its float self (as_float=True); the default is
    the quantized model; the CLI says which it evaluated."""
    import onnxruntime as ort

    best = qtrained / "weights" / "best.pt"
    m = GhostYOLO(best)
    q = m.val(data=str(easy_yaml), imgsz=IMGSZ, batch=8, workers=0, plots=False)
    f = m.val(data=str(easy_yaml), imgsz=IMGSZ, batch=8, workers=0, plots=False, as_float=True)
    assert "evaluating the float self of" in log.text and "evaluating the quantized model" in log.text
    assert int(q.nt_per_class.sum()) == int(f.nt_per_class.sum()) > 0  # both saw every object of the val split
    # each scored as the run's summary scored it: the default is the quantized model, as_float=True its float self
    summary = json.loads((qtrained / "summary.json").read_text())["quantization"]
    assert q.box.map50 > 0 and q.box.map50 == pytest.approx(summary["quantized"]["mAP50"], abs=1e-3)
    assert f.box.map50 > 0 and f.box.map50 == pytest.approx(summary["float_self"]["mAP50"], abs=1e-3)
    assert m.model.yaml["quant"]["enabled"]  # the model is left quantized
    img = next((easy_yaml.parent / "images" / "val").glob("*_co.png"))
    res = m.predict(str(img), imgsz=IMGSZ, as_float=True, conf=0.0001)
    assert len(res) == 1 and res[0].ir_img.shape == cv2.imread(str(img)).shape[:2]
    onnx = m.export(format="onnx", imgsz=IMGSZ, as_float=True)
    assert onnx.endswith("best_float.onnx")
    sess = ort.InferenceSession(onnx)
    assert not any(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(onnx).graph.node)
    x = np.random.default_rng(0).random((1, 4, IMGSZ, IMGSZ), dtype=np.float32)
    fs = to_float_self(deepcopy(m.model)).fuse(verbose=False).eval()
    with torch.no_grad():
        ref = fs(torch.from_numpy(x))[0].numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
    assert entrypoint(f"val model={best} data={easy_yaml} imgsz={IMGSZ} batch=8 workers=0 plots=False "
                      f"as_float=True project={tmp_path}") == 0


def test_float_self_errors(trained, synth_yaml, tmp_path, log):
    """as_float on a model without a float self, a head loss with a teacher of other classes, compile with kd,
    an unknown float_self mode: one clear line each."""
    best = trained / "weights" / "best.pt"
    assert entrypoint(f"val model={best} data={synth_yaml} imgsz={IMGSZ} as_float=True") == 2
    assert "this model has no float self" in log.text
    other = GhostDetectionModel("ghost-n.yaml", ch=4, nc=3, verbose=False)
    path = tmp_path / "nc3.pt"
    torch.save({"model": other, "train_args": {}}, path)
    base = f"train model={best} data={synth_yaml} bits=4 epochs=1 imgsz={IMGSZ} workers=0 project={tmp_path}"
    for extra, message in [
        (f"kd=cls+dfl teacher={path}", "predicts 3 classes, the student 8"),
        ("kd=cls compile=True", "compile=True cannot be used with kd=cls"),
        ("float_self=twin", "float_self=twin is not a teacher mode: use frozen, cotrain or shared"),
        ("kd=ost+nope", "unknown distillation loss 'nope'"),
    ]:
        assert entrypoint(f"{base} {extra}") == 2, extra
        assert message in log.text, extra


def test_summary_compares_float_self_and_quantized_of_the_same_epoch(qtrained):
    """summary.json: the float self and the quantized model are best.pt's, the float phase's figure named apart."""
    q = json.loads((qtrained / "summary.json").read_text())["quantization"]
    assert q["float_self"]["epoch"] == q["quantized"]["epoch"]
    assert set(q["float_start"]) == {"mAP50", "mAP50-95", "epoch"}
    best, _ = load_checkpoint(qtrained / "weights" / "best.pt")
    assert float_bn_layers(best) and best.yaml["quant"].get("float_bn") is True


@pytest.mark.slow
def test_frozen_float_self_teaches_and_resumes(trained, synth_yaml, tmp_path):
    """float_self=frozen: the float model at the start of the quantized phase teaches (saved as float_teacher.pt, not
    inside the checkpoints); a run resumed in its quantized phase teaches with that same file."""
    best = trained / "weights" / "best.pt"
    m = GhostYOLO(best)

    def stop(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    m.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt):
        m.train(data=str(synth_yaml), bits=4, kd="cls+dfl", float_self="frozen", epochs=2, imgsz=IMGSZ, batch=8,
                workers=0, project=str(tmp_path), name="fz", plots=False, val=False, seed=0)
    run = tmp_path / "fz"
    teacher, _ = load_checkpoint(run / "weights" / "float_teacher.pt")
    start, _ = load_checkpoint(best)
    ts, ss = teacher.state_dict(), start.state_dict()
    assert all(torch.equal(ts[k].half(), ss[k].half()) for k in ss if "conv.weight" in k or "bn." in k)
    last, _ = load_checkpoint(run / "weights" / "last.pt")
    assert not last.distiller.teacher and not float_bn_layers(last)  # no teacher, no float BN set in checkpoints
    head = set(read_csv(run / "results.csv")[0])
    assert "train/kd_cls" in head and "train/fp_loss" not in head
    seen = {}

    def grab(trainer):
        d = trainer.model.distiller
        seen["path"], seen["mode"], seen["own"] = d.teacher.path, d.float_self, d.teacher.own
        seen["describe"] = d.describe()

    resumed = GhostYOLO(run / "weights" / "last.pt")
    resumed.add_callback("on_train_start", grab)
    resumed.train(resume=True, workers=0)
    assert seen.pop("describe").endswith("from its float self, frozen at the start of the quantized phase, constant "
                                         "weight schedule")
    assert seen == {"path": str(run / "weights" / "float_teacher.pt"), "mode": "frozen", "own": True}
    rows = read_csv(run / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2] and float(rows[1]["train/kd_loss"]) > 0

    # a run that starts quantized (fine-tuning the quantized checkpoint) never passes the quantized start: its float
    # self is frozen at set-up, never the live shared-BatchNorm self
    seen.clear()
    tuned = GhostYOLO(run / "weights" / "last.pt")
    tuned.add_callback("on_train_start", grab)
    tuned.train(data=str(synth_yaml), kd="cls+dfl", epochs=1, imgsz=IMGSZ, batch=8, workers=0, project=str(tmp_path),
                name="tune", plots=False, val=False, seed=0)
    assert seen["own"] and seen["path"] == str(tmp_path / "tune" / "weights" / "float_teacher.pt")


def test_describe_names_the_teacher():
    """The summary's distillation line names a teacher= checkpoint as such, and the frozen float self as the self."""
    from ghost_yolo.distill import ExternalTeacher

    m = tiny_quant_model(kd="cls", float_self="frozen")
    d = m.distiller
    d.teacher = ExternalTeacher(deepcopy(m), "other/best.pt")
    assert "from frozen teacher other/best.pt" in d.describe()
    d.teacher = ExternalTeacher(deepcopy(m), "run/weights/float_teacher.pt", own=True)
    assert "from its float self, frozen at the start of the quantized phase" in d.describe()


@pytest.mark.slow
def test_kd_auto_follows_the_evidence(synth_yaml, trained, tmp_path, log):
    """kd=auto resolves per run from the evidence table: cls+dfl at the measured fixed widths (W4, W8), none at widths
    nobody measured, cls+dfl with teacher=, none for a float run; the trainer's args, args.yaml and the log all say
    what it resolved to. An HQ run holds the candidate losses (cls+dfl, from the <= 4 bits band) and still says auto
    until its search settles it (test_kd_auto_on_hq_settles_by_the_searched_widths)."""
    from ultralytics.utils import YAML

    from ghost_yolo.engine.trainer import GhostTrainer

    base = {"model": "ghost-n.yaml", "data": str(synth_yaml), "imgsz": IMGSZ, "project": str(tmp_path)}
    for bits, want in ((4, ["cls", "dfl"]), (8, ["cls", "dfl"]), ("hq", ["cls", "dfl"]), (6, [])):
        t = GhostTrainer(overrides={**base, "bits": bits, "name": f"b{bits}"})
        m = t.get_model(cfg="ghost-n.yaml", verbose=False)
        assert (list(m.distiller.terms) if hasattr(m, "distiller") else []) == want, bits
        said = "auto" if bits == "hq" else "+".join(want) or "none"
        assert t.args.kd == said
        assert YAML.load(t.save_dir / "args.yaml")["kd"] == said
        assert (f"kd=auto (candidates {'+'.join(want)}): HQ: decided once" if bits == "hq" else
                f"kd=auto -> {said}: ") in log.text
    assert "W4: frozen float self with cls+dfl +0.94 [+0.3, +1.5]" in log.text
    assert "W6: no paired-seed evidence" in log.text
    t = GhostTrainer(overrides={**base, "bits": 4, "teacher": str(trained / "weights" / "best.pt")})
    m = t.get_model(cfg="ghost-n.yaml", verbose=False)
    assert list(m.distiller.terms) == ["cls", "dfl"] and m.distiller.teacher
    t = GhostTrainer(overrides={**base, "bits": 32})
    assert not hasattr(t.get_model(cfg="ghost-n.yaml", verbose=False), "distiller") and t.args.kd == "none"


def test_kd_auto_table_quotes_the_benchmark():
    """Every figure the kd=auto table quotes stands in its section of benchmarks/results/selfteach.md, on the row of
    the confirmed arm: a re-run benchmark that changes them fails here until the table follows."""
    from pathlib import Path

    from ghost_yolo.distill import AUTO_KD_EVIDENCE

    text = (Path(__file__).parents[1] / "benchmarks" / "results" / "selfteach.md").read_text()
    sections = text.split("\n## ")[1:]
    for key, row in AUTO_KD_EVIDENCE.items():
        section = next(part for part in sections if part.startswith(row.section + " ("))
        rows = [line for line in section.splitlines() if line.startswith("| frozen-cls+dfl")]
        confirmed = rows[-1]  # the confirmation on fresh seeds where there is one, else the only row
        assert row.gain in confirmed and row.ahead in confirmed, (key, confirmed)
        gain = float(row.gain.split()[0])
        lower = float(row.gain.split("[")[1].split(",")[0])
        assert (row.kd != "none") == (lower > 0), f"{key}: kd={row.kd} but the CI's lower bound is {lower}"
        assert gain == pytest.approx(float(confirmed.split("|")[5].split()[0]))


def test_kd_auto_on_hq_settles_by_the_searched_widths(monkeypatch):
    """kd=auto on an HQ run waits for the search: with a row for HQ at <= 4 average bits that shows a gain, a search
    that lands at or below 4 bits distils (frozen float self), one above 4 switches the distiller off (its loss columns
    stay at 0, no teacher is frozen), and the settled recipe says which band decided."""
    from ghost_yolo.distill import auto
    from ghost_yolo.distill.recipe import DistillRecipe
    from ghost_yolo.engine.setup import start_qat
    from ghost_yolo.quant import QuantRecipe, average_bits

    row = auto.Evidence("HQ at 4 average bits or fewer (test)", "cls+dfl", "+1.00 [+0.5, +1.5]", "5 of 5", "test")
    monkeypatch.setitem(auto.AUTO_KD_EVIDENCE, "hq<=4", row)
    pending = DistillRecipe.from_args({"kd": "auto"}, QuantRecipe.from_args(bits="hq"))
    assert pending.auto_pending and pending.kd == "cls+dfl" and pending.args()["kd"] == "auto"
    for threshold, distils in ((1e9, True), (1e-9, False)):  # every searched layer at bit_min (2), or at 8
        m = tiny_quant_model(kd="auto", float_self="frozen", bits="hq", hq_threshold=threshold)
        assert (average_bits(m) <= 4) is distils
        assert m.distiller.enabled is distils and bool(m.distiller.teacher) is distils
        _, items = m.loss(fake_batch())
        assert bool(items["kd_loss"] > 0) is distils
        settled = start_qat(m, QuantRecipe.from_args(bits="hq", hq_threshold=threshold), fake_batch()["img"],
                            pending).distill
        assert not settled.auto_pending and settled.kd == ("cls+dfl" if distils else "none")
        assert ("HQ at 4 average bits or fewer (test)" if distils else "HQ above 4 average bits") in settled.auto
