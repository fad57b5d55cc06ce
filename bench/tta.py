"""Time to accuracy on real images: learnerlab's `fit_one_cycle` vs the plain PyTorch loop a user would write.

    python bench/tta.py                              # resnet18, 64 px, 200/50 images per class, 2 epochs, 2 rounds
    python bench/tta.py --per-class 50 --valid-per-class 20 --epochs 1 --rounds 1   # a quick look
    python bench/tta.py --cases plain,learnerlab,all  # the plain loop, learnerlab, learnerlab with every speed switch
    python bench/tta.py --cases plain,bf16,bf16+channels_last   # switches combined with '+'
    python bench/tta.py --data ~/imagenette2-224sq   # an extracted folder instead of the shared archive

Both sides train a torchvision resnet18 from scratch on the same files (the first N images of each class
of Imagenette, from `../shared/data/imagenette2-224sq.tgz`), with the same transforms (learnerlab's
`train_transforms`/`valid_transforms`), the same seeds, the same batch size, threads and DataLoader workers,
and the same recipe: Adam (betas 0.9/0.99, eps 1e-5, decoupled weight decay 0.01) with a one-cycle schedule
(25% cosine warm-up from lr/25, cosine down to lr/1e5, beta1 0.95 -> 0.85 -> 0.95). The plain loop uses
`torch.optim.AdamW` and `torch.optim.lr_scheduler.OneCycleLR` set to that recipe. Besides plain learnerlab,
each learnerlab case turns on one speed switch (`learnerlab.speed`'s `ChannelsLast`, `CompileModel`, `CPUThreads`,
or `Learner.to_bf16()`), and `all` turns on every one.

Every run is its own child process with glibc's allocator pinned (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`), and reports its minor page faults; the cases are interleaved round by round
and the 1-minute load average is printed before each run, so a disturbed run shows itself. The table gives
the median over rounds of fit time (training and validation), training images per second and final
accuracy, and each case's ratio against the plain loop.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_ARCHIVE = ROOT.parent/'shared'/'data'/'imagenette2-224sq.tgz'
PINNED_MALLOC = {'MALLOC_MMAP_THRESHOLD_': '268435456', 'MALLOC_TRIM_THRESHOLD_': '1073741824'}
FEATURES = ('channels_last', 'bf16', 'compile', 'threads')
CASES = ('plain', 'learnerlab', *FEATURES, 'all')


def image_folders(data, cache):
    "The extracted image folder for `data` (an archive is extracted once into `cache` by `untar_data`)."
    from learnerlab.data import untar_data
    p = Path(data).expanduser()
    return untar_data(p, cache) if p.is_file() else p


def datasets_for(folder, args):
    "Training and validation subsets with learnerlab's transforms: identical for both cases."
    from torchvision import datasets
    from learnerlab.images import find_splits, load_rgb, train_transforms, valid_transforms, per_class_subset
    train_dir, valid_dir = find_splits(folder)
    presize = int(args.size * 1.25)
    train = datasets.ImageFolder(train_dir, transform=train_transforms(presize, args.size), loader=load_rgb)
    valid = datasets.ImageFolder(valid_dir, transform=valid_transforms(args.size), loader=load_rgb)
    return per_class_subset(train, args.per_class), per_class_subset(valid, args.valid_per_class), len(train.classes)


def loaders(train_ds, valid_ds, args):
    "torch DataLoaders with a seeded shuffle."
    import torch
    from torch.utils.data import DataLoader
    kw = dict(batch_size=args.bs, num_workers=args.workers, persistent_workers=args.workers > 0)
    g = torch.Generator().manual_seed(args.seed)
    return (DataLoader(train_ds, shuffle=True, drop_last=True, generator=g, **kw),
            DataLoader(valid_ds, shuffle=False, **kw))


def plain_fit(model, train_dl, valid_dl, args):
    "The loop a PyTorch user writes: AdamW + OneCycleLR, then one pass of validation; returns accuracy."
    import torch
    from torch import nn
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * len(train_dl), pct_start=0.25, anneal_strategy='cos',
        div_factor=25., final_div_factor=1e5 / 25., cycle_momentum=True, base_momentum=0.85, max_momentum=0.95)
    loss_func = nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        model.train()
        for xb, yb in train_dl:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for xb, yb in valid_dl:
                correct += (model(xb).argmax(1) == yb).sum().item()
                total += len(yb)
    return correct / total


def speed_callbacks(features):
    "learnerlab's speed switches for the named `features` (bf16 is a learner method, applied separately)."
    from learnerlab.speed import ChannelsLast, CompileModel, CPUThreads
    make = {'channels_last': ChannelsLast, 'compile': CompileModel, 'threads': CPUThreads}
    return [make[f]() for f in features if f in make]


def learnerlab_fit(model, train_dl, valid_dl, args, features=()):
    "The same recipe through `Learner.fit_one_cycle` with its default callbacks and `features`; returns accuracy."
    from torch import nn
    from learnerlab.all import Learner, DataLoaders, accuracy, Adam
    learn = Learner(DataLoaders(train_dl, valid_dl, device='cpu'), model, loss_func=nn.CrossEntropyLoss(),
                    opt_func=Adam, metrics=accuracy, cbs=speed_callbacks(features))
    if 'bf16' in features: learn.to_bf16()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, args.lr)
    return float(learn.recorder.values[-1][-1])


def run_one(case, args):
    "One fit in this process; prints a JSON line with its time, throughput, accuracy and page faults."
    import torch, torchvision
    if args.threads: torch.set_num_threads(args.threads)
    train_ds, valid_ds, n_cls = datasets_for(image_folders(args.data, args.cache), args)
    train_dl, valid_dl = loaders(train_ds, valid_ds, args)
    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=n_cls)
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    if case == 'plain': acc = plain_fit(model, train_dl, valid_dl, args)
    else: acc = learnerlab_fit(model, train_dl, valid_dl, args, case_features(case))
    secs = time.perf_counter() - t0
    n_img = args.epochs * len(train_dl) * args.bs
    print(json.dumps(dict(case=case, secs=secs, img_s=n_img / secs, acc=acc,
                          faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)))


def case_features(case):
    "The speed switches of a learnerlab case: none, one, several joined by '+', or all of them."
    return {'learnerlab': (), 'all': FEATURES}.get(case, tuple(case.split('+')))

def valid_case(case): return case in CASES or all(f in FEATURES for f in case.split('+'))


def child_args(args):
    keep = ('data', 'cache', 'size', 'bs', 'epochs', 'lr', 'per_class', 'valid_per_class', 'threads', 'workers', 'seed')
    return [a for k in keep for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]


def run_child(case, args):
    "One fit in a fresh process with the allocator pinned; its JSON result."
    env = {**os.environ, **PINNED_MALLOC, 'PYTHONPATH': str(ROOT)}
    out = subprocess.run([sys.executable, __file__, '--one', case, *child_args(args)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0: sys.exit(f'{case} run failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(results, args):
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ('secs', 'img_s', 'acc', 'faults')}
           for c, rs in results.items()}
    base = med['plain']
    print(f"\n{'case':<15}{'fit s':>9}{'img/s':>9}{'accuracy':>10}{'minor faults':>14}{'time ratio':>12}{'acc - plain':>13}")
    for c, m in med.items():
        print(f"{c:<15}{m['secs']:9.1f}{m['img_s']:9.1f}{m['acc']:10.3f}{m['faults']:14.0f}"
              f"{m['secs'] / base['secs']:12.2f}{m['acc'] - base['acc']:+13.3f}")
    print(f'median of {args.rounds} round(s); time ratio < 1 means faster than the plain loop')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=str(SHARED_ARCHIVE), help='an Imagenette archive or extracted folder')
    ap.add_argument('--cache', default=str(ROOT/'bench'/'out'/'data'), help='where an archive is extracted once')
    ap.add_argument('--size', type=int, default=64, help='image size in pixels')
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--lr', type=float, default=1e-2)
    ap.add_argument('--per-class', type=int, default=200, help='training images per class')
    ap.add_argument('--valid-per-class', type=int, default=50, help='validation images per class')
    ap.add_argument('--threads', type=int, default=0, help="torch threads for every case (0: torch's default)")
    ap.add_argument('--workers', type=int, default=1, help='DataLoader worker processes')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--rounds', type=int, default=2, help='interleaved rounds of every case')
    ap.add_argument('--cases', default='plain,learnerlab,channels_last,bf16,compile,threads,all',
                    help=f"comma-separated, from {', '.join(CASES)}; learnerlab cases add one speed switch each, "
                         "several joined by '+' (e.g. bf16+channels_last), 'all' every switch")
    ap.add_argument('--one', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one: return run_one(args.one, args)
    cases = [c.strip() for c in args.cases.split(',')]
    if 'plain' not in cases or not all(valid_case(c) for c in cases):
        sys.exit(f"--cases must include 'plain' (the reference) and name only {', '.join(CASES)}; got {args.cases!r}")
    image_folders(args.data, args.cache)   # extract once, before any timed run
    print(f'resnet18 from scratch, {args.size} px, bs {args.bs}, {args.epochs} epoch(s), lr {args.lr}, '
          f'{args.per_class}/{args.valid_per_class} images per class, {args.threads or "default"} thread(s), '
          f'{args.workers} worker(s), '
          f'allocator pinned, {os.cpu_count()} CPUs')
    results = {c: [] for c in cases}
    for rnd in range(args.rounds):
        for c in cases:
            load = os.getloadavg()[0]
            r = run_child(c, args)
            results[c].append(r)
            print(f"round {rnd + 1} {c:<14} load {load:4.2f}  {r['secs']:7.1f} s  {r['img_s']:6.1f} img/s  "
                  f"acc {r['acc']:.3f}  {r['faults']} minor faults", flush=True)
    print_table(results, args)


if __name__ == '__main__':
    main()
