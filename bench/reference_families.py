"""The PyTorch side of bench/compare.sh's generator rows: per-image, per-step and decode wall
times of the reference implementations on random weights (their own constructors and
initialisation), on the CPU.

Calls the reference repositories' public functions only; the checkouts are found under
$GENBENCH_REF_REPOS (bench/compare.sh fetches them at the pinned commits). Steps are timed
without touching the repositories: a forward pre-hook (or, for AutoNAT, the guidance wrapper
this script passes to the sampler) marks the start of each generation step, and a step lasts
until the next one starts (the last until the decode starts), so a step's time covers its
forward, guidance, sampling and feed-back, as `genbench profile`'s step records do.

usage: python bench/reference_families.py --family var|llamagen|mar|autonat --batch B
       [--repeats R] [--warmup W] [--threads T] [--num-iter N]
Prints one JSON line: {"family", "batch", "per_image_s" (median of R runs), "runs",
"step_ms" (per step, median of R runs), "decode_ms" (whole batch, median of R runs)}.
"""
import argparse
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import torch

REPOS = os.environ.get("GENBENCH_REF_REPOS", os.path.expanduser("~/.cache/genbench-ref/repos"))


def repo(name):
    path = os.path.join(REPOS, name)
    if not os.path.isdir(path):
        sys.exit(f"reference_families: {path} is missing; bench/compare.sh fetches it (or set GENBENCH_REF_REPOS)")
    sys.path.insert(0, path)
    return path


