#!/usr/bin/env python3
"""Write tests/data/tokenizer/corpus.txt: the tokenizer conformance corpus.

Deterministic (fixed seed, no external data). One test case per line; lines
are split on "\n" only, so a line may hold "\r", NUL, U+2028, U+0085 ... The
file is valid UTF-8 (invalid UTF-8 cannot reach HF tokenizers from Python;
the C tests cover it separately).

usage: python3 reference/make_tokenizer_corpus.py [OUT]   (default: tests/data/tokenizer/corpus.txt)
"""
import os
import random
import sys

R = random.Random(20260226)

WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from or have an "
    "they which one you were her all she there would their we him been has when who will more no "
    "if out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those "
    "people mr how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three tokenizer vision language model image "
    "memory kernel gradient attention transformer embedding summarize slides deck question answer "
    "running quickly unbelievable internationalization electroencephalography antidisestablishment "
    "naïve café résumé coöperate façade jalapeño Zürich São Paulo Dvořák Łódź straße"
).split()

NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Émilie", "Fatima", "Gustav", "Hiroshi", "Ingrid",
         "José", "Kwame", "Li", "Mårten", "Nadia", "O'Brien", "Priya", "Quentin", "Rosa"]

CODE = [
    "int main(int argc, char **argv) {",
    "    return argc > 1 ? atoi(argv[1]) : 0;",
    "}",
    "def tokenize(text: str) -> list[int]:",
    "    return [ord(c) for c in text if c.isalnum()]",
    "for (size_t i = 0; i < n; i++) sum += a[i] * b[i];",
    "\tif (x == NULL) { return -1; }",
    "\t\t/* nested tab-indented comment */",
    "const x = {\"key\": [1, 2, 3], 'other': null};",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC;",
    "#include <stdio.h>",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "x = lambda y: y ** 2 + 3 * y - 1  # comment",
    "<div class=\"box\"><span>Hello</span></div>",
    "$ ls -la /usr/local/bin | grep -v '^d' > out.txt 2>&1",
    "git commit -m \"fix: handle the empty case\" && git push origin main",
    "matrix[i][j] += alpha * (left[i][k] @ right[k][j]);",
    "    }}}}]]]]))))",
    "if __name__ == '__main__':",
    "        print(f\"{value:>10.3f} | {name!r}\")",
    "let s: &str = \"multi\\nline\\tescaped\";",
    "{\"model\": {\"type\": \"BPE\", \"merges\": [\"a b\", \"ab c\"]}}",
    "https://example.com/path/to/page?query=1&lang=en#section-2",
    "user@example.org, first.last+tag@sub.domain.co.uk",
    "C:\\Users\\Public\\Documents\\report_final_v2.docx",
    "0x7fffffff 0xDEADBEEF 0b1010 0o755 1e-9 6.02214076e23 -0.0 +1",
    "a=1;b=2;c=a+b;print(c)",
    "    ",
    "\t",
]

CJK = [
    "今天天气很好，我们去公园散步吧。",
    "機械学習モデルは大量のデータから学習します。",
    "東京は日本の首都です。ひらがなとカタカナと漢字。",
    "안녕하세요, 만나서 반갑습니다. 한국어 문장입니다.",
    "这是一个测试句子，包含标点符号：“引号”、《书名号》！",
    "ラーメンを食べたい。ｶﾀｶﾅ半角もある。",
    "中文English混合mixed文本text。",
    "一二三四五六七八九十百千万亿",
    "《三国演义》是中国古典四大名著之一。",
    "私の名前は田中です。よろしくお願いします。",
]

RTL = [
    "مرحبا بالعالم! هذا نص عربي للاختبار.",
    "اللغة العربية جميلة جداً ١٢٣٤٥٦٧٨٩٠",
    "שלום עולם! זהו טקסט בעברית.",
    "עִבְרִית עִם נִקּוּד מָלֵא",
    "English then عربي then English again.",
    "مُحَمَّد رَسُولُ ٱللَّٰهِ",
    "\u200fRTL mark then text\u200e LTR mark",
    "فارسی: سلام دنیا ۱۲۳۴",
]

