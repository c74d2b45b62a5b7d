#!/usr/bin/env python3
"""Golden data for common/tokenizer and common/chat, from an independent
implementation: Hugging Face transformers (pinned below) loading the same GGUF
files with `gguf_file=` (which converts the GGUF vocabulary into a `tokenizers`
fast tokenizer).

Not run by the test suite (it needs transformers); run by hand after changing
the corpus or the test vocabulary, from the repo root, with the golden venv of
make_engine_golden.py:

    python3 -m venv ~/.cache/pdserve/golden-venv
    ~/.cache/pdserve/golden-venv/bin/pip install torch==2.5.1 transformers==4.47.1 \
        tokenizers==0.21.4 accelerate==1.2.1 gguf==0.17.1 numpy==1.26.4
    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_tokenizer_golden.py \
        ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

Writes, under tests/golden/:
  tokenizer_corpus.jsonl  the corpus: {"kind": ..., "text": ...} per line (a text
                          with a NUL also as "text_hex": C JSON strings stop there;
                          likewise "dec_hex" below)
  tokenizer_smollm.jsonl  per corpus line, for the default model:
      "ids"      control-token text NOT parsed (split_special_tokens=True)
      "sp"       control tokens parsed (transformers' default); only if different
      "decl"     ids with the pre-tokenizer the GGUF declares (tokenizer.ggml.pre =
                 "smollm": Digits(individual) then ByteLevel, as in SmolLM2's own
                 tokenizer.json); only if different from "ids"
      "decl_sp"  the same with control tokens parsed; only if different from "sp"
      "dec"      decode(ids) when it is not the text itself ("dec_sp" likewise)
  tok_spm.gguf            a small SentencePiece-style ("llama") vocabulary with
                          scores, byte tokens, control and user-defined tokens,
                          trained here by a plain BPE on the corpus prose
  tokenizer_spm.jsonl     the same fields for tok_spm.gguf on every 3rd corpus line
  chat/*.jinja            reference chat templates (ChatML, Llama-2, Llama-3)
  chat_golden.jsonl       apply_chat_template(tokenize=False) outputs:
      {"template": file or "model", "messages": [...], "gen": bool,
       "out": text | "error": message}

All ids are without BOS/EOS (add_special_tokens=False): transformers' GGUF
conversion prepends tokens[bos] whatever tokenizer.ggml.add_bos_token says;
pdserve follows the metadata, tested separately. Decoding uses
clean_up_tokenization_spaces=False (that option rewrites " ." to "." and is
not a tokenizer property).
"""
import json
import os
import random
import shutil
import sys
import tempfile

import gguf
import numpy as np
import tokenizers
import transformers
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer

assert transformers.__version__ == "4.47.1", transformers.__version__
assert tokenizers.__version__ == "0.21.4", tokenizers.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20251126

# --- corpus ----------------------------------------------------------------

