import pytest

from eval_mllm.scorers.vqa_normalize import normalize_answer


@pytest.mark.parametrize("raw, expected", [
    ("Two dogs.", "2 dogs"),             # number word -> digit, final period dropped
    ("isnt", "isn't"),                   # contraction gets its apostrophe
    ("the cat", "cat"),                  # article dropped
    ("A Dog", "dog"),                    # lower-cased, article dropped
    ("3.5", "3.5"),                      # a period before a digit stays
    ("5.", "5"),                         # ... any other period goes
    ("black-and-white", "black and white"),  # '-' not touching a space -> space
    ("red / blue", "red blue"),          # '/' touching a space -> deleted
    ("(left)", "left"),                  # '(' and ')' -> spaces, then trimmed
    ("yes!", "yes"),
    ("dog's bone", "dog 's bone"),      # possessive split off
    ("1,000", "1000"),                   # commas deleted first
    ("none", "0"),
    ("Ten", "10"),
    ("an apple", "apple"),
    ("yes\nno", "yes no"),
    ("im", "im"),                        # no lower-case 'im' entry, as in the reference
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected
