"""Build a word-level `CLIPTokenizer` offline, with no files to download."""

import string
from typing import Iterable, List, Tuple

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Words every generated tokenizer knows, so that test prompts and the toy model's prompts are single tokens.
DEFAULT_WORDS = (
    "a an the and or of on in at to with without is are this that it its "
    "left right top bottom middle center background foreground next behind above below "
    "red green blue yellow white black orange purple pink brown gray grey "
    "circle square triangle star heart shape object thing "
    "cute corgi dog cat bench tower eiffel fantasy landscape mountain sky tree house car "
    "photo painting picture drawing small big large tiny bright dark "
    "sitting standing flying trending artstation"
).split()


def _bytes_to_unicode() -> List[str]:
    # The byte-to-printable-character table of CLIP's (and GPT-2's) byte-level BPE.
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return [chr(c) for c in cs]


def _bpe(pieces: List[str], ranks: dict) -> List[str]:
    # Plain byte-pair encoding: merge the adjacent pair of lowest rank until none applies.
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_vocab_and_merges(words: Iterable[str]) -> Tuple[dict, List[Tuple[str, str]]]:
    r"""
    Vocabulary and merges of a byte-level BPE in which every word of `words` is one token.

    Any other text still tokenizes, as single characters or pieces. The end-of-text token gets the highest id, as in
    CLIP (`CLIPTextModel` pools at that id).
    """
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges: List[Tuple[str, str]] = []
    ranks: dict = {}
    for word in dict.fromkeys(w.lower() for w in words):
        # Each new merge ranks after all earlier ones, so it never changes how an earlier word (already one token)
        # is split: BPE always has an earlier-ranked merge to apply to that word until it is whole.
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            pieces = _bpe(pieces, ranks)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges


def build_word_tokenizer(words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 77) -> CLIPTokenizer:
    r"""
    A `CLIPTokenizer` in which each of `words` is a single token, built in memory.

    Args:
        words (`Iterable[str]`, *optional*, defaults to `DEFAULT_WORDS`):
            The words to make single tokens (lower case; CLIP lower-cases prompts).
        model_max_length (`int`, *optional*, defaults to 77):
            Prompt length in tokens, start and end tokens included; prompts are padded to it.
    """
    vocab, merges = build_vocab_and_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# Words the generated T5 tokenizer splits into several sentencepiece pieces (to exercise word merging).
SPLIT_WORDS = {"corgi": ("▁cor", "gi"), "landscape": ("▁land", "sca", "pe"), "artstation": ("▁art", "station")}