EMOJI = [
    "😀😃😄😁😆😅🤣😂", "👨\u200d👩\u200d👧\u200d👦 family", "🏳️\u200d🌈 flag", "👍🏽 thumbs",
    "🇯🇵🇺🇸🇫🇷 flags", "1️⃣ 2️⃣ #️⃣ keycaps", "👩🏿\u200d💻 coder", "❤️‍🔥 heart on fire",
    "🧑\u200d🤝\u200d🧑", "I ❤ Unicode ☃ ★ ✓ ✗ →", "🐍 Python 🦀 Rust 🐹 Go", "🫠🫶🏼🪿",
]

COMBINING = [
    "e\u0301 vs é", "Ame\u0301lie", "Z\u0351\u0364a\u0310\u036bl\u0346g\u036co\u0310",
    "Tiếng Việt có dấu", "हिन्दी भाषा देवनागरी", "ภาษาไทยไม่มีช่องว่าง", "ᄀ\u1161\u11a8 jamo",
    "a\u0308\u0304 stacked", "n\u0303o\u0302", "ﬁ ﬂ ﬀ ligatures", "① ② ③ Ⅻ ½ ¼ ²",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ℌ𝔢𝔩𝔩𝔬 𝐁𝐨𝐥𝐝 𝕕𝕠𝕦𝕓𝕝𝕖", "İstanbul ΣΊΣΥΦΟΣ ǅ ǈ ß ẞ",
    "Ωmega Åström K (Kelvin sign)", "ﷺ ﷽", "\u0915\u094d\u0937", "ǰ\u0323 ḱ",
]

SPACES = [
    "a  b", "a   b    c", "  leading", "trailing  ", " ", "  ", "    ", "\t\tx", "x\t\ty",
    " \t \t ", "word\u00a0nbsp", "em\u2003space", "ideo\u3000space", "zero\u200bwidth",
    "bom\ufeffinside", "line\u2028sep", "next\u0085line", "vt\x0bff\x0c", "a \u00a0 b",
    "\u2009thin\u200athin", "      indented code", "end with tab\t", "\u180emongolian",
]

SPECIAL = [
    "<|user|>", "<|end|>", "<|assistant|>", "<|system|>", "<|endoftext|>", "<s>", "</s>",
    "<unk>", "<|image|>", "<|image_1|>", "<|placeholder1|>", "<|placeholder39|>",
    "<|user|>\rhello", "<|assistant|>   spaced", "<|assistant|>\tthen tab", "text</s>   more",
    "a<|end|>b", "<|user|><|end|><|assistant|>", "<|user", "|>", "<|", "<|end|", "<|<|end|>|>",
    "<s><s></s>", "<0x41><0x0A>", "▁", "▁▁hello▁world", "<|endoftext|>The end.",
    "Please say <|end|> now.", "  <|system|>  ", "<mask> and <mask>", "[WORD] x[WORD]y [WORD]",
    "hello world, Hello World, HELLO WORLD", "<sep>   after", "<|im_start|>user hi<|im_end|>",
]


def sentence():
    n = R.randint(3, 18)
    ws = [R.choice(WORDS) for _ in range(n)]
    if R.random() < 0.3:
        ws.insert(R.randrange(len(ws)), R.choice(NAMES))
    s = " ".join(ws)
    s = s[0].upper() + s[1:]
    r = R.random()
    if r < 0.15:
        s += R.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "n't"])
    if r > 0.8:
        s = '"' + s + '," she said.'
    else:
        s += R.choice([".", "!", "?", "...", ";", ":", " —", ""])
    return s


