"""Self-distillation: SCM gate math, OST values and loss, the self-teacher pass, and OST in training end to end."""

from __future__ import annotations

import json
import math
import pickle
from copy import deepcopy

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import load_checkpoint
from conftest import EASY_TRAIN, IMGSZ, fake_batch, read_csv, tiny_quant_model

from ghost_yolo import GhostYOLO
from ghost_yolo.cli import entrypoint
from ghost_yolo.distill import (
    ExternalTeacher,
    OSTLoss,
    attention_value,
    capture_features,
    default_kd_layers,
    layer_distance,
    parse_kd_layers,
    scm_gate,
)
from ghost_yolo.distill.scm import logistic_noise
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.quant import average_bits, quant_layers, set_bits


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.fixture
def qmodel() -> GhostDetectionModel:
    """ghost-n (rgb+ir) at W4, calibrated on noise, with an OST distiller (float self shared) on its default layers."""
    return tiny_quant_model("ost", float_self="shared")


# SCM gate ----------------------------------------------------------------------------------------------------------
def test_gate_is_hard_with_soft_gradient():
    """Training gates are exactly 0/1; their gradient is the soft gate's, sigmoid'((logit + noise) / tau) / tau."""
    logits = torch.linspace(-3, 3, 50, requires_grad=True)
    g = scm_gate(logits, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert set(g.detach().unique().tolist()) <= {0.0, 1.0}
    g.sum().backward()
    noise = logistic_noise(logits, torch.Generator().manual_seed(0))
    soft = torch.sigmoid((logits.detach() + noise) / 0.5)
    assert torch.allclose(logits.grad, soft * (1 - soft) / 0.5, atol=1e-6)
    assert torch.equal(g.detach(), (logits.detach() + noise > 0).float())


def test_gate_open_probability_is_sigmoid_of_logit():
    """Logistic noise makes P(open) = sigmoid(logit): 1/2 at logit 0 (a single Gumbel sample would give 0.63)."""
    gen = torch.Generator().manual_seed(0)
    for logit in (-2.0, 0.0, 1.5):
        rate = scm_gate(torch.full((200_000,), logit), 1.0, generator=gen).mean().item()
        assert rate == pytest.approx(1 / (1 + math.exp(-logit)), abs=0.005)


def test_gate_is_deterministic_at_eval():
    """At eval there is no noise: open exactly where the logit is positive, the same every call."""
    logits = torch.tensor([-1.0, -1e-3, 1e-3, 2.0])
    assert scm_gate(logits, 1.0, training=False).tolist() == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="kd_tau"):
        scm_gate(logits, tau=0)


# OST values and loss ----------------------------------------------------------------------------------------------
def test_attention_value_and_distance():
    """Values are unit-norm spatial maps, blind to feature scale; the distance is mean_hw((v_s - v_t)^2)."""
    torch.manual_seed(0)
    f = torch.randn(3, 8, 5, 7)
    v = attention_value(f)
    assert v.shape == (3, 35) and torch.allclose(v.norm(dim=1), torch.ones(3))
    assert torch.allclose(attention_value(3 * f), v, atol=1e-6)
    assert torch.equal(layer_distance(f, f), torch.zeros(3))
    a, b = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    a[..., 0], b[..., 1] = 1, 1  # orthogonal one-hot maps: ||v_s - v_t||^2 = 2 over 2 positions
    assert layer_distance(a, b).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one-to-one"):
        layer_distance(f, f[:, :, :4])


