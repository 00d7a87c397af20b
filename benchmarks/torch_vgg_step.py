"""The release-sized training step in PyTorch CPU, as a same-machine, same-moment baseline.

  .venv/bin/python benchmarks/torch_vgg_step.py [--steps=5] [--threads=2] [--serve]

VGG16 as the release builds it (pools 1-3 2x2/2, pool4 3x3/1, conv5 dilated 2), three 3x3
convolutions of 512 + ReLU, a 1x1 class convolution (20 classes), global average pooling and
the multilabel soft-margin loss; SGD with momentum. 3 images of 224x224 (one group of K=3).
The release's graph over 20-channel class maps is omitted (well under 1% of the FLOPs).
Prints JSON lines: the median training step and forward (no_grad) times. With `--serve` it
builds the model once, then times one `step` or `forward` per line read from stdin and answers
each with a JSON line (`benchmarks/versus_torch.py` interleaves it with the JAX step).
"""

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'P', 'D', 'D', 'D')


def vgg_release(num_classes: int = 20) -> nn.Sequential:
  layers, cin = [], 3
  for v in CFG:
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    elif v == 'P':
      layers.append(nn.MaxPool2d(3, 1, 1))
    else:
      cout, dil = (512, 2) if v == 'D' else (v, 1)
      layers += [nn.Conv2d(cin, cout, 3, padding=dil, dilation=dil), nn.ReLU(inplace=True)]
      cin = cout
  for _ in range(3):
    layers += [nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(inplace=True)]
  layers.append(nn.Conv2d(512, num_classes, 1))
  return nn.Sequential(*layers)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--batch', type=int, default=3)
  parser.add_argument('--serve', action='store_true', help='time one step per stdin line')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = vgg_release()
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
  x = torch.randn(args.batch, 3, 224, 224)
  y = (torch.rand(args.batch, 20) < 0.2).float()

  def step():
    opt.zero_grad()
    logits = model(x).mean((2, 3))
    loss = nn.functional.multilabel_soft_margin_loss(logits, y)
    loss.backward()
    opt.step()

  def forward():
    with torch.no_grad():
      model(x)

  if args.serve:
    fns = {'step': step, 'forward': forward}
    for line in sys.stdin:
      fn = fns[line.strip()]
      t0 = time.perf_counter()
      fn()
      print(json.dumps({'op': line.strip(), 's': time.perf_counter() - t0}), flush=True)
    return
  for name, fn in (('torch.train_step', step), ('torch.forward', forward)):
    fn()
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    print(json.dumps({'name': name, 'value': statistics.median(times), 'unit': 's',
                      'images': args.batch, 'threads': args.threads,
                      'all_s': [round(t, 3) for t in times]}), flush=True)


if __name__ == '__main__':
  main()