def number():
    k = R.randrange(8)
    if k == 0:
        return str(R.randint(0, 10 ** R.randint(1, 12)))
    if k == 1:
        return f"{R.random() * 1000:.{R.randint(1, 6)}f}"
    if k == 2:
        return f"{R.randint(1, 999)},{R.randint(0, 999):03d},{R.randint(0, 999):03d}"
    if k == 3:
        return f"{R.randint(1900, 2100)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}"
    if k == 4:
        return f"+1 ({R.randint(200, 999)}) {R.randint(100, 999)}-{R.randint(1000, 9999)}"
    if k == 5:
        return f"{R.randint(1, 99)}% of {R.randint(1, 9999)} items cost ${R.randint(1, 999)}.{R.randint(0, 99):02d}"
    if k == 6:
        return "".join(R.choice("0123456789") for _ in range(R.randint(20, 80)))
    return f"{R.uniform(-1e6, 1e6):e}"


def long_word():
    k = R.randrange(6)
    if k == 0:
        return R.choice("abcxyz") * R.randint(50, 600)
    if k == 1:
        return "".join(R.choice(WORDS) for _ in range(R.randint(8, 40)))
    if k == 2:
        alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return "".join(R.choice(alpha) for _ in range(R.randint(64, 400))) + "=="
    if k == 3:
        return "-" * R.randint(20, 200)
    if k == 4:
        return "日本" * R.randint(20, 150)
    return "😀" * R.randint(10, 80)


def single_chars():
    out = [chr(c) for c in range(0x21, 0x7F)]
    out += list("éßøæ€£¥©®°±µ¶·¿¡ÀÿĀžǅΩЖжאبअกあア中한🙂\u0301\u200d\ufffd\uffff\U0010fffd\U0001f600")
    out += ["\x00", "\x01", "\x7f", "\r"]
    return out


def mixed():
    parts = []
    for _ in range(R.randint(2, 6)):
        pool = R.choice([CJK, RTL, EMOJI, COMBINING, SPACES, SPECIAL, CODE])
        parts.append(R.choice(pool))
        if R.random() < 0.5:
            parts.append(sentence())
    return R.choice([" ", "", "  ", "\t"]).join(parts)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizer/corpus.txt"
    lines = []
    lines += [sentence() for _ in range(700)]
    lines += [" ".join(sentence() for _ in range(R.randint(3, 12))) for _ in range(120)]
    lines += CODE + [R.choice(CODE) + "  " + R.choice(CODE) for _ in range(60)]
    lines += CJK + [R.choice(CJK) + R.choice(CJK) for _ in range(40)]
    lines += RTL + [R.choice(RTL) + " " + sentence() for _ in range(40)]
    lines += EMOJI + [sentence() + " " + R.choice(EMOJI) for _ in range(40)]
    lines += COMBINING + [R.choice(COMBINING) + " " + R.choice(COMBINING) for _ in range(40)]
    lines += SPACES + [R.choice(SPACES) + sentence() + R.choice(SPACES) for _ in range(60)]
    lines += [number() for _ in range(150)]
    lines += [sentence() + " " + number() + " " + sentence() for _ in range(60)]
    lines += SPECIAL + [sentence() + R.choice(SPECIAL) + sentence() for _ in range(80)]
    lines += [R.choice(SPECIAL) + R.choice(["", " ", "\t", "  "]) + R.choice(SPECIAL) for _ in range(40)]
    lines += [long_word() for _ in range(60)]
    lines += single_chars()
    lines += [sentence() + "\r" for _ in range(40)]
    lines += ["\r", "\r\r", "a\rb", "\rleading cr"]
    lines += ["nul\x00inside", "\x00", "a\x00\x00b", "\x00<|user|>\x00"]
    lines += ["", "", ""]
    lines += [mixed() for _ in range(250)]
    for s in lines:
        assert "\n" not in s
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "wb") as f:
        f.write("".join(s + "\n" for s in lines).encode("utf-8"))
    print(f"{out}: {len(lines)} lines")


if __name__ == "__main__":
    main()
