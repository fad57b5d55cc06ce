"""Build the small Fashion-MNIST sample shipped in learnerlab/samples/ from the Debian package's files.

    apt-get update && apt-get install -y dataset-fashion-mnist
    python scripts/make_sample.py                 # writes learnerlab/samples/fashion_mnist_sample.tgz (+ .sha256)
    python scripts/make_sample.py --check         # rebuild in memory; same files and pixels as the shipped archive?

The archive is an image-folder tree, the same layout as Imagenette, so the same `get_data` reads both:

    fashion_mnist_sample/LICENSE              Fashion-MNIST's MIT licence notice (Zalando SE)
    fashion_mnist_sample/README.md            what the sample is and how it was made
    fashion_mnist_sample/train/<class>/NNNNN.png   the first N_TRAIN images of each class of the training set
    fashion_mnist_sample/val/<class>/NNNNN.png     the first N_VALID images of each class of the test set

(NNNNN is the image's index in the original idx file.) The build is byte-for-byte reproducible: images are
written as PNG by Pillow, tar members carry no time stamps or owners, and gzip's header time is 0.
"""
import argparse, gzip, hashlib, io, struct, sys, tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path('/usr/share/datasets/fashion-mnist')
OUT = Path(__file__).resolve().parent.parent/'learnerlab'/'samples'
NAME = 'fashion_mnist_sample'
N_TRAIN, N_VALID = 250, 50          # images per class: 2,500 training and 500 validation images
CLASSES = ['T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle_boot']

LICENSE = """Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist)
The images in this sample are a subset of Fashion-MNIST, taken from the Debian package
`dataset-fashion-mnist` and re-encoded as PNG files by learnerlab's scripts/make_sample.py.

The MIT License (MIT)
Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README = f"""# Fashion-MNIST sample

{N_TRAIN} training images per class (from `train-images-idx3-ubyte.gz`) and {N_VALID} validation images per class
(from `t10k-images-idx3-ubyte.gz`), 28x28 greyscale PNG files, in `train/<class>/` and `val/<class>/`.
File names are the images' indices in the original files. Built by learnerlab's `scripts/make_sample.py` from
the Debian package `dataset-fashion-mnist`; licence: see LICENSE (MIT, Zalando SE).
"""

def read_idx(path):
    "The array stored in the gzipped idx file at `path` (uint8 images or labels)."
    data = gzip.decompress(Path(path).read_bytes())
    magic, = struct.unpack('>I', data[:4])
    if magic >> 8 != 0x08: raise ValueError(f"{path}: not an idx file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xff
    shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)

def first_per_class(labels, n):
    "Indices of the first `n` items of each class, in file order."
    idxs = []
    for c in range(len(CLASSES)):
        found = np.nonzero(labels == c)[0][:n]
        if len(found) < n: raise ValueError(f"class {CLASSES[c]} has only {len(found)} items, need {n}")
        idxs += found.tolist()
    return sorted(idxs, key=lambda i: (labels[i], i))

def png_bytes(img):
    "A 28x28 uint8 array encoded as a greyscale PNG."
    buf = io.BytesIO()
    Image.fromarray(img, mode='L').save(buf, format='PNG', optimize=False, compress_level=9)
    return buf.getvalue()

def _add(tar, name, data=None):
    "Add a file (bytes `data`) or, when `data` is None, a folder named `name`, with no time stamp or owner."
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, '', ''
    if data is None: info.type, info.mode = tarfile.DIRTYPE, 0o755
    else: info.size, info.mode = len(data), 0o644
    tar.addfile(info, None if data is None else io.BytesIO(data))

def build_archive(src=SRC):
    "The bytes of the sample archive, built from the idx files in `src`."
    splits = [('train', 'train', N_TRAIN), ('val', 't10k', N_VALID)]
    raw = io.BytesIO()
    with gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            _add(tar, NAME)
            _add(tar, f'{NAME}/LICENSE', LICENSE.encode())
            _add(tar, f'{NAME}/README.md', README.encode())
            for split, prefix, n in splits:
                imgs = read_idx(src/f'{prefix}-images-idx3-ubyte.gz')
                labels = read_idx(src/f'{prefix}-labels-idx1-ubyte.gz')
                _add(tar, f'{NAME}/{split}')
                for c in CLASSES: _add(tar, f'{NAME}/{split}/{c}')
                for i in first_per_class(labels, n):
                    _add(tar, f'{NAME}/{split}/{CLASSES[labels[i]]}/{i:05d}.png', png_bytes(imgs[i]))
    return raw.getvalue()

def _contents(archive_bytes):
    "Member name -> content of a sample archive; images decoded to pixel bytes (encoder versions may differ)."
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode='r:gz') as tar:
        for m in tar:
            if not m.isfile(): out[m.name] = None; continue
            data = tar.extractfile(m).read()
            out[m.name] = Image.open(io.BytesIO(data)).tobytes() if m.name.endswith('.png') else data
    return out

def same_content(a, b):
    "Whether two sample archives hold the same files and the same pixels."
    return _contents(a) == _contents(b)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--src', type=Path, default=SRC, help='folder with the Fashion-MNIST idx files (default: %(default)s)')
    p.add_argument('--out', type=Path, default=OUT, help='folder to write the sample to (default: %(default)s)')
    p.add_argument('--check', action='store_true', help='only rebuild and compare with the archive in --out')
    args = p.parse_args(argv)
    if not (args.src/'train-images-idx3-ubyte.gz').exists():
        sys.exit(f"no Fashion-MNIST files in {args.src}: run `apt-get install -y dataset-fashion-mnist` or pass --src")
    data = build_archive(args.src)
    digest = hashlib.sha256(data).hexdigest()
    archive = args.out/f'{NAME}.tgz'
    if args.check:
        shipped = archive.read_bytes()
        print(f'rebuilt {digest}\nshipped {hashlib.sha256(shipped).hexdigest()}')
        same = same_content(data, shipped)
        print('same bytes' if hashlib.sha256(shipped).hexdigest() == digest else
              'same images and files, different PNG/gzip encoding' if same else 'DIFFERENT content')
        sys.exit(0 if same else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(data)
    (args.out/f'{NAME}.tgz.sha256').write_text(f'{digest}  {NAME}.tgz\n')
    (args.out/'LICENSE-fashion-mnist.txt').write_text(LICENSE)
    print(f'wrote {archive} ({len(data):,} bytes)\nsha256 {digest}')

if __name__ == '__main__': main()
