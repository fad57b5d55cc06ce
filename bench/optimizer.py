"""Time of one optimizer step: learnerlab's built-in optimizers against torch.optim (foreach and fused).

    python bench/optimizer.py                 # both parameter sets, about a minute on 2 cores
    python bench/optimizer.py --reps 40 --threads 2 --cases adam,adamw

Cases: adam, adamw, sgd_mom (learnerlab's default strategy, the fused kernel, vs torch fused); rmsprop and
radam (learnerlab's multi-tensor strategy vs torch foreach; torch has no fused RMSprop or RAdam); user_mom
(the chapter's own momentum callbacks as a user types them, default `impl='auto'`: run once per group on
lists of tensors after a check); user_loop (the same callbacks with `impl='loop'`, the chapter's loop);
user_comp (the same callbacks with `impl='compile'`: the loop compiled by torch.compile).
The 'warm-up s' column is learnerlab's first two steps (state creation and checks; for user_comp, compilation).

Parameter sets: (a) the shapes of torchvision's resnet34 (no weights: only the shapes matter),
(b) 2,000 tensors of 1,000 values. Every variant of a case gets its own copy of the same starting
parameters and the same fixed gradients, and the variants are timed interleaved (one step of each in
turn, rotating which goes first, `--reps` rounds), so a burst of load on the shared machine hits all of
them alike. We report the median ms/step, and the ratios learnerlab / torch foreach and learnerlab /
torch fused as the median of each round's ratio (the steps of a round ran back to back, so pairing
them cancels most of the load drift; '-' where torch has no fused version). The last column is the
largest relative difference between learnerlab's parameters and torch fused's (else foreach's) after
the same steps: they compute the same thing.
"""
import argparse, os, statistics, sys, time, warnings
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from learnerlab.optimizer import Adam, SGD, RMSProp, Optimizer
from learnerlab.optim_impl import PerParameterWarning
from learnerlab.optim_extra import RAdam


def resnet34_shapes():
    "Shapes of torchvision's resnet34 parameters (built without weights)."
    import torchvision
    return [tuple(p.shape) for p in torchvision.models.resnet34(weights=None).parameters()]


def make_params(shapes, seed=0):
    "Parameters of `shapes` with fixed random values and gradients."
    g = torch.Generator().manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.randn(s, generator=g).requires_grad_()
        p.grad = torch.randn(s, generator=g) * 0.01
        ps.append(p)
    return ps


def clone_params(ps):
    "An independent copy of `ps` with copies of their gradients."
    out = []
    for p in ps:
        q = p.detach().clone().requires_grad_()
        q.grad = p.grad.clone()
        out.append(q)
    return out


def chapter_average_grad(p, mom, grad_avg=None, **kwargs):
    "The chapter's momentum statistic, as a user would type it (new tensor each step)."
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
    return {'grad_avg': grad_avg*mom + p.grad.data}


def chapter_momentum_step(p, lr, grad_avg, **kwargs):
    "The chapter's momentum step, with the current add_ signature."
    p.data.add_(grad_avg, alpha=-lr)


# case name -> (learnerlab opt_func with kwargs, torch class, torch kwargs, has a fused torch version)
CASES = {
    'adam': (partial(Adam, lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.), torch.optim.Adam,
             dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5), True),
    'adamw': (partial(Adam, lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01), torch.optim.AdamW,
              dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01), True),
    'sgd_mom': (partial(SGD, lr=1e-2, mom=0.9), torch.optim.SGD, dict(lr=1e-2, momentum=0.9), True),
    'rmsprop': (partial(RMSProp, lr=1e-3, sqr_mom=0.99, eps=1e-8), torch.optim.RMSprop,
                dict(lr=1e-3, alpha=0.99, eps=1e-8), False),
    'radam': (partial(RAdam, lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5), torch.optim.RAdam,
              dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5), False),
    # a user's own callbacks (the chapter's): no multi-tensor form; the default runs them on lists of tensors
    'user_mom': (partial(Optimizer, cbs=[chapter_average_grad, chapter_momentum_step], lr=1e-2, mom=0.9),
                 torch.optim.SGD, dict(lr=1e-2, momentum=0.9), True),
    # the same callbacks on the chapter's per-parameter loop (impl='loop')
    'user_loop': (partial(Optimizer, cbs=[chapter_average_grad, chapter_momentum_step], lr=1e-2, mom=0.9, impl='loop'),
                  torch.optim.SGD, dict(lr=1e-2, momentum=0.9), True),
    # the same callbacks, compiled by torch.compile (impl='compile')
    'user_comp': (partial(Optimizer, cbs=[chapter_average_grad, chapter_momentum_step], lr=1e-2, mom=0.9, impl='compile'),
                  torch.optim.SGD, dict(lr=1e-2, momentum=0.9), True),
}