def test_ost_loss_value_and_gradients():
    """kd = sum_l mean_b(g * d); the gate term is worth 0, prices (d / mean d - 1) into the gate's logits,
    and no gradient reaches a student feature whose gate is closed or through the gate's key."""
    torch.manual_seed(0)
    d = OSTLoss([0, 1], [8, 16], gate=True, tau=1.0).train()
    student = [torch.randn(6, 8, 4, 4, requires_grad=True), torch.randn(6, 16, 2, 2, requires_grad=True)]
    teacher = [torch.randn(6, 8, 4, 4), torch.randn(6, 16, 2, 2)]
    kd, gate_term, g = d.gated_distance(student, teacher)
    dist = torch.stack([layer_distance(s, t) for s, t in zip(student, teacher)], 1)
    assert kd.item() == pytest.approx((g * dist).mean(0).sum().item(), rel=1e-6)
    assert gate_term.item() == 0.0 and set(g.unique().tolist()) <= {0.0, 1.0}
    (kd + gate_term).backward()
    closed = g[:, 0] == 0
    assert closed.any() and (~closed).any()
    assert torch.all(student[0].grad[closed] == 0) and torch.any(student[0].grad[~closed] != 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.key.parameters() if p.dim() == 2)

    # the gate's logit gradient is (d / mean_b d - 1) * dsoft/dlogit / B: positive price pushes the logit down
    logits = torch.zeros(6, 2, requires_grad=True)
    d.gate_logits = lambda s, t: logits  # the same objective on known logits
    torch.manual_seed(3)
    _, gate_term, _ = d.gated_distance([x.detach() for x in student], teacher)
    gate_term.backward()
    price = dist.detach() / dist.detach().mean(0) - 1
    assert torch.all((logits.grad * price) >= 0) and torch.all(logits.grad[price.abs() > 0.05] != 0)


def test_ost_without_gate_teaches_every_pair():
    """kd_gate=False: no projections, every pair taught, kd = sum_l mean_b(d)."""
    d = OSTLoss([0], [8], gate=False, tau=1.0)
    assert not hasattr(d, "key") and sum(p.numel() for p in d.parameters()) == 0
    s, t = torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3)
    kd, _, g = d.gated_distance([s], [t])
    assert torch.all(g == 1) and kd.item() == pytest.approx(layer_distance(s, t).mean().item(), rel=1e-6)


def test_ost_batch_of_one():
    """A last batch of one sample still gates (BN in the projections falls back to running statistics)."""
    d = OSTLoss([0], [8], gate=True, tau=1.0).train()
    kd, _, g = d.gated_distance([torch.randn(1, 8, 3, 3)], [torch.randn(1, 8, 3, 3)])
    assert g.shape == (1, 1) and torch.isfinite(kd) and d.training


# The self-teacher ---------------------------------------------------------------------------------------------------
def test_teacher_pass_no_grad_bn_untouched_quantizers_restored(qmodel):
    """The float self runs without gradient, its BN stats stay as they were, and every quantizer is back on after."""
    before = _bn_state(qmodel)
    x = torch.rand(2, 4, IMGSZ, IMGSZ)
    feats = qmodel.distiller.teacher_outputs(qmodel, x).feats
    assert len(feats) == len(qmodel.distiller.layers) and not any(f.requires_grad for f in feats)
    after = _bn_state(qmodel)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.quant_enabled for m in quant_layers(qmodel).values())
    assert all(bn.track_running_stats for bn in qmodel.modules() if isinstance(bn, nn.BatchNorm2d))
    # the teacher is the float model: on the same input its features differ from the quantized student's
    with torch.no_grad(), capture_features(qmodel, qmodel.distiller.layers) as student:
        qmodel.predict(x)
    assert len(student) == len(feats) and not torch.allclose(student[-1], feats[-1].float(), atol=1e-3)
    assert not any(m._forward_hooks for m in qmodel.modules())


def test_attention_value_gradient_matches_autograd():
    """The one-pass backward of mean_c(F^2) gives autograd's gradient (double-precision gradcheck, and in fp32)."""
    from ghost_yolo.distill.ost import _ChannelEnergy

    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ChannelEnergy.apply, (f,))
    g = torch.randn(3, 6, 5, 7, requires_grad=True)
    w = torch.randn(3, 35)
    (attention_value(g) * w).sum().backward()
    ours, g.grad = g.grad.clone(), None
    (torch.nn.functional.normalize(g.pow(2).mean(1).flatten(1), dim=1) * w).sum().backward()
    assert torch.allclose(ours, g.grad, atol=1e-6)
    assert attention_value(g.detach().bfloat16()).dtype == torch.float32  # bf16 teacher features: fp32 values