class StepClock:
    """Start times of the generation steps and the decode's start and end, for one run."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.starts, self.decode_start, self.decode_end = [], None, None

    def step(self, *_):
        self.starts.append(time.perf_counter())

    def decoding(self, *_):
        self.decode_start = time.perf_counter()

    def decoded(self, *_):
        self.decode_end = time.perf_counter()

    def timed_decode(self, decode):
        def run(*args, **kwargs):
            self.decoding()
            out = decode(*args, **kwargs)
            self.decoded()
            return out

        return run

    def step_ms(self):
        if not self.starts or self.decode_start is None or self.decode_end is None:
            sys.exit("reference_families: no step or decode was observed; the reference's call structure is not the expected one")
        ends = self.starts[1:] + [self.decode_start]
        return [1e3 * (e - s) for s, e in zip(self.starts, ends)], 1e3 * (self.decode_end - self.decode_start)


def labels(b):
    return torch.tensor([(i * 97 + 1) % 1000 for i in range(b)], dtype=torch.long)


def var_runner(b, args, clock):
    # VAR-d16 with the FID recipe of the VAR README (cfg 1.5, top-k 900, top-p 0.96).
    repo("VAR")
    from models import build_vae_var

    torch.manual_seed(0)
    vae, var = build_vae_var(device="cpu", depth=16, flash_if_available=False, fused_if_available=False)
    var.eval()
    # Each scale starts with the shared adaLN projection; the decode (fhat_to_img) is
    # post_quant_conv then the decoder.
    var.shared_ada_lin.register_forward_pre_hook(clock.step)
    vae.post_quant_conv.register_forward_pre_hook(clock.decoding)
    vae.decoder.register_forward_hook(clock.decoded)
    return lambda seed: var.autoregressive_infer_cfg(B=b, label_B=labels(b), g_seed=seed, cfg=1.5, top_k=900, top_p=0.96)


def llamagen_runner(b, args, clock):
    # GPT-B 256 px (block 256, vocabulary 16384) + VQ-16 decode, cfg 2.0, top-k off (GETTING_STARTED.md).
    repo("LlamaGen")
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models

    torch.manual_seed(0)
    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i").eval()
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).eval()
    # One GPT forward per token: the prefill, then 255 cached decode steps.
    gpt.register_forward_pre_hook(clock.step)
    decode = clock.timed_decode(vq.decode_code)

    def run(seed):
        torch.manual_seed(seed)
        idx = generate(gpt, labels(b), 256, cfg_scale=2.0, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)
        return decode(idx, [b, 8, 16, 16])

    return run


def mar_runner(b, args, clock):
    # MAR-B (diffloss 6 x 1024, 100 diffusion steps), cfg 2.9 linear, + KL-16 decode (MAR README).
    repo("mar")
    # sample_tokens moves its buffers with .cuda(); on this CPU run that is the identity.
    torch.Tensor.cuda = lambda self, *a, **k: self
    from models import mar
    from models.vae import AutoencoderKL

    torch.manual_seed(0)
    model = mar.mar_base(buffer_size=64, diffloss_d=6, diffloss_w=1024, num_sampling_steps="100").eval()
    vae = AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4), ckpt_path=None).eval()
    # Each iteration starts with the class embedding (then MAE encoder, decoder, diffusion head).
    model.class_emb.register_forward_pre_hook(clock.step)
    decode = clock.timed_decode(vae.decode)

    def run(seed):
        torch.manual_seed(seed)
        tokens = model.sample_tokens(bsz=b, num_iter=args.num_iter, cfg=2.9, cfg_schedule="linear", labels=labels(b), temperature=1.0)
        return decode(tokens / 0.2325)

    return run


def autonat_runner(b, args, clock):
    # AutoNAT-L (configs/AutoNAT_L.yaml) with the released T = 8 strategy
    # (configs/AutoNAT_L-T8_strategy.yaml), NATSchedule.generate, + the MAGE VQGAN decode
    # (configs/vq-f16-jax.yaml), as train.py's eval mode runs them.
    path = repo("ImprovedNAT")
    import numpy as np
    from omegaconf import OmegaConf

    from libs.nat_misc import NATSchedule
    from libs.nat_model import UViT
    from taming.models.vqgan import VQModel

    cfg = OmegaConf.load(os.path.join(path, "configs", "AutoNAT_L.yaml"))
    strategy = OmegaConf.to_container(OmegaConf.load(os.path.join(path, "configs", "AutoNAT_L-T8_strategy.yaml")))
    steps = len(strategy["manual_samp_temp"])
    if args.num_iter != steps:
        sys.exit(f"reference_families: the released AutoNAT-L strategy has T = {steps} steps, not --num-iter {args.num_iter}")
    vq_cfg = OmegaConf.load(os.path.join(path, "configs", "vq-f16-jax.yaml")).model.params
    torch.manual_seed(0)
    nnet = UViT(**cfg.nnet).eval()
    vq = VQModel(ddconfig=vq_cfg.ddconfig, lossconfig=vq_cfg.lossconfig, n_embed=vq_cfg.n_embed, embed_dim=vq_cfg.embed_dim, ckpt_path=None).eval()
    schedule = NATSchedule(codebook_size=vq.n_embed, device="cpu", **cfg.muse)
    null_class = cfg.nnet.num_classes - 1

    # train.py's guidance (a closure there, so not importable): a conditional and an
    # unconditional forward, cond + scale * (cond - uncond). One call per generation step.
    def guided(ids, scale, context):
        clock.step()
        cond = nnet(ids, context=context)
        uncond = nnet(ids, context=torch.full_like(context, null_class))
        return cond + scale * (cond - uncond)

    decode = clock.timed_decode(vq.decode_code)

    def run(seed):
        torch.manual_seed(seed)
        np.random.seed(seed)  # NATSchedule draws its Gumbel noise from numpy
        context = labels(b).unsqueeze(1)
        return schedule.generate(steps, b, guided, decode, context=context, **strategy)

    return run


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True, choices=["var", "llamagen", "mar", "autonat"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-iter", type=int, help="generation steps: MAR (default 64), AutoNAT (default 8, the released strategy's)")
    a = ap.parse_args()
    if a.num_iter is None:
        a.num_iter = {"mar": 64, "autonat": 8}.get(a.family)
    torch.set_num_threads(a.threads)
    # The reference initialisers (e.g. VAR's adaLN gamma 1e-5, std-0.02 heads) give random-weight
    # runs subnormal activations that trained checkpoints do not have, and subnormal arithmetic is
    # tens of times slower on x86: flush them, so the time is that of a real model.
    torch.set_flush_denormal(True)
    clock = StepClock()
    runners = {"var": var_runner, "llamagen": llamagen_runner, "mar": mar_runner, "autonat": autonat_runner}
    run = runners[a.family](a.batch, a, clock)
    times, steps, decodes = [], [], []
    with torch.inference_mode():
        for r in range(a.warmup + a.repeats):
            clock.reset()
            t = time.perf_counter()
            run(r)
            if r >= a.warmup:
                times.append((time.perf_counter() - t) / a.batch)
                step_ms, decode_ms = clock.step_ms()
                steps.append(step_ms)
                decodes.append(decode_ms)
    if len({len(s) for s in steps}) != 1:
        sys.exit(f"reference_families: the runs had different step counts {[len(s) for s in steps]}")
    print(
        json.dumps(
            {
                "family": a.family,
                "batch": a.batch,
                "per_image_s": median(times),
                "runs": sorted(times),
                "step_ms": [median(list(per_step)) for per_step in zip(*steps)],
                "decode_ms": median(decodes),
            }
        )
    )


if __name__ == "__main__":
    main()
