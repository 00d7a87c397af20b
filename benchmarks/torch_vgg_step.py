"""The release-sized training step in PyTorch CPU, as a same-machine, same-moment baseline.

  .venv/bin/python benchmarks/torch_vgg_step.py [--steps=5] [--threads=2] [--serve] [--no_graph]
      [--device=cuda] [--compile] [--width=1.0] [--size=224]

VGG16 as the release builds it (pools 1-3 2x2/2, pool4 3x3/1, conv5 dilated 2), three 3x3
convolutions of 512 + ReLU, a 1x1 class convolution (20 classes); then the release's graph over
the three 20-channel class maps, T=3 rounds of: pairwise co-attention (C/2 projections, row
softmax, sigmoid gate) for every ordered pair i != j, a 3x3 fusion of the two incoming
messages, a 1x1 ConvGRU and the (x * s + x) / 2 dropout (docs/model.md, "The release variant");
global average pooling of both readouts and the six-term multilabel soft-margin loss
(0.4 x intermediate + graph, / 6); SGD with momentum. One group of K=3 images of 224x224, as
the release loops over nodes and pairs. `--no_graph` keeps the trunk and one readout
(the graph is a small share of the FLOPs but a larger share of the time in PyTorch's loops).
Prints JSON lines: the median training step and forward (no_grad) times. With `--serve` it
builds the model once, then times one `step` or `forward` per line read from stdin and answers
each with a JSON line (`benchmarks/versus_torch.py` and `benchmarks/device_check.py` interleave
it with the JAX step). `--device=cuda` runs on the GPU (TF32 allowed for convolutions and
matmuls, as JAX does at its default precision; each timing ends with a synchronize);
`--compile` wraps the trunk and the graph in `torch.compile` (its first call compiles);
`--width`/`--size` shrink the network and the images (smoke tests).
"""

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'P', 'D', 'D', 'D')


def vgg_release(num_classes: int = 20, width: float = 1.0) -> nn.Sequential:
  """`width` scales every channel count as `gwsss_jax.models.vgg.scaled` does."""
  ch = lambda c: max(1, int(round(c * width)))
  layers, cin = [], 3
  for v in CFG:
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    elif v == 'P':
      layers.append(nn.MaxPool2d(3, 1, 1))
    else:
      cout, dil = (ch(512), 2) if v == 'D' else (ch(v), 1)
      layers += [nn.Conv2d(cin, cout, 3, padding=dil, dilation=dil), nn.ReLU(inplace=True)]
      cin = cout
  for _ in range(3):
    layers += [nn.Conv2d(cin, ch(512), 3, padding=1), nn.ReLU(inplace=True)]
    cin = ch(512)
  layers.append(nn.Conv2d(cin, num_classes, 1))
  return nn.Sequential(*layers)


class ReleaseGraph(nn.Module):
  """The release's message passing over K class maps [1, C, H, W], node by node."""

  def __init__(self, c: int = 20, k: int = 3, steps: int = 3, drop_rate: float = 0.8,
               drop_threshold: float = 0.7):
    super().__init__()
    self.k, self.steps, self.drop_rate, self.drop_threshold = k, steps, drop_rate, drop_threshold
    self.proja = nn.Conv2d(c, c // 2, 1)
    self.projb = nn.Conv2d(c, c // 2, 1)
    self.gate = nn.Conv2d(c, 1, 1, bias=False)
    self.fusion = nn.Conv2d((k - 1) * c, c, 3, padding=1)
    self.update = nn.Conv2d(2 * c, c, 1)
    self.reset = nn.Conv2d(2 * c, c, 1)
    self.out = nn.Conv2d(2 * c, c, 1)

  def message(self, receiver, sender):
    _, c, h, w = receiver.shape
    a = self.proja(receiver).flatten(2)[0]                     # [C/2, HW]
    b = self.projb(sender).flatten(2)[0]
    attention = torch.softmax(a.T @ b, dim=1)                  # rows: receiver positions
    attended = (sender.flatten(2)[0] @ attention.T).view(1, c, h, w)
    return attended * torch.sigmoid(self.gate(attended))

  def gru(self, m, state):
    both = torch.cat([m, state], 1)
    z, r = torch.sigmoid(self.update(both)), torch.sigmoid(self.reset(both))
    return state * (1 - z) + torch.tanh(self.out(torch.cat([m, state * r], 1))) * z

  def dropout(self, x):
    o = x.mean(1, keepdim=True)
    if torch.rand(()) < self.drop_rate:
      s = (o < o.amax(dim=(2, 3), keepdim=True) * self.drop_threshold).float()
    else:
      s = torch.sigmoid(o)
    return (x * s + x) / 2

  def forward(self, nodes):
    for _ in range(self.steps):
      nodes = [self.dropout(self.gru(self.fusion(torch.cat(
          [self.message(nodes[i], nodes[j]) for j in range(self.k) if j != i], 1)), nodes[i]))
               for i in range(self.k)]
    return nodes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--batch', type=int, default=3)
  parser.add_argument('--serve', action='store_true', help='time one step per stdin line')
  parser.add_argument('--no_graph', action='store_true', help='the trunk and one readout only')
  parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
  parser.add_argument('--compile', action='store_true', help='torch.compile trunk and graph')
  parser.add_argument('--width', type=float, default=1.0, help='channel multiplier')
  parser.add_argument('--size', type=int, default=224, help='image side')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device(args.device)
  if device.type == 'cuda':
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  model = vgg_release(width=args.width).to(device)
  graph = None if args.no_graph else ReleaseGraph(k=args.batch).to(device)
  params = list(model.parameters()) + ([] if graph is None else list(graph.parameters()))
  opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
  if args.compile:
    model = torch.compile(model)
    graph = None if graph is None else torch.compile(graph)
  x = torch.randn(args.batch, 3, args.size, args.size, device=device)
  y = (torch.rand(args.batch, 20) < 0.2).float().to(device)
  loss_fn = nn.functional.multilabel_soft_margin_loss
  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

  def run():
    maps = model(x)
    if graph is None:
      return maps.mean((2, 3)), None
    nodes = graph([maps[i:i + 1] for i in range(args.batch)])
    return maps.mean((2, 3)), torch.cat(nodes).mean((2, 3))

  def step():
    opt.zero_grad()
    mid, out = run()
    if out is None:
      loss = loss_fn(mid, y)
    else:
      loss = (0.4 * loss_fn(mid, y) + loss_fn(out, y)) / 2  # the six terms' mean
    loss.backward()
    opt.step()
    sync()

  def forward():
    with torch.no_grad():
      run()
    sync()

  if args.serve:
    fns = {'step': step, 'forward': forward}
    for line in sys.stdin:
      fn = fns[line.strip()]
      sync()
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
