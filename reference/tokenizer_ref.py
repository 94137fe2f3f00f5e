#!/usr/bin/env python3
"""Reference fixtures for the tokenizer tests, from HF tokenizers / transformers.

Run on the machine that has tokenizers (0.23) and transformers (5.x), from the
repository root:

    python3 reference/make_tokenizer_corpus.py          # (corpus is committed; optional)
    python3 reference/tokenizer_ref.py --out OUT

Writes (layout mirrors tests/data/tokenizer/, so `cp -r OUT/. tests/data/tokenizer/`):

    OUT/phi3/expected.jsonl        one JSON object per corpus line (see below), Phi-3(.5)-vision
                                   tokenizer.json via tokenizers.Tokenizer.from_file
    OUT/phi3/chat_expected.json    10 conversations rendered by transformers'
                                   apply_chat_template(tokenize=False, add_generation_prompt=True)
                                   with the tokenizer_config.json chat_template, plus the
                                   prompt -> input_ids of spec §2.4 computed with tokenizers
    OUT/bytelevel/tokenizer.json   a byte-level BPE (~8k vocab, GPT-2 ByteLevel pre-tokenizer and
                                   decoder, added tokens with lstrip/rstrip/single_word/normalized,
                                   a TemplateProcessing post-processor), trained here
    OUT/bytelevel/expected.jsonl
    OUT/metaspace/tokenizer.json   a SentencePiece-style BPE (NFKC + Replace(regex) + Lowercase,
                                   Digits + Metaspace(prepend_scheme=first), byte fallback), trained here
    OUT/metaspace/expected.jsonl
    OUT/reference_info.json        library versions, corpus sha256

expected.jsonl line i (0-based) belongs to corpus line i:
    {"ids": [...],                 encode(line, add_special_tokens=False).ids
     "ids_special": [...],         encode(line, add_special_tokens=True).ids
     "decoded_hex": "..",          decode(ids, skip_special_tokens=False), UTF-8 bytes as hex
     "decoded_skip_hex": "..",     decode(ids_special, skip_special_tokens=True), as hex
     "roundtrip": true|false}      decode(ids, skip_special_tokens=False) == line
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data", "tokenizer")


def read_lines(path):
    text = open(path, "rb").read().decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def write_expected(tok, lines, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    plain = tok.encode_batch(lines, add_special_tokens=False)
    special = tok.encode_batch(lines, add_special_tokens=True)
    n_rt = 0
    with open(path, "w", encoding="utf-8") as f:
        for line, a, b in zip(lines, plain, special):
            dec = tok.decode(a.ids, skip_special_tokens=False)
            dec_skip = tok.decode(b.ids, skip_special_tokens=True)
            rt = dec == line
            n_rt += rt
            f.write(json.dumps({
                "ids": a.ids,
                "ids_special": b.ids,
                "decoded_hex": dec.encode("utf-8").hex(),
                "decoded_skip_hex": dec_skip.encode("utf-8").hex(),
                "roundtrip": rt,
            }) + "\n")
    print(f"{path}: {len(lines)} lines, {n_rt} round-trip")


def prose(rng, n):
    words = ("the of and to in is was that for it with as on be at by had are but from or have an "
             "they which one you were her all she there would their we him been has when who will "
             "more no if out so said what up its about into than them can only other new some could "
             "time these two may then do first any my now such like our over man me even most made "
             "after also did many before must through back years where much your way well down "
             "model image token vision language memory tensor kernel").split()
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))
        out.append(s.capitalize() + rng.choice([".", "!", "?", ",", ";"]))
    return out


def train_bytelevel(lines, out_dir):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    rng = random.Random(7)
    texts = lines * 3 + prose(rng, 20000)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([
        AddedToken("<mask>", lstrip=True, rstrip=False, single_word=False, normalized=False),
        AddedToken("[WORD]", single_word=True, normalized=False),
        AddedToken("<sep>", rstrip=True, normalized=False),
        AddedToken("hello world", normalized=True),
    ])
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>",
        pair="<|im_start|> $A <|im_end|> $B:1 <|im_end|>:1",
        special_tokens=[("<|im_start|>", start), ("<|im_end|>", end)])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    print(f"{path}: vocab {tok.get_vocab_size(with_added_tokens=True)}")
    return Tokenizer.from_file(path)


def train_metaspace(lines, out_dir):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    rng = random.Random(11)
    # no NUL in the vocabulary: the C loader refuses "\u0000" inside tokens
    texts = [t.replace("\x00", "") for t in lines * 2] + prose(rng, 10000)
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Replace(Regex("[\u2018\u2019`]"), "'"),
        normalizers.Lowercase(),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
    ])
    trainer = trainers.BpeTrainer(vocab_size=6000, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=300)
    tok.train_from_iterator(texts, trainer)
    # Add the 256 byte tokens and turn byte fallback on (SentencePiece style).
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    nxt = max(vocab.values()) + 1
    for b in range(256):
        name = "<0x%02X>" % b
        if name not in vocab:
            vocab[name] = nxt
            nxt += 1
    d["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(d))
    tok.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Metaspace(replacement="\u2581", prepend_scheme="first"),
        decoders.Fuse(),
    ])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    print(f"{path}: vocab {tok.get_vocab_size(with_added_tokens=True)}")
    return Tokenizer.from_file(path)


CONVERSATIONS = [
    # (messages, num_img_tokens) -- image tags at the start of the user turn, each followed by \n
    ([{"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"}], [757]),
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "<|image_1|>\nDescribe the chart."}], [457]),
    ([{"role": "user", "content": "<|image_1|>\n<|image_2|>\nSummarize the deck of slides."}], [757, 757]),
    ([{"role": "system", "content": "Answer briefly."},
      {"role": "user", "content": "<|image_1|>\n<|image_2|>\n<|image_3|>\nCompare the three photos."}],
     [757, 457, 145]),
    ([{"role": "user", "content": "<|image_1|>\nQ1"}, {"role": "assistant", "content": "A1"},
      {"role": "user", "content": "Q2 with  two spaces and\ttab"}], [757]),
    ([{"role": "system", "content": "Be terse."},
      {"role": "user", "content": "<|image_1|>\nWhat colour is the car?"},
      {"role": "assistant", "content": "Red."},
      {"role": "user", "content": "And the sky?"},
      {"role": "assistant", "content": "Blue, with clouds."},
      {"role": "user", "content": "Anything else?"}], [1921]),
    ([{"role": "user", "content": "<|image_1|>\nRead the sign."},
      {"role": "assistant", "content": "It says \"STOP\"."},
      {"role": "user", "content": "<|image_2|>\nAnd this one?"},
      {"role": "assistant", "content": "Ünïcödé → 日本語 😀"},
      {"role": "user", "content": "Thanks!"},
      {"role": "assistant", "content": "You're welcome."},
      {"role": "user", "content": "<|image_3|>\nLast one: count the cats."}], [757, 757, 757]),
    ([{"role": "system", "content": "You are a helpful assistant.\nUse Markdown."},
      {"role": "user", "content": "<|image_1|>\n  Leading spaces and trailing  "}], [313]),
    ([{"role": "user", "content": "<|image_1|>\n<|image_2|>\nWhich is larger?"},
      {"role": "assistant", "content": "The second."}], [757, 457]),
    ([{"role": "user", "content": "<|image_1|>\nمرحبا، ما هذا؟"},
      {"role": "assistant", "content": "这是一只猫。"},
      {"role": "user", "content": "<|end|> inside text <|user|>"},
      {"role": "assistant", "content": "Noted."},
      {"role": "user", "content": "Final question?"}], [757]),
]


def render_chat(lines_dir, out_path, tok):
    cfg = json.load(open(os.path.join(lines_dir, "tokenizer_config.json"), encoding="utf-8"))
    template = cfg["chat_template"]
    renderer = None
    try:
        import transformers
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(lines_dir)
        render = lambda m: hf.apply_chat_template(m, tokenize=False, add_generation_prompt=True,
                                                  chat_template=template)
        render(CONVERSATIONS[0][0])
        renderer = f"transformers {transformers.__version__} apply_chat_template"
    except Exception as e:  # noqa: BLE001 - record and fall back, loudly
        print(f"WARNING: transformers apply_chat_template failed ({e!r}); using jinja2 "
              "with transformers' settings", file=sys.stderr)
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        t = env.from_string(template)
        render = lambda m: t.render(messages=m, add_generation_prompt=True,
                                    bos_token="<s>", eos_token="<|endoftext|>")
        renderer = f"jinja2 {jinja2.__version__} (fallback)"
    cases = []
    for msgs, counts in CONVERSATIONS:
        prompt = render(msgs)
        # spec §2.4 with the tokenizer.json pipeline: chunks between tags, each with BOS
        chunks = re.split(r"<\|image_\d+\|>", prompt)
        tags = [int(x) for x in re.findall(r"<\|image_(\d+)\|>", prompt)]
        assert tags == list(range(1, len(counts) + 1)), tags
        ids = []
        for i, ch in enumerate(chunks):
            ids += tok.encode(ch, add_special_tokens=True).ids
            if i < len(tags):
                ids += [-tags[i]] * counts[tags[i] - 1]
        cases.append({"messages": msgs, "add_generation_prompt": True, "prompt": prompt,
                      "num_img_tokens": counts, "input_ids": ids})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"renderer": renderer, "cases": cases}, f, ensure_ascii=True, indent=1)
    print(f"{out_path}: {len(cases)} conversations ({renderer})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", default=os.path.join(DATA, "corpus.txt"))
    ap.add_argument("--phi3", default=os.path.join(DATA, "phi3"))
    args = ap.parse_args()
    import tokenizers
    from tokenizers import Tokenizer
    lines = read_lines(args.corpus)
    info = {"tokenizers": tokenizers.__version__, "corpus_lines": len(lines),
            "corpus_sha256": hashlib.sha256(open(args.corpus, "rb").read()).hexdigest()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None

    phi = Tokenizer.from_file(os.path.join(args.phi3, "tokenizer.json"))
    write_expected(phi, lines, os.path.join(args.out, "phi3", "expected.jsonl"))
    render_chat(args.phi3, os.path.join(args.out, "phi3", "chat_expected.json"), phi)

    bl = train_bytelevel(lines, os.path.join(args.out, "bytelevel"))
    write_expected(bl, lines, os.path.join(args.out, "bytelevel", "expected.jsonl"))
    ms = train_metaspace(lines, os.path.join(args.out, "metaspace"))
    write_expected(ms, lines, os.path.join(args.out, "metaspace", "expected.jsonl"))

    with open(os.path.join(args.out, "reference_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
