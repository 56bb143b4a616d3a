"""The PyTorch side of bench/compare.sh's generator rows: per-image wall time of the reference
implementations on random weights (their own constructors and initialisation), on the CPU.

Calls the reference repositories' public functions only; the checkouts are found under
$GENBENCH_REF_REPOS (bench/compare.sh fetches them at the pinned commits).

usage: python bench/reference_families.py --family var|llamagen|mar --batch B [--repeats R]
       [--warmup W] [--threads T] [--num-iter N]
Prints one JSON line: {"family", "batch", "per_image_s" (median of R runs), "runs"}.
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


def labels(b):
    return torch.tensor([(i * 97 + 1) % 1000 for i in range(b)], dtype=torch.long)


def var_runner(b, args):
    # VAR-d16 with the FID recipe of the VAR README (cfg 1.5, top-k 900, top-p 0.96).
    repo("VAR")
    from models import build_vae_var

    torch.manual_seed(0)
    _, var = build_vae_var(device="cpu", depth=16, flash_if_available=False, fused_if_available=False)
    var.eval()
    return lambda seed: var.autoregressive_infer_cfg(B=b, label_B=labels(b), g_seed=seed, cfg=1.5, top_k=900, top_p=0.96)


def llamagen_runner(b, args):
    # GPT-B 256 px (block 256, vocabulary 16384) + VQ-16 decode, cfg 2.0, top-k off (GETTING_STARTED.md).
    repo("LlamaGen")
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models

    torch.manual_seed(0)
    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i").eval()
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).eval()

    def run(seed):
        torch.manual_seed(seed)
        idx = generate(gpt, labels(b), 256, cfg_scale=2.0, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)
        return vq.decode_code(idx, [b, 8, 16, 16])

    return run


def mar_runner(b, args):
    # MAR-B (diffloss 6 x 1024, 100 diffusion steps), cfg 2.9 linear, + KL-16 decode (MAR README).
    repo("mar")
    # sample_tokens moves its buffers with .cuda(); on this CPU run that is the identity.
    torch.Tensor.cuda = lambda self, *a, **k: self
    from models import mar
    from models.vae import AutoencoderKL

    torch.manual_seed(0)
    model = mar.mar_base(buffer_size=64, diffloss_d=6, diffloss_w=1024, num_sampling_steps="100").eval()
    vae = AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4), ckpt_path=None).eval()

    def run(seed):
        torch.manual_seed(seed)
        tokens = model.sample_tokens(bsz=b, num_iter=args.num_iter, cfg=2.9, cfg_schedule="linear", labels=labels(b), temperature=1.0)
        return vae.decode(tokens / 0.2325)

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True, choices=["var", "llamagen", "mar"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-iter", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # The reference initialisers (e.g. VAR's adaLN gamma 1e-5, std-0.02 heads) give random-weight
    # runs subnormal activations that trained checkpoints do not have, and subnormal arithmetic is
    # tens of times slower on x86: flush them, so the time is that of a real model.
    torch.set_flush_denormal(True)
    run = {"var": var_runner, "llamagen": llamagen_runner, "mar": mar_runner}[a.family](a.batch, a)
    times = []
    with torch.inference_mode():
        for r in range(a.warmup + a.repeats):
            t = time.perf_counter()
            run(r)
            if r >= a.warmup:
                times.append((time.perf_counter() - t) / a.batch)
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    print(json.dumps({"family": a.family, "batch": a.batch, "per_image_s": med, "runs": times}))


if __name__ == "__main__":
    main()