def test_teacher_precision(qmodel):
    """bf16_teacher=True runs the teacher in bfloat16; False gives exactly the fp32 float-mode pass; devices other than
    the CPU keep the step's precision. On this untrained 64 px model bf16 moves the summed distances by ~15 % of the
    student-teacher distance (2x2 maps after random attention blocks); on trained vedai-synth models, < 0.1 %."""
    from ghost_yolo.distill import teacher_autocast
    from ghost_yolo.distill.teacher import bn_stats_frozen
    from ghost_yolo.quant.apply import float_mode

    x = torch.rand(2, 4, IMGSZ, IMGSZ)
    d = qmodel.distiller
    d.bf16_teacher = False
    fp32 = d.teacher_outputs(qmodel, x).feats
    with torch.no_grad(), float_mode(qmodel), bn_stats_frozen(qmodel), capture_features(qmodel, d.layers) as ref:
        qmodel.predict(x)
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(fp32, ref))
    d.bf16_teacher = True
    bf16 = d.teacher_outputs(qmodel, x).feats
    assert all(f.dtype == torch.bfloat16 for f in bf16)
    with torch.no_grad(), capture_features(qmodel, d.layers) as student:
        qmodel.predict(x)
    err = sum(layer_distance(a.float(), b).mean() for a, b in zip(bf16, fp32))
    gap = sum(layer_distance(a, b).mean() for a, b in zip(student, fp32))
    assert err < 0.25 * gap
    assert isinstance(teacher_autocast(torch.device("cuda"), True), type(teacher_autocast(x.device, False)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # already under autocast: left as it is
        assert not isinstance(teacher_autocast(x.device, True), torch.autocast)
    assert isinstance(teacher_autocast(x.device, True), torch.autocast)


def test_distilled_step_updates_bn_like_a_plain_step(qmodel):
    """One OST step moves BN running stats exactly as one plain student step does (the teacher pass adds nothing),
    and the loss carries kd_loss next to Ultralytics' items."""
    plain = deepcopy(qmodel)
    del plain.distiller
    batch = fake_batch()
    loss, items = qmodel.loss(batch)
    plain.loss(batch)
    a, b = _bn_state(qmodel), _bn_state(plain)
    assert all(torch.allclose(a[k].float(), b[k].float()) for k in b)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "kd_loss"] and items["kd_loss"] > 0
    assert loss.shape == (4,) and loss[-1].item() == pytest.approx(items["kd_loss"].item() * 4, rel=1e-4)
    assert int(qmodel.distiller.terms["ost"].sample_count) == 4
    loss.sum().backward()
    assert any(p.grad is not None for p in qmodel.distiller.terms["ost"].query.parameters())


def test_kd_loss_zero_when_student_is_teacher(qmodel):
    """bits=32 everywhere: the quantized student computes what the float teacher does, so kd_loss is 0 with the fp32
    teacher (amp=False), and a small fraction of the W4 value with the bf16 one."""
    qmodel.distiller.bf16_teacher = True
    w4 = qmodel.loss(fake_batch())[1]["kd_loss"].item()
    set_bits(qmodel, dict.fromkeys(quant_layers(qmodel), 32))
    assert qmodel.loss(fake_batch())[1]["kd_loss"].item() < 0.25 * w4
    qmodel.distiller.bf16_teacher = False
    _, items = qmodel.loss(fake_batch())
    assert items["kd_loss"].item() == pytest.approx(0.0, abs=1e-9)


def test_eval_loss_reports_zero_kd(qmodel):
    """The validator's loss (preds given, eval mode) has the same keys with kd_loss 0; no teacher pass runs."""
    qmodel.eval()
    batch = fake_batch()
    preds = qmodel(batch["img"])
    _, items = qmodel.loss(batch, preds)
    assert items["kd_loss"].item() == 0.0 and int(qmodel.distiller.terms["ost"].sample_count) == 0


def test_distiller_is_training_only(qmodel):
    """Gate projections ride in the state dict (resume), not in EMA copies' teacher, not in fused/exported models."""
    assert any(k.startswith("distiller.terms.ost.query") for k in qmodel.state_dict())
    qmodel.distiller.teacher = ExternalTeacher(nn.Conv2d(1, 1, 1))
    copy = deepcopy(qmodel)
    assert not copy.distiller.teacher and qmodel.distiller.teacher
    assert not pickle.loads(pickle.dumps(qmodel.distiller.teacher))
    fused = deepcopy(qmodel).eval().fuse(verbose=False)
    assert not hasattr(fused, "distiller") and not any("distiller" in k for k in fused.state_dict())


def test_kd_layers_parsing(qmodel):
    """Default: parameterised backbone/neck layers; 'all' adds Upsample/Concat; lists and strings; bad indices named."""
    default = default_kd_layers(qmodel)
    assert default == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 17, 19, 20, 22]
    assert parse_kd_layers(None, qmodel) == default
    assert parse_kd_layers("all", qmodel) == list(range(23))
    assert parse_kd_layers([6, 2, 4], qmodel) == parse_kd_layers("2,4,6", qmodel) == [2, 4, 6]
    with pytest.raises(ValueError, match=r"layer\(s\) \[23, 40\].*0-22"):
        parse_kd_layers([4, 23, 40], qmodel)
    with pytest.raises(ValueError, match="layer indices"):
        parse_kd_layers("backbone", qmodel)


