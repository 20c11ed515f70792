"""Answer normalisation of the VQA / EvalAI evaluation.

Written from the description of the algorithm used by the official VQA
evaluation and by EvalAI's answer processor (which LLaVA applies before
TextVQA/VQAv2/VizWiz scoring and before writing VQAv2/VizWiz submissions):

1. lower-case; delete ``,`` and ``?``; split the possessive ``'s`` off the
   word before it (``dog's`` -> ``dog 's``); newlines and tabs become spaces.
2. punctuation: for each character of ``PUNCTUATION`` (in order), delete it
   when it touches a space (``"x "`` or ``" x"`` occurs) *in the text as it was
   before this step* or when that text has a digit-comma-digit group;
   otherwise replace it with a space.  Then delete the first 32 periods that
   are not followed by a digit (``3.5`` keeps its period; the reference code
   passes ``re.UNICODE`` (= 32) as ``re.sub``'s count, so later periods stay).
3. word by word: number words ``none``/``zero``..``ten`` become digits, the
   articles ``a``/``an``/``the`` are dropped, and apostrophe-less
   contractions get their apostrophe back (``isnt`` -> ``isn't``).

Only the entries that can fire on lower-cased text are in ``CONTRACTIONS``
(the reference list also has capitalised keys such as ``Im`` that never match
after step 1, so ``im`` stays ``im`` there and here).  Agreement with the
reference (LLaVA's ``m4c_evaluator.EvalAIAnswerProcessor``) is tested on
random strings in ``tests/eval_mllm/test_official_agreement.py``.
"""

from __future__ import annotations

import re

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
               "_", "-", ">", "<", "@", "`", ",", "?", "!"]

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
                "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
                "nine": "9", "ten": "10"}

ARTICLES = {"a", "an", "the"}

# Apostrophe-less spelling -> spelling with apostrophe(s).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldnt've": "couldn't've",
    "couldn'tve": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've", "let's": "let's", "she's": "she's",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    # The reference table maps this one backwards; kept so that scores agree.
    "somebody'd": "somebodyd",
}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The reference pattern meant "a period not between digits", but as written
# it only checks the character after the period; we keep that behaviour so
# that scores agree with the official evaluators.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _tokenize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.replace("\n", " ").replace("\t", " ").strip()


# What the reference's ``re.sub(..., re.UNICODE)`` passes as count.
_PERIOD_STRIP_COUNT = 32


def strip_punctuation(text: str) -> str:
    """Step 2 (the VQA evaluation's ``processPunctuation``)."""
    # The condition looks at the text as it came in, never at the edits of earlier marks.
    original = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(original) is not None
    for mark in PUNCTUATION:
        if mark + " " in original or " " + mark in original or has_number_comma:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", text, count=_PERIOD_STRIP_COUNT)


def digits_and_articles(text: str) -> str:
    """Step 3 (the VQA evaluation's ``processDigitArticle``)."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The EvalAI/VQA normal form of an answer string."""
    return digits_and_articles(strip_punctuation(_tokenize(text)))
