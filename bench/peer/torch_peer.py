#!/usr/bin/env python3
"""titans-mm's peer on the same machine: PyTorch on the CPU, the framework a user without a GPU
would pick instead. It runs the configurations of `npm run bench -- --peer` (bench/model.ts):

- decode: tokens/s of the original's default text model (384 wide, 8 deep, 8 heads of 64, segments
  of 32 with 4 long-term memory tokens, 4 persistent key/value pairs, rotary positions) after a
  prompt of each context length, with a cache of one attention window; every layer reads its
  neural memory (a 2-layer MLP per head, expansion 4, in a residual LayerNorm) and stores each
  completed window of 36 rows (the surprise by autograd, momentum and forgetting), as titans-mm's
  MAC model does;
- prefill: tokens/s reading a prompt of the longest context window by window, the same model;
- encode: milliseconds of torchvision's ViT-B/16 on one 224 x 224 image;
- train: tokens/s of training steps of the same text model on one sequence of 256 tokens: the
  next-token loss, backward through every store (the surprise's graph kept, as titans-mm
  differentiates through its stores, which learns the memory's initial weights too), AdamW.

With --precision bfloat16 (titans-mm's MAC_MATMUL_PRECISION=bfloat16) decode, prefill and encode
run under torch.autocast('cpu', dtype=torch.bfloat16), PyTorch's way to multiply in bfloat16 on a
CPU, and the training figure is left out. Weights are random: speed does not depend on them. Each figure is the best of three timed runs,
as bench/model.ts takes it, after 512 decoded tokens (or 6 seconds of them) as a warm-up. With
--json every figure is one JSON line {"figure", "value", "unit"}, the first line describes the
peer, and a missing PyTorch is one line {"unavailable": reason}. Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: they slow a
current OpenBLAS.
"""
import argparse
import ctypes
import json
import os
import platform
import sys
import time

D, LAYERS, HEADS, DH, SEGMENT, LONGTERM, PERSIST, VOCAB = 384, 8, 8, 64, 32, 4, 4, 256
WINDOW = SEGMENT + LONGTERM
MAX_LR, MAX_GRAD_NORM = 0.1, 1.0
WARM_UP_TOKENS, WARM_UP_SECONDS = 512, 6  # bench/model.ts's
TRAIN_TOKENS = 256  # one sequence of 8 segments a training step


def emit(args, record):
    if args.json:
        print(json.dumps(record), flush=True)
    elif 'figure' in record:
        print(f"{record['figure']}: {record['value']:.2f} {record['unit']}", flush=True)
    else:
        print(', '.join(f'{k}: {v}' for k, v in record.items()), flush=True)


