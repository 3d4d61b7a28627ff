"""Generation actor start-up: loading a GOOD/EARLY pair with transformers vs as plain tensors.

Run: .venv/bin/python bench/actor_startup.py           (about a minute on 2 CPU cores)
     .venv/bin/python bench/actor_startup.py --quick   (one start-up per side: ~15 s, a noisy ratio)

Every Ray Data generation actor is a fresh process that imports its libraries, loads the expert and
the amateur, builds the stacked decoder and loads the tokenizer before its first shard. Each side
runs that in a fresh Python process, timed from launch to "decoder ready", in turns (A B B A ...)
so the host's drift cancels:
  transformers  cdray.models.llama.load_model (LlamaForCausalLM.from_pretrained) and load_tokenizer
                (PreTrainedTokenizerFast): the actor as it was
  light         cdray.models.weights.load_weights (config.json + safetensors) and tokenizer.load_decoder
                (the tokenizers library's own Tokenizer): the actor now
Models: the demo's GOOD shape (4x128, vocab 2000) with random weights, and --preset good (12x768,
vocab 32000, 162M) for the paper's. Last line: light_vs_transformers=X (start-up seconds, light /
transformers; < 1 is faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ACTOR = """
import sys, torch
sys.path.insert(0, {root!r})
from pathlib import Path
from cdray.config import DecodingConfig
from cdray.decode.engine import Decoder
torch.set_num_threads(1)
good, early, tok = Path({good!r}), Path({early!r}), Path({tok!r})
if {light!r}:
    from cdray.data.tokenizer import load_decoder
    from cdray.models.weights import load_weights
    expert, amateur, tokenizer = load_weights(good), load_weights(early), load_decoder(tok)
else:
    from cdray.models.llama import load_model
    from cdray.data.tokenizer import load_tokenizer
    expert, amateur, tokenizer = load_model(good), load_model(early), load_tokenizer(tok)
decoder = Decoder(expert, amateur, "contrastive", DecodingConfig())
print("imported transformers' Llama:", "transformers.models.llama.modeling_llama" in sys.modules)
"""


def make_pair(tmp: Path, layers: int, hidden: int, heads: int, vocab: int) -> tuple[Path, Path, Path]:
    import torch
    from test_generation import save_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=512, tie_word_embeddings=False)
    paths = []
    for seed, name in ((0, "good"), (1, "early")):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(tmp / name)
        paths.append(tmp / name)
    tok = save_tokenizer(tmp / "tok")
    config = json.loads((tok / "tokenizer_config.json").read_text())  # as cdray's trainer writes it
    (tok / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": False}))
    return paths[0], paths[1], tok


def run_actor(good: Path, early: Path, tok: Path, light: bool) -> tuple[float, str]:
    code = ACTOR.format(root=str(ROOT), good=str(good), early=str(early), tok=str(tok), light=light)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4, help="runs per side, in turns")
    p.add_argument("--preset", choices=["demo", "good"], default="demo")
    p.add_argument("--quick", action="store_true", help="one run per side (= --repeats 1)")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    shape = {"demo": (4, 128, 4, 2000), "good": (12, 768, 12, 32000)}[args.preset]
    with tempfile.TemporaryDirectory() as d:
        good, early, tok = make_pair(Path(d), *shape)
        times: dict[str, list[float]] = {"transformers": [], "light": []}
        for i in range(args.repeats):
            for light in ((False, True) if i % 2 == 0 else (True, False)):
                name = "light" if light else "transformers"
                secs, line = run_actor(good, early, tok, light)
                times[name].append(secs)
                print(f"  {name:12s} {secs:6.2f} s  ({line})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.preset} shape {shape}: median start-up transformers {med['transformers']:.2f} s, "
          f"light {med['light']:.2f} s (of {args.repeats} each)")
    print(f"light_vs_transformers={med['light'] / med['transformers']:.2f}")


if __name__ == "__main__":
    main()
