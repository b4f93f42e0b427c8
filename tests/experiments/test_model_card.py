from ipgkit.experiments.model_card import markdown, model_card
from tests.conftest import tiny_policy


def test_model_card_measures_every_table_on_a_tiny_model():
    card = model_card(tiny_policy(n_ctx=512), n=4, n_samples=2)
    metrics = {(row["task"], row["split"], row["metric"]) for row in card["accuracy"]}
    assert ("arith-chain", "hard-test", "frac_all_wrong") in metrics
    assert ("arith-word", "test", "pass@2") in metrics
    assert {row["split"] for row in card["accuracy_by_steps"]} == {"test", "hard-test"}
    synthetic = card["verifier_on_synthetic_failures"]
    assert synthetic["n"] + synthetic["skipped_too_long"] == 4
    assert 0 <= synthetic["exact_accuracy"] <= synthetic["location_accuracy"] <= 1
    for key in ("parsed", "location_accuracy", "exact_accuracy"):  # every rate has its interval
        if synthetic["n"]:
            low, high = synthetic[f"{key}_ci95"]
            assert low <= synthetic[key] <= high
    assert "verifier_on_own_failures_no_reference" in card
    text = markdown(card)
    assert text.count("| arith-") == 4 and "exact fix" in text
    assert "no reference" in text and "Solving vs verifying" in text