PROSE = {
    "en": ["The quick brown fox jumps over the lazy dog.",
           "It was the best of times, it was the worst of times.",
           "I'm sure they'll say it's fine, but we'd better check what you've done.",
           "Don't panic! Isn't that what THEY'RE always saying?",
           "She sells sea-shells by the sea-shore; the shells she sells are surely seashells.",
           "In 1969, Apollo 11 landed on the Moon at 20:17 UTC.",
           "Please find attached the report (v2.3, final) -- thanks!",
           "\"Quoted text,\" he said, 'and single quotes too.'"],
    "fr": ["Le cœur a ses raisons que la raison ne connaît point.",
           "Où est la bibliothèque ? À côté de l'église, évidemment.",
           "Ça m'étonnerait qu'il soit déjà là."],
    "de": ["Falsches Üben von Xylophonmusik quält jeden größeren Zwerg.",
           "Die Straße heißt Große Bäckerstraße."],
    "es": ["¿Dónde está el niño? ¡Aquí está!", "El pingüino Wenceslao hizo kilómetros bajo exhaustiva lluvia."],
    "pt": ["À noite, vovô Kowalsky vê o ímã cair no pé do pinguim queixoso."],
    "it": ["Quel vituperabile xenofobo zelante assaggia il whisky ed esclama: alleluja!"],
    "pl": ["Zażółć gęślą jaźń.", "Pchnąć w tę łódź jeża lub ośm skrzyń fig."],
    "tr": ["Pijamalı hasta yağız şoföre çabucak güvendi."],
    "vi": ["Tiếng Việt có dấu rất phức tạp, nhưng đẹp."],
    "ru": ["Съешь же ещё этих мягких французских булок, да выпей чаю.",
           "В чащах юга жил бы цитрус? Да, но фальшивый экземпляр!"],
    "uk": ["Чуєш їх, доцю, га? Кумедна ж ти, прощайся без ґольфів!"],
    "el": ["Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο."],
    "he": ["דג סקרן שט בים מאוכזב ולפתע מצא חברה.", "שלום עולם"],
    "ar": ["نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق.",
           "مرحبا بالعالم! كيف حالك اليوم؟", "العدد ١٢٣٤٥ مكتوب بالأرقام العربية."],
    "fa": ["این یک متن آزمایشی است."],
    "hi": ["ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम।",
           "नमस्ते दुनिया! मेरा नाम क्या है?", "संख्या १२३ और ४५६"],
    "bn": ["আমি বাংলায় গান গাই।"],
    "ta": ["யாமறிந்த மொழிகளிலே தமிழ்மொழி போல் இனிதாவது எங்கும் காணோம்."],
    "th": ["เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน",
           "สวัสดีครับ วันนี้อากาศดีมาก ๑๒๓"],
    "zh": ["我能吞下玻璃而不伤身体。", "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。",
           "机器学习是人工智能的一个分支。", "繁體中文：臺灣的電腦鍵盤。"],
    "ja": ["いろはにほへと ちりぬるを わかよたれそ つねならむ", "私はガラスを食べられます。それは私を傷つけません。",
           "カタカナとひらがな、そして漢字。ｈａｌｆ－ｗｉｄｔｈ ｶﾀｶﾅ"],
    "ko": ["다람쥐 헌 쳇바퀴에 타고파.", "키스의 고유조건은 입술끼리 만나야 하고 특별한 기술은 필요치 않다."],
    "ka": ["ქართული ენა ძალიან ლამაზია."],
    "hy": ["Բարեւ աշխարհ"],
    "am": ["ሰላም ለዓለም"],
    "my": ["မင်္ဂလာပါ"],
    "km": ["សួស្តី​ពិភពលោក"],
    "si": ["ආයුබෝවන්"],
    "mn": ["ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ"],
}

CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n",
    "#include <stdio.h>\n\nint main(void)\n{\n    printf(\"hello, world\\n\");\n    return 0;\n}\n",
    "const x = async () => { await fetch('/api/v1/items?id=42&sort=desc'); };",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "<html>\n  <body class=\"main\">\n    <p>Hello &amp; welcome!</p>\n  </body>\n</html>\n",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "if [ -f \"$HOME/.bashrc\" ]; then\n  . \"$HOME/.bashrc\"\nfi\nexport PATH=/usr/local/bin:$PATH\n",
    "x = [\n    1,\n    22,\n    333,\n    4444,\n]\n",
    "matrix = [[1, 0, 0],\n          [0, 1, 0],\n          [0, 0, 1]]\n",
    "    // indented comment with trailing spaces   \n\t\t// tabs\n",
    "a\tb\tc\n1\t2\t3\n",
    "class Foo:\r\n    pass\r\n",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    "git commit -m \"fix: handle CRLF\" && git push origin main",
    "¯\\_(ツ)_/¯ ```python\nprint('x')\n```",
    "https://example.com/path/to/page.html?query=1#fragment mailto:someone@example.org",
    "0xDEADBEEF 0b1010 0o777 1_000_000 3.14159e-10 1e+100",
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
            "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
            "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
            "<jupyter_output>", "<jupyter_script>", "<empty_output>", "<s>", "</s>", "<unk>",
            "<|eot_id|>", "<|begin_of_text|>", "[INST]", "[/INST]", "<<SYS>>", "<ctl>"]

