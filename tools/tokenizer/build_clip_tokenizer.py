#!/usr/bin/env python3
"""Build the CLIP BPE tokenizer files from open_clip's bpe_simple_vocab_16e6.txt.gz.

Run with the transformers-4.x venv (it still has the *slow*, pure-Python CLIPTokenizer
that diffusers uses for SDXL under transformers 4.x, plus CLIPTokenizerFast):

    /opt/tf4env/bin/python tools/tokenizer/build_clip_tokenizer.py [--refenv /opt/refenv/bin/python]

Writes
  tests/fixtures/tiny-sdxl/tokenizer/{vocab.json,merges.txt,tokenizer_config.json,special_tokens_map.json}
  tests/fixtures/tiny-sdxl/tokenizer_2/...   (same files, pad_token "!")
    (the two json files are stabilityai/stable-diffusion-xl-base-1.0's, from tools/reference/tiny_config.py)
  assets/clip_tokenizer.json.gz             (CLIPTokenizerFast tokenizer.json, gzip, mtime 0)
  tests/fixtures/tokenizer_cases.json

The vocab is built exactly like OpenAI's simple_tokenizer / HF: 256 byte symbols, the same
256 symbols + "</w>", 48894 merges (lines 1..48894 of the gz after the header line), then
<|startoftext|> = 49406 and <|endoftext|> = 49407.
"""
import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIX, "tiny-sdxl")
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import tiny_config as TC  # noqa: E402  (the published tokenizer configs)


