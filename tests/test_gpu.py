"""On a CUDA device (skipped elsewhere): precisions, exact binarization, the compiled optimizer, GPU packing."""

import pytest
import torch
from conftest import run, tiny

from metaplastic_vit.binarize import BinaryLinear
from metaplastic_vit.optim import MetaplasticAdam

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_run_trains_on_the_gpu_in_every_precision(tmp_path, precision):
    record = run(tmp_path, *tiny("device=cuda", f"precision={precision}", "net=bvit_full"))
    assert record.status == "completed" and record.precision == precision and record.device.startswith("cuda")
    assert record.avg_acc > 10  # learned something


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_binary_weights_stay_exact_under_autocast(dtype):
    layer = BinaryLinear(64, 8).cuda()
    x = torch.randn(4, 64, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = layer(x)
    exact = torch.nn.functional.linear(x.to(dtype), (layer.weight.sign() / 8).to(dtype)) + layer.bias.to(dtype)
    torch.testing.assert_close(out, exact)


def test_the_compiled_optimizer_matches_foreach_on_the_gpu():
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (16, 8, 3)]
    params = {impl: [torch.randn(s, generator=g).cuda().requires_grad_() for s in shapes]
              for impl in ("foreach", "compiled")}
    for p in params["compiled"]:
        p.data.copy_(params["foreach"][shapes.index(tuple(p.shape))].data)
    opts = {impl: MetaplasticAdam(ps, lr=1e-2, meta=3.0, implementation=impl) for impl, ps in params.items()}
    for _ in range(5):
        grads = [torch.randn(s, generator=g).cuda() for s in shapes]
        for impl, ps in params.items():
            for p, grad in zip(ps, grads, strict=True):
                p.grad = grad.clone()
            opts[impl].step()
    for a, b in zip(params["foreach"], params["compiled"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_local_launcher_gives_each_job_a_real_gpu(tmp_path):
    from conftest import read_results, run_cli

    proc = run_cli(["-m", "hydra/launcher=local", "hydra.launcher.jobs_per_gpu=2", "meta=0,50",
                    *tiny("epochs_per_task=1")], tmp_path, check=True)
    results = [read_results(p.parent) for p in tmp_path.glob("multirun/*/*/results.json")]
    assert len(results) == 2, proc.stderr
    assert all(r["device"].startswith("cuda") and r["visible_devices"] for r in results)


def test_a_compiled_model_trains_on_the_gpu(tmp_path):
    record = run(tmp_path, *tiny("device=cuda", "net=bvit_full", "compile=true"))
    assert record.status == "completed" and record.avg_acc > 10