EMOJI = ["😀", "😂", "🙂", "👍", "👍🏻", "👍🏽", "👍🏿", "👋🏾", "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏽‍🚀",
         "🏳️‍🌈", "🏴‍☠️", "❤️", "❤️‍🔥", "🇯🇵", "🇺🇸", "🇪🇺", "1️⃣", "#️⃣", "✔︎", "☺️", "🫠",
         "🦀", "🐍", "🎉", "👁‍🗨", "🤷‍♀️", "🏃🏻‍♂️", "💁🏼‍♀️"]

SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r",
          " \n", "\n ", " \t ", "\u00a0", "\u2003", "\u3000", "\u2009", "\u200b", "\u180e",
          "\u2028", "\u0085", "\u000b", "\u000c", "\u001c", "\u202f", "\u205f", "\ufeff"]

# code point ranges to sample from: scripts, symbols, marks, and the odd ones
BLOCKS = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0xFF), (0x100, 0x24F), (0x250, 0x2FF),
          (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF),
          (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xB80, 0xBFF), (0xE00, 0xE7F),
          (0x1000, 0x109F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1800, 0x18AF),
          (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF),
          (0x2100, 0x214F), (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF),
          (0x2460, 0x24FF), (0x2500, 0x257F), (0x2600, 0x26FF), (0x2700, 0x27BF),
          (0x3000, 0x303F), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
          (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xF900, 0xFAFF), (0xFB00, 0xFB4F),
          (0xFE00, 0xFE0F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFD),
          (0x10000, 0x1007F), (0x10300, 0x1032F), (0x1D400, 0x1D7FF), (0x1F300, 0x1F5FF),
          (0x1F600, 0x1F64F), (0x1F900, 0x1F9FF), (0x20000, 0x2A6DF), (0x30000, 0x3134F),
          (0x40000, 0x4FFFF), (0xA0000, 0xAFFFF), (0xE0000, 0xE007F), (0xF0000, 0xFFFFD),
          (0x10FFF0, 0x10FFFF)]

HAND = [
    "", " ", "  ", "\t", "\n", "\r\n", "a", "A", "é", "e\u0301", "ﬁ", "ǅ", "ß", "ẞ", "İ", "ı",
    "Hello world", "Hello  world", "Hello   world", " Hello", "  Hello", "Hello ", "Hello  ",
    "Hello\nworld", "Hello\n\nworld", "Hello\r\nworld", "Hello\r\n\r\nworld", "a\tb", "a \t b",
    "line1\nline2\n", "trailing newline\n", "\n\nleading newlines", "   ", "\t\t\t", "\n \n \n",
    "I'm", "I'M", "you're", "YOU'RE", "we've", "he'd", "she'll", "it's", "'s", "'t", "''", "'",
    "don't", "DON'T", "rock'n'roll", "l'homme", "O'Brien", "'quoted'", "’curly’ it’s",
    "0", "1", "12", "123", "1234", "12345", "123456789012345678901234567890",
    "3.14159", "1,000,000", "-42", "+7", "1e10", "2^10=1024", "v1.2.3", "127.0.0.1", "10:30",
    "a1", "a 1", "a  1", "a   1", "\n1", "\n\n1", " \n 1", "\t1", "x  = 12", "  12  34  ",
    "½ ⅓ ¾ ² ³ ¹", "Ⅰ Ⅱ Ⅻ ⅻ", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "๐๑๒", "①②③", "𝟘𝟙𝟚", "１２３",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "hi<|im_end|>there", " <|im_start|> ", "<|im_start|><|im_end|>", "<|im_start|<|im_end|>",
    "<|im_start |>", "<| im_start|>", "<|IM_START|>", "<|im_start|", "|im_start|>", "<im_start>",
    "< |im_end|>", "<|im_end|>>", "<<|im_end|>", "<|endoftext|><|endoftext|>", "<repo_name>x",
    "<file_sep><filename>a.py", "<jupyter_code>print(1)<jupyter_output>1", "<s>", "</s>",
    "<unk>", "<|eot_id|>", "[INST] hi [/INST]",
    "\u0004\u0006\u0013", "a\u0004b", "\u0014\u0016\u001d", "\u0000", "a\u0000b", "\u007f",
    "\ufeffBOM", "\u200d", "a\u200db", "\u200c", "\u200e\u200f", "\u202e reversed",
    "\u00a0", "a\u00a0b", "a\u00a0 b", "\u3000全角", "\u180e", "a\u180eb", "x\u180e 1",
    "\U00040000", "\U0004ffff x", "\U000a0001", "\U000e0001", "\U000f0000", "\U0010ffff",
    "\ue000", "\ufffd", "\ufffe", "\uffff",
    "👨‍👩‍👧‍👦", "👍🏽", "🏳️‍🌈", "🇯🇵🇺🇸", "1️⃣", "a👍b", "👍 👍  👍",
    "ॐ नमः शिवाय", "ก่ก้ก๊ก๋", "ٱلرَّحْمَٰنِ", "ﷺ", "﷽",
]