def build_sentencepiece_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS,
    split_words: dict = SPLIT_WORDS,
    model_max_length: int = 32,
    style: str = "t5",
):
    r"""
    A `T5TokenizerFast` (a sentencepiece-style unigram model, `▁` marking word starts, `</s>` appended) built in
    memory: each of `words` is one piece, each word of `split_words` several pieces, any other text single characters.
    With `style="gemma"`, a `GemmaTokenizer` instead: `<bos>` first, nothing appended, padded on the right.

    Args:
        words (`Iterable[str]`, *optional*, defaults to `DEFAULT_WORDS`): Words that are one piece each.
        split_words (`dict`, *optional*, defaults to `SPLIT_WORDS`): Word -> the pieces it splits into.
        model_max_length (`int`, *optional*, defaults to 32): Maximum sequence length.
        style (`str`, *optional*, defaults to `"t5"`): `"t5"` or `"gemma"`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GemmaTokenizer, T5TokenizerFast

    gemma = style == "gemma"
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] if gemma else ["<pad>", "</s>", "<unk>"]
    pieces += ["▁" + w for w in dict.fromkeys(w.lower() for w in words) if w.lower() not in split_words]
    for parts in split_words.values():
        pieces += [p for p in parts if p not in pieces]
    pieces += ["▁"] + list(string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,!?'-")
    pieces += list(':;\n"()>') if gemma else []  # (the T5 style's vocabulary, and so its tiny models, unchanged)
    pieces = list(dict.fromkeys(pieces))
    # Unigram scores: whole words beat their pieces, multi-character pieces beat single characters.
    special = ("<pad>", "<eos>", "<bos>", "<unk>", "</s>")
    vocab = [(p, 0.0 if p in special else (-1.0 if len(p) > 1 else -8.0)) for p in pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=pieces.index("<unk>"), byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if gemma:
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
        made = GemmaTokenizer(
            tokenizer_object=tokenizer,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
            model_max_length=model_max_length,
        )
        made.padding_side = "right"
        return made
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=model_max_length,
    )


# Qwen3's chat format (`<|im_start|>role\ncontent<|im_end|>\n`, then the assistant's turn; with thinking off, an empty
# think block), as its own template renders it for the messages the diffusers pipelines build.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
# Words the generated chat tokenizer splits into several byte-level pieces (to exercise word merging).
CHAT_SPLIT_WORDS = {"corgi": ("Ġcor", "gi"), "landscape": ("Ġland", "scape"), "artstation": ("Ġart", "station")}


# Mistral Small 3's chat format (what FLUX.2 [dev]'s processor renders): the start token, the system prompt, the user's
# message, each message's content a list of parts.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set text = message['content'] if message['content'] is string "
    "else message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
MISTRAL_SPECIAL_TOKENS = (
    "<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]",
    "[IMG_END]",
)  # fmt: skip


def build_chat_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS,
    split_words: dict = CHAT_SPLIT_WORDS,
    chat_template: str = QWEN_CHAT_TEMPLATE,
    model_max_length: int = 512,
    style: str = "qwen",
):
    r"""
    A byte-level BPE chat tokenizer (`Ġ` marking a leading space) built in memory: each of `words`, with and without a
    leading space, is one token, each word of `split_words` (after a space) the pieces given, the chat roles one
    token each, any other text bytes. `style="qwen"`: a `Qwen2TokenizerFast` with Qwen's special tokens and chat
    template; `style="mistral"`: a tokenizer with Mistral's special tokens and Mistral Small 3's chat template (`<s>`
    starting every text; the template given, if not Qwen's).

    Args:
        words (`Iterable[str]`, *optional*, defaults to `DEFAULT_WORDS`): Words that are one token each.
        split_words (`dict`, *optional*, defaults to `CHAT_SPLIT_WORDS`): Word -> the pieces it splits into.
        chat_template (`str`, *optional*, defaults to `QWEN_CHAT_TEMPLATE`): The Jinja chat template (Qwen style).
        model_max_length (`int`, *optional*, defaults to 512): Maximum sequence length.
        style (`str`, *optional*, defaults to `"qwen"`): `"qwen"` or `"mistral"`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast

    chars = _bytes_to_unicode()
    merges: List[Tuple[str, str]] = []
    ranks: dict = {}
    tokens = list(chars)

    def learn(target: List[str]) -> None:
        # Merges (each ranked after every earlier one) that join `target`'s characters into its pieces, in order.
        for piece in target:
            parts = _bpe(list(piece), ranks)
            while len(parts) > 1:
                pair = (parts[0], parts[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
                parts = _bpe(parts, ranks)

    known = [*dict.fromkeys(words), "user", "assistant", "system"]  # as given: a capitalised word is its own token
    for word in dict.fromkeys(known):
        if word in split_words:
            learn(list(split_words[word]))
        else:
            learn(["Ġ" + word])
            learn([word])
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    if style == "mistral":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            additional_special_tokens=list(MISTRAL_SPECIAL_TOKENS[3:]),
            model_max_length=model_max_length,
        )
        fast.add_special_tokens({"additional_special_tokens": list(MISTRAL_SPECIAL_TOKENS[3:])})
        fast.chat_template = MISTRAL_CHAT_TEMPLATE if chat_template == QWEN_CHAT_TEMPLATE else chat_template
        return fast
    special = [t for t in CHAT_SPECIAL_TOKENS]
    fast = Qwen2TokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
        model_max_length=model_max_length,
    )
    fast.add_special_tokens({"additional_special_tokens": special[1:]})
    fast.chat_template = chat_template
    return fast