def bench_case(name, shapes, reps):
    "Median ms/step of learnerlab and torch variants of case `name`, timed interleaved, and the max relative difference."
    ll_func, torch_cls, torch_kw, has_fused = CASES[name]
    base = make_params(shapes)
    variants = {'learnerlab': ll_func(clone_params(base)),
                'torch foreach': torch_cls(clone_params(base), foreach=True, **torch_kw)}
    if has_fused: variants['torch fused'] = torch_cls(clone_params(base), fused=True, **torch_kw)
    del base
    times, warm = {k: [] for k in variants}, 0.
    names = list(variants)
    for r in range(reps + 2):
        for k in names[r % len(names):] + names[:r % len(names)]:   # rotate who goes first: no position bias
            opt = variants[k]
            t0 = time.perf_counter(); opt.step(); t1 = time.perf_counter()
            if r >= 2: times[k].append((t1 - t0) * 1000)   # the first two rounds warm up (allocate state)
            elif k == 'learnerlab': warm += t1 - t0
    ref = 'torch fused' if has_fused else 'torch foreach'
    ll_ps, ref_ps = variants['learnerlab'].param_lists[0], variants[ref].param_groups[0]['params']
    rel = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(ll_ps, ref_ps))
    ratios = {k: statistics.median(a / b for a, b in zip(times['learnerlab'], v)) for k, v in times.items()}
    return {k: statistics.median(v) for k, v in times.items()}, ratios, rel, warm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--reps', type=int, default=25, help='interleaved timing rounds per case')
    ap.add_argument('--threads', type=int, default=1, help='torch.set_num_threads (1: steadier on a shared machine)')
    ap.add_argument('--cases', default=','.join(CASES), help='comma-separated subset of ' + ','.join(CASES))
    ap.add_argument('--sets', default='resnet34,2000x1000', help='parameter sets: resnet34, 2000x1000')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter('ignore', PerParameterWarning)   # not expected: user_mom passes its check
    sets = {'resnet34': resnet34_shapes, '2000x1000': lambda: [(1000,)] * 2000}
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cpus, "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = f"{'params':<10} {'case':<9} {'learnerlab':>10} {'foreach':>9} {'fused':>9} {'ll/foreach':>10} {'ll/fused':>9} {'max rel diff':>13} {'warm-up s':>10}"
    print(header); print('-' * len(header))
    for set_name in args.sets.split(','):
        shapes = sets[set_name]()
        for case in args.cases.split(','):
            t, ratio, rel, warm = bench_case(case, shapes, args.reps)
            ll, fe, fu = t['learnerlab'], t['torch foreach'], t.get('torch fused')
            fu_s, r_fu = (f"{fu:9.2f}", f"{ratio['torch fused']:9.2f}") if fu else (f"{'-':>9}", f"{'-':>9}")
            print(f"{set_name:<10} {case:<9} {ll:10.2f} {fe:9.2f} {fu_s} {ratio['torch foreach']:10.2f} {r_fu} {rel:13.1e} {warm:10.2f}")
    print("ms/step: medians over rounds; ratios: medians of the per-round ratios (paired, so robust to load drift); "
          "load average after: " + ' '.join(f'{x:.2f}' for x in os.getloadavg()))


if __name__ == '__main__':
    main()