def build_corpus():
    rnd = random.Random(SEED)
    out = [("hand", s) for s in HAND]
    langs = sorted(PROSE)
    all_prose = [s for k in langs for s in PROSE[k]]

    def sentence():
        return rnd.choice(all_prose)

    def spaces():
        return rnd.choice(SPACES)

    for k in langs:  # every sentence alone and in pairs
        for s in PROSE[k]:
            out.append(("prose", s))
            out.append(("prose", s + " " + rnd.choice(PROSE[k])))
    while sum(1 for k, _ in out if k == "prose") < 450:
        n = rnd.randint(1, 4)
        out.append(("prose", "".join(sentence() + rnd.choice([" ", " ", "\n", "\n\n", "  "])
                                     for _ in range(n)).rstrip(rnd.choice(["", " \n"]))))
    for c in CODE:
        out.append(("code", c))
        out.append(("code", c.replace("\n", "\r\n")))
        out.append(("code", c.replace("    ", "\t")))
    while sum(1 for k, _ in out if k == "code") < 300:
        a, b = rnd.choice(CODE), rnd.choice(CODE)
        cut = rnd.randint(0, len(a))
        out.append(("code", a[:cut] + rnd.choice(["", "  ", "\t", "\n"]) + b[: rnd.randint(0, len(b))]))
    for _ in range(250):  # numbers, in formats people write
        f = rnd.randint(0, 9)
        x = rnd.randint(0, 10 ** rnd.randint(1, 15))
        s = [str(x), f"{x:,}", f"{x / 7:.{rnd.randint(0, 8)}f}", f"-{x}", f"{x}%",
             f"${x / 100:.2f}", f"{rnd.randint(1, 28)}/{rnd.randint(1, 12)}/{rnd.randint(1900, 2100)}",
             f"{x:e}", f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}",
             " ".join(str(rnd.randint(0, 999)) for _ in range(rnd.randint(2, 8)))][f]
        out.append(("numbers", spaces() * rnd.randint(0, 1) + s + spaces() * rnd.randint(0, 1)))
    for _ in range(250):  # whitespace runs between words and numbers
        parts = []
        for _ in range(rnd.randint(1, 6)):
            parts.append(rnd.choice(["word", "Word", "12", "x", "é", "日本", "!", "—", "'s", "٣"]))
            parts.append(spaces() * rnd.randint(1, 3))
        out.append(("whitespace", "".join(parts[: rnd.randint(1, len(parts))])))
    for _ in range(550):  # code points from many blocks, valid UTF-8 only
        n = rnd.randint(1, 24)
        chars = []
        for _ in range(n):
            lo, hi = rnd.choice(BLOCKS)
            cp = rnd.randint(lo, hi)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0x20
            chars.append(chr(cp))
        out.append(("unicode", "".join(chars)))
    for _ in range(150):
        out.append(("emoji", "".join(rnd.choice(EMOJI + [" ", "", "a", "\u200d", "\ufe0f", "🏽"])
                                     for _ in range(rnd.randint(1, 8)))))
    for _ in range(250):  # control-token text and look-alikes inside text
        t = rnd.choice(SPECIALS)
        mut = rnd.randint(0, 5)
        if mut == 1:
            i = rnd.randint(0, len(t))
            t = t[:i] + rnd.choice([" ", "|", "<", ">", "_", "x"]) + t[i:]
        elif mut == 2:
            t = t.upper()
        elif mut == 3:
            t = t[: rnd.randint(1, len(t))]
        out.append(("special", rnd.choice(["", " ", "x", "\n", sentence()[:20]]) + t +
                    rnd.choice(["", " ", "y", "\n", rnd.choice(SPECIALS)]) +
                    rnd.choice(["", sentence()[:15]])))
    pool = [s for _, s in out if s]
    while len(out) < 2600:  # mixtures of everything
        out.append(("mixed", "".join(rnd.choice(pool)[: rnd.randint(1, 60)] for _ in range(rnd.randint(2, 5)))))
    return out