def build(torch):
    nn, F = torch.nn, torch.nn.functional
    inner = HEADS * DH

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def rotary(positions):
        freqs = 10000 ** (-torch.arange(DH // 2, dtype=torch.float32) / (DH // 2))
        angles = positions[:, None].float() * freqs[None, :]
        return torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rotate(x, cos, sin):
        x1, x2 = x[..., : DH // 2], x[..., DH // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    class Memory(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(D))
            self.qkv = nn.Linear(D, 3 * inner, bias=False)
            self.out = nn.Linear(inner, D, bias=False)
            self.gates = nn.Linear(D, 3 * HEADS)  # step size, momentum, forgetting
            self.w1 = nn.Parameter(torch.randn(HEADS, DH, 4 * DH) / DH ** 0.5)
            self.w2 = nn.Parameter(torch.randn(HEADS, 4 * DH, DH) / (4 * DH) ** 0.5)
            self.gamma = nn.Parameter(torch.zeros(HEADS, 1, DH))

        def net(self, weights, x):  # x [H, n, dh]
            w1, w2, gamma = weights
            h = F.gelu(x @ w1, approximate='tanh') @ w2
            return F.layer_norm(h, (DH,)) * (1 + gamma) + x

        def initial(self, training):
            # Training learns the memory's initial weights through every store, as titans-mm does.
            weights = [self.w1, self.w2, self.gamma] if training else [self.w1.detach().clone(), self.w2.detach().clone(), self.gamma.detach().clone()]
            return {'weights': weights, 'momentum': [torch.zeros_like(w) for w in weights], 'rows': [], 'training': training}

        def read(self, x, state):
            n = rms(x) * self.gain
            q, k, v = self.qkv(n).view(-1, 3, HEADS, DH).permute(1, 2, 0, 3)
            state['rows'].append((n, k, v))
            retrieved = self.net(state['weights'], F.normalize(q, dim=-1))
            return self.out(retrieved.transpose(0, 1).reshape(-1, inner))

        def store(self, state):
            n, k, v = (torch.cat(parts, dim) for parts, dim in zip(zip(*state['rows']), (0, 1, 1)))
            state['rows'] = []
            training = state['training']
            with torch.enable_grad():
                # Training differentiates through the surprise: its graph is kept (create_graph).
                weights = state['weights'] if training else [w.detach().requires_grad_() for w in state['weights']]
                theta = torch.sigmoid(self.gates(n)[:, :HEADS]).t().unsqueeze(-1) * MAX_LR
                loss = ((self.net(weights, F.normalize(k, dim=-1)) - v) ** 2).mean(-1, keepdim=True).mul(theta).sum()
                grads = torch.autograd.grad(loss, weights, create_graph=training)
            norm = torch.sqrt(sum(g.pow(2).flatten(1).sum(-1) for g in grads) + 1e-12)
            scale = torch.clamp(MAX_GRAD_NORM / norm, max=1.0).view(HEADS, 1, 1)
            gates = torch.sigmoid(self.gates(n.mean(0)))
            eta, alpha = gates[HEADS:2 * HEADS].view(HEADS, 1, 1), gates[2 * HEADS:].view(HEADS, 1, 1)
            state['momentum'] = [eta * m - g * scale for m, g in zip(state['momentum'], grads)]
            state['weights'] = [(1 - alpha) * w + m for w, m in zip(state['weights'], state['momentum'])]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.memory = Memory()
            self.attention_gain, self.ff_gain = nn.Parameter(torch.ones(D)), nn.Parameter(torch.ones(D))
            self.qkv, self.out = nn.Linear(D, 3 * inner, bias=False), nn.Linear(inner, D, bias=False)
            self.persistent = nn.Parameter(torch.randn(2, HEADS, PERSIST, DH) * 0.02)
            self.ff = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(approximate='tanh'), nn.Linear(4 * D, D))

        def forward(self, x, offset, cache, state, rotation):
            """Rows x [n, D] at window positions offset.., rotated by `rotation` (cos, sin); cache: this window's rotated keys and values."""
            x = x + self.memory.read(x, state)
            q, k, v = self.qkv(rms(x) * self.attention_gain).view(-1, 3, HEADS, DH).permute(1, 2, 0, 3)
            cos, sin = rotation
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            if offset == 0:
                cache['k'], cache['v'] = self.persistent[0], self.persistent[1]
            cache['k'], cache['v'] = torch.cat([cache['k'], k], 1), torch.cat([cache['v'], v], 1)
            n, total = x.shape[0], cache['k'].shape[1]
            mask = None
            if n > 1:
                mask = torch.ones(n, total, dtype=torch.bool).tril(total - n)
            a = F.softmax((q @ cache['k'].transpose(1, 2)) / DH ** 0.5 + (0 if mask is None else (~mask) * -1e9), -1) @ cache['v']
            x = x + self.out(a.transpose(0, 1).reshape(-1, inner))
            return x + self.ff(rms(x) * self.ff_gain)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, D)
            self.longterm = nn.Parameter(torch.randn(LONGTERM, D) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.gain = nn.Parameter(torch.ones(D))
            self.logits = nn.Linear(D, VOCAB, bias=False)

        def start(self, training=False):
            return {'length': 0, 'caches': [{} for _ in self.blocks], 'memory': [b.memory.initial(training) for b in self.blocks]}

        def step(self, tokens, state):
            """Tokens [n] inside one segment that continue `state`: logits [n, V]."""
            offset = state['length'] % SEGMENT
            x = self.embedding(tokens)
            if offset == 0:
                x = torch.cat([self.longterm, x], 0)
            row = 0 if offset == 0 else LONGTERM + offset
            # Once a step, as titans-mm builds its rotation: every layer reads the same positions.
            rotation = rotary(torch.arange(row, row + x.shape[0]))
            for block, cache, memory in zip(self.blocks, state['caches'], state['memory']):
                x = block(x, row, cache, memory, rotation)
                if row + x.shape[0] == WINDOW:
                    block.memory.store(memory)
            state['length'] += tokens.shape[0]
            return self.logits(rms(x[-tokens.shape[0]:]) * self.gain)

        def read(self, tokens, state):
            for start in range(0, tokens.shape[0], SEGMENT):
                logits = self.step(tokens[start:start + SEGMENT], state)
            return logits

        def loss(self, tokens):
            """Mean next-token cross-entropy over tokens [n + 1], read window by window with the memory learning."""
            state = self.start(training=True)
            logits = torch.cat([self.step(tokens[start:start + SEGMENT], state) for start in range(0, tokens.shape[0] - 1, SEGMENT)])
            return F.cross_entropy(logits[:tokens.shape[0] - 1], tokens[1:])

    return Model().eval()


def blas_library(torch):
    """
    The BLAS PyTorch was built for and, on Linux, the library it loaded (Debian's is an alternative),
    with the threads an OpenBLAS runs its products on: torch.set_num_threads does not set those.
    """
    info = next((item.split('BLAS_INFO=')[1] for item in torch.__config__.show().replace('\n', ',').split(',') if 'BLAS_INFO=' in item), 'unknown')
    torch.randn(64, 64) @ torch.randn(64, 64)
    try:
        with open('/proc/self/maps') as maps:
            paths = sorted({line.split()[-1] for line in maps if 'blas' in os.path.basename(line.split()[-1]).lower()})
    except OSError:
        paths = []
    if not paths:
        return info
    threads = next((n for n in map(openblas_threads, paths) if n is not None), None)
    return f"{info} ({', '.join(map(os.path.basename, paths))}){f', {threads} thread(s)' if threads else ''}"


def openblas_threads(path):
    """The threads of the OpenBLAS at `path`, or None for a library that is no OpenBLAS."""
    try:
        return ctypes.CDLL(path).openblas_get_num_threads()
    except (OSError, AttributeError):
        return None


def best_of(runs, fn):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=os.cpu_count(), help='torch.set_num_threads (default: every core)')
    parser.add_argument('--contexts', default='64,2048', help='decode contexts, comma-separated')
    parser.add_argument('--figures', default='decode,prefill,encode', help='which figures, comma-separated')
    parser.add_argument('--precision', choices=['float32', 'bfloat16'], default='float32', help='of the products of decode, prefill and encode')
    parser.add_argument('--json', action='store_true', help='one JSON object per line')
    args = parser.parse_args()
    try:
        import torch
        import torchvision
    except ImportError as error:
        emit(args, {'unavailable': f'PyTorch is not installed for {sys.executable} ({error})'})
        return 0
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    emit(args, {'peer': f'PyTorch {torch.__version__} CPU, torchvision {torchvision.__version__}',
                'threads': torch.get_num_threads(), 'precision': args.precision, 'python': platform.python_version(), 'blas': blas_library(torch)})
    figures = args.figures.split(',')
    if args.precision == 'bfloat16' and 'train' in figures:
        figures.remove('train')
    contexts = [int(c) for c in args.contexts.split(',')]
    text = prompt = None
    if {'decode', 'prefill', 'train'} & set(figures):
        text = build(torch)
        prompt = torch.arange(max(contexts)) % 90 + 32
    precision = torch.autocast('cpu', dtype=torch.bfloat16, enabled=args.precision == 'bfloat16')
    with torch.no_grad(), precision:
        if text is not None:
            # As bench/model.ts warms up its model before the first timed figure.
            state = text.start()
            text.read(prompt[:2 * SEGMENT], state)
            started = time.perf_counter()
            for _ in range(WARM_UP_TOKENS):
                if time.perf_counter() - started > WARM_UP_SECONDS:
                    break
                text.step(torch.tensor([101]), state)
        if 'decode' in figures:
            token = torch.tensor([101])
            for context in contexts:
                state = text.start()
                text.read(prompt[:context], state)

                def decode(count):
                    for _ in range(count):
                        text.step(token, state)
                decode(SEGMENT)  # warm-up: every key length of a window once
                per_token = best_of(3, lambda: decode(2 * SEGMENT)) / (2 * SEGMENT)
                emit(args, {'figure': f'decode at context {context}', 'value': 1 / per_token, 'unit': 'tokens/s'})
        if 'prefill' in figures:
            length = max(contexts)
            text.read(prompt[:SEGMENT * 4], text.start())  # warm-up
            seconds = best_of(1, lambda: text.read(prompt[:length], text.start()))
            emit(args, {'figure': f'prefill of {length} tokens', 'value': length / seconds, 'unit': 'tokens/s'})
        if 'encode' in figures:
            vit = torchvision.models.vit_b_16(weights=None).eval()
            image = torch.randn(1, 3, 224, 224)
            if args.precision == 'bfloat16':
                # Under autocast, PyTorch 1.13's fused attention of an eval-mode ViT fails on
                # bfloat16 inputs; the model cast to bfloat16 runs, and is PyTorch's faster way.
                vit, image = vit.to(torch.bfloat16), image.to(torch.bfloat16)
            vit(image)
            emit(args, {'figure': 'ViT-B/16 encode of one image', 'value': best_of(3, lambda: vit(image)) * 1000, 'unit': 'ms'})
    if 'train' in figures:
        optimizer = torch.optim.AdamW(text.parameters(), lr=1e-4)
        tokens = torch.arange(TRAIN_TOKENS + 1) % 90 + 32

        def train_step():
            optimizer.zero_grad()
            text.loss(tokens).backward()
            optimizer.step()
        for _ in range(3):  # warm-up, as bench/model.ts's
            train_step()
        seconds = best_of(3, train_step)
        emit(args, {'figure': f'training step on {TRAIN_TOKENS} tokens', 'value': TRAIN_TOKENS / seconds, 'unit': 'tokens/s'})
    return 0


if __name__ == '__main__':
    sys.exit(main())