def find_bpe_gz():
    # open_clip ships the original OpenAI file. Prefer the refenv copy, fall back to an import.
    cands = []
    try:
        import open_clip  # noqa: F401

        cands.append(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))
    except Exception:
        pass
    for base in ("/opt/refenv/lib",):
        for dp, _, fns in os.walk(base):
            if "bpe_simple_vocab_16e6.txt.gz" in fns and dp.endswith("open_clip"):
                cands.append(os.path.join(dp, "bpe_simple_vocab_16e6.txt.gz"))
    for c in cands:
        if os.path.exists(c):
            return c
    raise SystemExit("bpe_simple_vocab_16e6.txt.gz not found (install open_clip_torch)")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab(bpe_gz):
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    assert len(merges) == 48894, len(merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408
    enc = {v: i for i, v in enumerate(vocab)}
    assert len(enc) == 49408, "duplicate tokens"
    return enc, merges


# ~60 prompts. A few (marked in KNOWN_FTFY) are expected to differ between the slow tokenizer
# (ftfy.fix_text: uncurls quotes, folds full-width chars / ligatures, unescapes HTML; Python
# str.lower) and the fast (tokenizers) one, which only does NFC + whitespace collapse + per-char lowercase.
CORPUS = [
    "",
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a fox in the snow, highly detailed",
    "a red cube on a blue table",
    "a castle on a hill at sunset",
    "blurry, low quality",
    "photorealistic",
    "Photorealistic, 8K, UHD, HDR, masterpiece",
    "A Cat",
    "HELLO WORLD",
    "hello    world",
    "  leading and trailing spaces  ",
    "line one\nline two\n\nline three",
    "tabs\tand\ttabs",
    "wow!!!",
    "wow!!!!!!!!!!!!",
    "what?! really?!",
    "...",
    "a, b; c: d. e! f? g",
    "(masterpiece:1.2), (best quality:1.1), [ugly], {cute}",
    "((very detailed)) <lora:foo:0.8>",
    "1girl, solo, long hair",
    "1234567890",
    "3.14159 and 2,718",
    "year 2023 model x-100",
    "it's a dog's life, we're they've I'm you'll he'd",
    "IT'S LOUD",
    "don't stop",
    "e-mail: someone@example.com",
    "http://example.com/path?q=1&r=2",
    "#hashtag @mention $100 50% ^_^ ~tilde~ `code`",
    'quotes "double" and \'single\'',
    "slash/back\\slash|pipe",
    "café crème brûlée",
    "naïve résumé façade",
    "Ærøskøbing straße",
    "Ελληνικά γράμματα",
    "ΟΔΟΣ",
    "Привет, мир",
    "日本語のテキスト",
    "中文提示词，一只猫",
    "한국어 문장",
    "emoji 😀🎉🐱‍👤 test",
    "👍🏽 thumbs",
    "❤️ love ❤",
    "a\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
    "combining e\u0301 vs \u00e9",
    "<|startoftext|>",
    "<|endoftext|>",
    "text with <|endoftext|> inside",
    "a" * 100,
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "dog " * 90,
    "A highly detailed, intricate, photorealistic portrait of an elderly fisherman with a weathered face, "
    "deep wrinkles, piercing blue eyes, wearing a yellow raincoat, standing on a wooden pier at dawn, "
    "soft golden light, mist over the water, seagulls in the background, shot on a Hasselblad medium format "
    "camera, 80mm lens, f/2.8, shallow depth of field, film grain, award winning photography, trending on artstation",
    "ugly, deformed, noisy, blurry, distorted, out of focus, bad anatomy, extra limbs, poorly drawn face, "
    "poorly drawn hands, missing fingers",
    "“curly quotes” and ‘apostrophes’",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
    "ﬁne ligature",
    "fish &amp; chips",
]
KNOWN_FTFY = {
    # Python str.lower() applies the Greek final-sigma rule (Σ -> ς at word end); tokenizers'
    # Lowercase normalizer lowercases per char (Σ -> σ).
    "ΟΔΟΣ",
    "“curly quotes” and ‘apostrophes’",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
    "ﬁne ligature",
    "fish &amp; chips",
}

def normalisation_agrees(p):
    """True when the slow tokenizer's normalisation (ftfy.fix_text + str.lower) should give the
    same text as the fast one's (NFC + per-char lowercase)."""
    import unicodedata

    import ftfy

    nfc = unicodedata.normalize("NFC", p)
    return ftfy.fix_text(p) == nfc and p.lower() == "".join(ch.lower() for ch in p)


V5_CHECK = r"""
import json, sys
from transformers import CLIPTokenizer
from tokenizers import Tokenizer
corpus = json.load(open(sys.argv[1]))
t1 = CLIPTokenizer.from_pretrained(sys.argv[2])
t2 = CLIPTokenizer.from_pretrained(sys.argv[3])
raw = Tokenizer.from_file(sys.argv[4])
out = []
for p in corpus:
    out.append({
        "no_pad": t1(p, add_special_tokens=True).input_ids,
        "raw_tokenizer_json": raw.encode(p).ids,
        "tok1": t1(p, padding="max_length", max_length=77, truncation=True).input_ids,
        "tok2": t2(p, padding="max_length", max_length=77, truncation=True).input_ids,
    })
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refenv", default="/opt/refenv/bin/python", help="python of the diffusers/transformers-5 env (cross-check); '' to skip")
    args = ap.parse_args()

    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    assert transformers.__version__.startswith("4."), "run with the transformers 4.x env (slow CLIPTokenizer needed)"
    import ftfy  # noqa: F401  (slow tokenizer must use ftfy, like a normal diffusers install)

    enc, merges = build_vocab(find_bpe_gz())
    work = tempfile.mkdtemp()
    vocab_path = os.path.join(work, "vocab.json")
    merges_path = os.path.join(work, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(enc, f, ensure_ascii=False, separators=(",", ":"))
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")

    # Tokenizer folders of the tiny model, as in the real stabilityai/stable-diffusion-xl-base-1.0 repo:
    # vocab.json, merges.txt and the published tokenizer_config.json / special_tokens_map.json
    # (tools/reference/tiny_config.py; no tokenizer.json).
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        d = os.path.join(TINY, sub)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        files = TC.TOKENIZER_FILES[sub]
        assert files["special_tokens_map.json"]["pad_token"] == files["tokenizer_config.json"]["pad_token"] == pad
        for fn, content in files.items():
            with open(os.path.join(d, fn), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, sort_keys=True, ensure_ascii=False)
                f.write("\n")
        for fn in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(work, fn), os.path.join(d, fn))

    slow = CLIPTokenizer(vocab_path, merges_path, model_max_length=77)
    slow1 = CLIPTokenizer.from_pretrained(os.path.join(TINY, "tokenizer"))
    slow2 = CLIPTokenizer.from_pretrained(os.path.join(TINY, "tokenizer_2"))
    assert slow2.pad_token_id == 0 and slow1.pad_token_id == 49407
    assert slow.bos_token_id == 49406 and slow.eos_token_id == 49407 and len(slow) == 49408

    fast = CLIPTokenizerFast(vocab_file=vocab_path, merges_file=merges_path, model_max_length=77)
    tj = os.path.join(work, "tokenizer.json")
    fast.backend_tokenizer.save(tj)
    os.makedirs(os.path.join(ROOT, "assets"), exist_ok=True)
    with open(tj, "rb") as f:
        data = f.read()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(data)
    with open(os.path.join(ROOT, "assets", "clip_tokenizer.json.gz"), "wb") as f:
        f.write(buf.getvalue())
    print(f"tokenizer.json {len(data)} bytes -> assets/clip_tokenizer.json.gz {len(buf.getvalue())} bytes")

    cases = []
    n_diff = 0
    for p in CORPUS:
        s = slow(p, add_special_tokens=True).input_ids
        fz = fast(p, add_special_tokens=True).input_ids
        same = s == fz
        if not same:
            n_diff += 1
            print(f"slow != fast for {p!r}:\n  slow {s}\n  fast {fz}")
            assert p in KNOWN_FTFY or not normalisation_agrees(p), f"unexpected slow/fast mismatch for {p!r}"
        c = {
            "prompt": p,
            "ids_no_padding": s,
            "ids_tokenizer": slow1(p, padding="max_length", max_length=77, truncation=True).input_ids,
            "ids_tokenizer_2": slow2(p, padding="max_length", max_length=77, truncation=True).input_ids,
            "slow_equals_fast": same,
        }
        if not same:
            c["ids_no_padding_fast"] = fz
        assert len(c["ids_tokenizer"]) == 77 and len(c["ids_tokenizer_2"]) == 77
        cases.append(c)
    print(f"{len(CORPUS)} prompts, slow!=fast for {n_diff} (all explained by ftfy / final-sigma lowercasing)")

    if args.refenv:
        cj = os.path.join(work, "corpus.json")
        with open(cj, "w") as f:
            json.dump(CORPUS, f)
        r = subprocess.run(
            [args.refenv, "-c", V5_CHECK, cj, os.path.join(TINY, "tokenizer"), os.path.join(TINY, "tokenizer_2"), tj],
            check=True, capture_output=True, text=True,
        )
        v5 = json.loads(r.stdout.strip().splitlines()[-1])
        n5 = 0
        for c, o in zip(cases, v5):
            fz = c.get("ids_no_padding_fast", c["ids_no_padding"])
            assert o["raw_tokenizer_json"] == fz, c["prompt"]
            assert o["no_pad"] == fz, c["prompt"]
            if o["tok1"] != c["ids_tokenizer"] or o["tok2"] != c["ids_tokenizer_2"]:
                n5 += 1
                assert not c["slow_equals_fast"], c["prompt"]
                c["ids_tokenizer_fast"] = o["tok1"]
                c["ids_tokenizer_2_fast"] = o["tok2"]
        print(f"transformers-5 (diffusers env) tokenizers agree with the fast/tokenizer.json ids; padded ids differ from slow on {n5} prompts")

    meta = {
        "description": "CLIP tokenizer cases. ids_* come from the slow (python, ftfy) transformers-4 CLIPTokenizer; "
        "for prompts where slow != fast (ftfy normalisation), *_fast fields hold the tokenizers/tokenizer.json ids.",
        "transformers_version": transformers.__version__,
        "cases": cases,
    }
    with open(os.path.join(FIX, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(FIX, "tokenizer_cases.meta.json"), "w") as f:
        json.dump({k: v for k, v in meta.items() if k != "cases"}, f, indent=1)
        f.write("\n")
    shutil.rmtree(work)
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
