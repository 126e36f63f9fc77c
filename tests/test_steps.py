from tinyrm.process.steps import clean, is_filler, split


def test_step_markers():
    text = "Step 1:  We add 2 and 2.\nStep 2: That is 4. step 3: The answer is 4."
    assert split(text) == ["We add 2 and 2.", "That is 4.", "The answer is 4."]


def test_step_markers_keep_a_preamble():
    assert split("Let's see. Step 1: a Step 2: b") == ["Let's see.", "a", "b"]


def test_numbered_lines_with_continuations():
    text = "1. Add the apples.\n   There are 5.\n2) Subtract 2.\n3. Report 3."
    assert split(text) == ["Add the apples.\nThere are 5.", "Subtract 2.", "Report 3."]


def test_decimal_numbers_are_not_numbered_lines():
    assert split("3.5 apples cost 2.\n7.25 pears cost 3.") == ["3.5 apples cost 2.", "7.25 pears cost 3."]


def test_blank_line_paragraphs():
    text = "First we add.\nStill the first step.\n\n  \nThen we report.\r\n\r\nDone."
    assert split(text) == ["First we add.\nStill the first step.", "Then we report.", "Done."]


def test_lines_fallback_single_and_empty():
    assert split("a = 1\nb = 2\n#### 3") == ["a = 1", "b = 2", "#### 3"]
    assert split("just one step") == ["just one step"]
    assert split("   \n ") == []


def test_clean():
    assert clean("Step 3: 75/15 = <<75/15=5>>5 hours") == "75/15 = 5 hours"
    assert clean("#### 42") == "The answer is: 42"
    # an answer line inside a step (numbered lines, step markers): rewritten too, not left as "####"
    assert [clean(s) for s in split("1. She sold 48.\n2. She sold 24 more.\n#### 72")] == [
        "She sold 48.", "She sold 24 more. The answer is: 72"]
    assert clean("a #### b") == "a #### b"  # only at the start of a line
    assert clean("We use step 2: again") == "We use step 2: again"  # marker only at the start
    assert is_filler("Let's think step by step.") and not is_filler("Add 2.")
