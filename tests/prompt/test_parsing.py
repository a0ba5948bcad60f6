import pytest

from lmopt.prompt.parsing import extract_json_field, extract_tag, parse_proposal


@pytest.mark.parametrize("text,expected,how", [
    ("blah <prompt>Do X.</prompt> tail", "Do X.", "tag"),
    ("<PROMPT> first </PROMPT> and <prompt>second</prompt>", "second", "tag"),
    ("<prompt>unclosed to the end\n", "unclosed to the end", "tag"),
    ('Answer: ```json\n{"prompt": "Use JSON."}\n```', "Use JSON.", "json"),
    ('{"Instruction": "  \\"Quoted\\"  "}', "Quoted", "json"),
])
def test_parse_proposal_rules(text, expected, how):
    p = parse_proposal(text, "prompt")
    assert (p.text, p.how) == (expected, how)


def test_parse_proposal_rejects_empty_and_missing():
    assert parse_proposal("<prompt>  </prompt>", "prompt").text is None
    assert parse_proposal("<prompt>\"\"</prompt>", "prompt").how == "empty"
    assert parse_proposal("no format at all", "prompt").how == "none"
    assert parse_proposal("sort the words " * 5, "prompt", max_chars=10, plain=True).how == "too_long"
    # plain text is only accepted when asked for
    assert parse_proposal("1. Sort the words.\nmore", "prompt", plain=True).text == "Sort the words."
    with pytest.raises(TypeError):
        parse_proposal(None, "prompt")


def test_extractors():
    assert extract_tag("<INS>a</INS><INS></INS>", "INS") == "a"
    assert extract_tag("<INS></INS>", "INS") == ""
    assert extract_tag("nothing", "INS") is None
    assert extract_json_field("{not json} {\"prompt\": 3} {\"prompt\": \"ok\"}", ("prompt",)) == "ok"


def test_plain_fallback_rejects_lines_that_are_no_instruction():
    """The fallback once made "The instruction was: @AmericanAir" (a copied tweet handle) an APE candidate."""
    assert parse_proposal("The instruction was: @AmericanAir", "prompt", plain=True).how == "not_instruction"
    assert parse_proposal("positive", "prompt", plain=True).text is None
    got = parse_proposal("The instruction was to classify the tweet's sentiment.", "prompt", plain=True)
    assert got.text == "classify the tweet's sentiment." and got.how == "plain"
    assert parse_proposal("<prompt>@AmericanAir</prompt>", "prompt", plain=True).text == "@AmericanAir"  # tags win