# Training -----------------------------------------------------------------------------------------------------------
def test_pipeline_outputs(qtrained, easy_yaml):
    """The default pipeline (float warm-up, HQ, QAT + OST): kd_loss columns, gates.csv/png, summary.json."""
    rows = read_csv(qtrained / "results.csv")
    assert {"train/kd_loss", "val/kd_loss"} <= set(rows[0])
    kd = [float(r["train/kd_loss"]) for r in rows]
    assert kd[0] == 0 and kd[-1] > 0  # float phase: nothing to teach; quantized phase: OST
    s = json.loads((qtrained / "summary.json").read_text())
    gates = read_csv(qtrained / "gates.csv")
    assert [r["epoch"] for r in gates] == ["2"]  # one quantized epoch
    opened = {k: float(v) for k, v in gates[0].items() if k != "epoch"}
    assert list(opened) == [f"layer{i}" for i in s["distillation"]["layers"]]  # a column per distilled layer
    assert opened == s["distillation"]["gate_open_last_epoch"]
    # open fraction = open gates / the epoch's training pairs (written to 4 decimals); a stuck gate would read 0 or 1
    assert all(abs(EASY_TRAIN * v - round(EASY_TRAIN * v)) <= EASY_TRAIN * 5e-5 and 0 < v < 1 for v in opened.values())
    assert (qtrained / "gates.png").stat().st_size > 1000
    assert s["fp_epochs"] == 1 and s["distillation"]["kd"] == "ost" and s["distillation"]["teacher"] == "self"
    q = s["quantization"]
    assert q["bits"] == "hq" and q["quantized"]["size_mb"] < q["float_self"]["size_mb"] / 3
    # the figures are the ones measured: the float phase's val in results.csv, and the float self validated again
    # here (the quantized figure is checked against a fresh val in test_quant_train.py)
    assert q["float_start"]["mAP50"] > 0
    assert q["float_start"]["mAP50"] == pytest.approx(float(rows[0]["metrics/mAP50(B)"]), abs=1e-5)
    fs = GhostYOLO(qtrained / "weights" / "best.pt").val(data=str(easy_yaml), imgsz=IMGSZ, batch=16, workers=0,
                                                         plots=False, as_float=True)
    assert fs.box.map50 > 0 and q["float_self"]["mAP50"] == pytest.approx(fs.box.map50, abs=1e-3)
    ckpt, _ = load_checkpoint(qtrained / "weights" / "best.pt")
    assert q["avg_w_bits"] == pytest.approx(average_bits(ckpt), abs=1e-3)  # counted again on best.pt's own widths
    assert q["avg_w_bits"] < 8  # the HQ search lowered some layers below 8 bits
    # the float self and the quantized model are of the same epoch (best.pt), the float start is named separately
    assert q["float_self"]["epoch"] == q["quantized"]["epoch"] == 2 and q["float_start"]["epoch"] == 1
    assert q["float_self"]["batchnorm"] == "own" and s["distillation"]["float_self"] == "cotrain"
    assert hasattr(ckpt, "distiller") and not ckpt.distiller.teacher


@pytest.mark.slow
def test_external_teacher_and_errors(trained, synth_yaml, tmp_path, log):
    """teacher=float best.pt teaches a W4 student (not saved with it); mismatched teachers and options are refused."""
    best = trained / "weights" / "best.pt"
    m = GhostYOLO(best)
    m.train(data=str(synth_yaml), bits=4, kd="ost", teacher=str(best), kd_layers=[2, 4, 6], epochs=1, imgsz=IMGSZ, batch=8,
            workers=0, project=str(tmp_path), name="ext", plots=False, val=False)
    run = tmp_path / "ext"
    assert float(read_csv(run / "results.csv")[0]["train/kd_loss"]) > 0
    assert json.loads((run / "summary.json").read_text())["distillation"]["teacher"] == str(best)
    ckpt, _ = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt.distiller.layers == [2, 4, 6] and not ckpt.distiller.teacher

    rgb = tmp_path / "rgb"
    GhostYOLO("ghost-n.yaml").train(data=str(synth_yaml), modality="rgb", bits=32, epochs=1, imgsz=IMGSZ, batch=8,
                                    workers=0, project=str(rgb), name="t", plots=False, val=False)
    base = f"train model={best} data={synth_yaml} bits=4 epochs=1 imgsz={IMGSZ} workers=0 project={tmp_path}"
    cases = [
        (f"teacher={rgb / 't' / 'weights' / 'last.pt'}", "takes 3 input channels, the student 4"),
        ("teacher=nothing.pt", "teacher=nothing.pt: file not found"),
        ("kd=ost kd_layers=[3,99]", "layer(s) [99]"),
        ("kd=ost compile=True", "compile=True cannot be used with kd=ost"),
        ("kd=dist", "kd=dist: unknown distillation loss 'dist'. Known losses: cls, cwd, dfl, ost"),
        (f"kd=none teacher={best}", "only used for distillation"),
    ]
    for extra, message in cases:
        assert entrypoint(f"{base} {extra}") == 2, extra
        assert message in log.text, extra


def test_teacher_with_other_architecture(tmp_path):
    """A teacher of another model YAML (same channels in, other widths) is refused naming the first layer that differs."""
    from ghost_yolo.distill import load_teacher

    other = GhostDetectionModel("ghost-s.yaml", ch=4, nc=8, verbose=False)
    path = tmp_path / "s.pt"
    torch.save({"model": other, "train_args": {}}, path)
    student = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    with pytest.raises(ValueError, match=r"differs from the student at layer 0: Conv with 24 channels vs Conv with 16"):
        load_teacher(path, student, [0, 2])


@pytest.mark.slow
def test_kd_on_float_run_warns(synth_yaml, tmp_path, log):
    """kd=ost with bits=32: nothing to teach, a warning, and a float run without kd_loss."""
    GhostYOLO("ghost-n.yaml").train(data=str(synth_yaml), bits=32, kd="ost", epochs=1, imgsz=IMGSZ, batch=8,
                                    workers=0, project=str(tmp_path), name="f", plots=False, val=False)
    assert "nothing to learn from its float self" in log.text
    assert "kd_loss" not in (tmp_path / "f" / "results.csv").read_text()
