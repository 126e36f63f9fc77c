"""A worked problem with a good and a bad solution, and a small step-labelled file, shared by the process
reward tests (``test_process*.py``, ``test_calibrated_probabilities.py``, ``test_model_card.py``)."""

import json

PROBLEM = "Tom has 3 apples and buys 4 more. How many apples does he have?"
GOOD = ["He starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The answer is: 7"]
BAD = ["He starts with 3 apples.", "He buys 4 more, so 3 * 4 = 12.", "The answer is: 12"]


def rows_file(path):
    rows = [
        {"id": "a", "question": PROBLEM, "steps": [f"Step {i + 1}: {s}" for i, s in enumerate(BAD)],
         "first_error_step": 2, "solution_correct": False, "reference_solution": "\n".join(GOOD)},
        {"id": "b", "question": "What is 10 - 4?", "steps": ["10 - 4 = 5.", "The answer is: 5"],
         "first_error_step": 1, "solution_correct": False, "reference_solution": "10 - 4 = <<10-4=6>>6\n#### 6"},
        {"id": "c", "question": "What is 2 * 5?", "steps": ["2 * 5 = 10.", "The answer is: 10"],
         "first_error_step": None, "solution_correct": True},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