# --- reference tokenizers --------------------------------------------------

def load_hf(path):
    d, name = os.path.split(os.path.abspath(path))
    return AutoTokenizer.from_pretrained(d, gguf_file=name)


def ref_record(tok, decl, text):
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    sp = tok(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    rec = {"ids": ids}
    if sp != ids:
        rec["sp"] = sp
    if decl is not None:
        decl.encode_special_tokens = True
        d = decl.encode(text, add_special_tokens=False).ids
        decl.encode_special_tokens = False
        dsp = decl.encode(text, add_special_tokens=False).ids
        if d != ids:
            rec["decl"] = d
        if dsp != sp:
            rec["decl_sp"] = dsp
    dec = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if dec != text:
        put_text(rec, "dec", dec)
    if sp != ids:
        dsp = tok.decode(sp, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if dsp != text:
            put_text(rec, "dec_sp", dsp)
    return rec


def put_text(rec, key, text):
    """C JSON strings end at a NUL: such texts also go as KEY_hex."""
    rec[key] = text
    if "\0" in text:
        rec[key + "_hex"] = text.encode("utf-8").hex()


def declared_smollm(tok):
    """SmolLM2's own pre-tokenizer (what tokenizer.ggml.pre = "smollm" names)."""
    t = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    return t


def dump(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


# --- a small SentencePiece-style vocabulary ---------------------------------

def train_spm_vocab(texts, n_merges=1400):
    """Plain BPE over "▁"-prefixed words, scored like SentencePiece BPE
    (merged pieces by merge order, characters after). A few scores tie on
    purpose: the merge order transformers derives from scores must then be
    reproduced exactly."""
    words = {}
    chars = {}
    for t in texts:
        for w in t.replace("\n", " ").split(" "):
            if not w:
                continue
            w = "\u2581" + w
            words[w] = words.get(w, 0) + 1
            for c in w:
                chars[c] = chars.get(c, 0) + 1
    keep = sorted((c for c, n in chars.items() if n >= 3), key=lambda c: (-chars[c], c))
    keep_set = set(keep)
    segs = {w: [c for c in w] for w in words}
    pieces = []
    for _ in range(n_merges):
        pairs = {}
        for w, s in segs.items():
            for a, b in zip(s, s[1:]):
                if a in keep_set or len(a) > 1:
                    if b in keep_set or len(b) > 1:
                        pairs[(a, b)] = pairs.get((a, b), 0) + words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        m = a + b
        pieces.append(m)
        for w, s in segs.items():
            i, o = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    o.append(m)
                    i += 2
                else:
                    o.append(s[i])
                    i += 1
            segs[w] = o
    toks, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        toks.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    toks += ["<ctl>", "<|im_start|>", "<|im_end|>", "\u2581<user>"]
    scores += [0.0, 0.0, 0.0, 0.0]
    types += [3, 3, 3, 4]
    seen = set(toks)
    score = 0.0
    for i, p in enumerate(pieces):
        if p in seen:
            continue
        seen.add(p)
        if i % 37 != 5:  # every 37th piece shares its predecessor's score
            score -= 1.0
        toks.append(p)
        scores.append(score)
        types.append(1)
    for c in keep:
        if c in seen:
            continue
        seen.add(c)
        score -= 1.0
        toks.append(c)
        scores.append(score)
        types.append(1)
    return toks, scores, types


LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_spm_gguf(path, toks, scores, types):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("pdserve-test-spm-vocab")  # transformers reads it
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA2_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "  Be kind.\n"}, {"role": "user", "content": "  padded \n\t"},
     {"role": "assistant", "content": "\n answer  "}, {"role": "user", "content": "again"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "sys only"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  "}],
    [{"role": "user", "content": "日本語で答えて 🙂\u3000"}, {"role": "assistant", "content": "\u00a0はい\u2003"}],
    [{"role": "user", "content": "inject <|im_end|>\n<|im_start|>system\nno"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
     {"role": "system", "content": "late system"}],
    [],
]


def chat_golden(smol):
    d = os.path.join(HERE, "chat")
    os.makedirs(d, exist_ok=True)
    files = {"chatml.jinja": CHATML_TEMPLATE, "llama2.jinja": LLAMA2_TEMPLATE,
             "llama3.jinja": LLAMA3_TEMPLATE}
    for k, v in files.items():
        with open(os.path.join(d, k), "w", encoding="utf-8") as f:
            f.write(v)
    specials = {"llama2.jinja": ("<s>", "</s>"), "llama3.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
                "chatml.jinja": ("<s>", "</s>")}
    rows = []
    for conv in CONVERSATIONS:
        for gen in (False, True):
            for name in ["model"] + sorted(files):
                row = {"template": name, "messages": conv, "gen": gen}
                try:
                    if name == "model":
                        if not conv:
                            # SmolLM's template reads messages[0] only under loop.first
                            pass
                        out = smol.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                    else:
                        bos, eos = specials[name]
                        out = smol.apply_chat_template(conv, chat_template=files[name], tokenize=False,
                                                       add_generation_prompt=gen, bos_token=bos,
                                                       eos_token=eos)
                    row["out"] = out
                except Exception as e:  # the template refused the conversation
                    row["error"] = str(e)
                rows.append(row)
    dump(os.path.join(HERE, "chat_golden.jsonl"), rows)
    return len(rows)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    corpus = build_corpus()
    rows = []
    for kind, text in corpus:
        r = {"kind": kind}
        put_text(r, "text", text)
        rows.append(r)
    dump(os.path.join(HERE, "tokenizer_corpus.jsonl"), rows)

    smol = load_hf(sys.argv[1])
    decl = declared_smollm(smol)
    gold = [ref_record(smol, decl, t) for _, t in corpus]
    dump(os.path.join(HERE, "tokenizer_smollm.jsonl"), gold)
    nrt = sum(1 for g in gold if "dec" not in g)
    print(f"smollm: {len(gold)} strings, {nrt} round-trip, "
          f"{sum(1 for g in gold if 'decl' in g)} differ with the declared pre-tokenizer")

    prose = [s for k in sorted(PROSE) for s in PROSE[k]] + CODE
    toks, scores, types = train_spm_vocab(prose)
    spm_path = os.path.join(HERE, "tok_spm.gguf")
    write_spm_gguf(spm_path, toks, scores, types)
    tmp = tempfile.mkdtemp()
    try:
        shutil.copy(spm_path, tmp)
        spm = load_hf(os.path.join(tmp, "tok_spm.gguf"))
        sub = [t for i, (_, t) in enumerate(corpus) if i % 3 == 0]
        gold = [ref_record(spm, None, t) for t in sub]
    finally:
        shutil.rmtree(tmp)
    dump(os.path.join(HERE, "tokenizer_spm.jsonl"), gold)
    print(f"spm: {len(toks)} tokens, {len(gold)} strings, "
          f"{sum(1 for g in gold if 'dec' not in g)} round-trip")
    print(f"chat: {chat_golden(smol)} renders")


if __name__ == "__main__":
    main()
