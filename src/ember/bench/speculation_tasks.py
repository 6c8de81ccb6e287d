"""The texts of `ember bench --speculation`'s one-stream workloads (issue #17): a ~300-token function to edit
with the original as the prediction (asked two ways), a document to quote from with n-gram lookup, and an
open-ended story where lookup finds nothing."""

from __future__ import annotations

from dataclasses import dataclass

CODE = '''def summarize_orders(orders, tax_rate, discount_threshold):
    """Total, average and discounted figures for a list of orders."""
    x = 0
    count = 0
    largest = None
    for order in orders:
        price = order["price"] * order["quantity"]
        if price > discount_threshold:
            price = price * 0.9
        x = x + price
        count = count + 1
        if largest is None or price > largest:
            largest = price
    if count == 0:
        return {"total": 0, "average": 0, "largest": 0, "tax": 0}
    average = x / count
    tax = x * tax_rate
    report = {
        "total": round(x, 2),
        "average": round(average, 2),
        "largest": round(largest, 2),
        "tax": round(tax, 2),
        "total_with_tax": round(x + tax, 2),
    }
    if x > 1000:
        report["tier"] = "gold"
    elif x > 500:
        report["tier"] = "silver"
    else:
        report["tier"] = "bronze"
    return report
'''

DOCUMENT = (
    "The harbour town of Wensley lies at the mouth of the river Aln. Its fishing fleet once numbered two "
    "hundred boats. In 1851 the railway reached the town, and the first visitors arrived from the cities. "
    "The old lighthouse was built in 1790 and still guides ships past the northern rocks. Every summer the "
    "town holds a regatta, and the harbour fills with sailing boats from all along the coast. The market "
    "square is surrounded by stone houses that were built by the merchants who traded wool and salt. The "
    "museum in the old customs house tells the story of the smugglers who used the caves below the cliffs. "
    "Today most people in Wensley work in tourism, and the fleet has only twelve boats."
)


@dataclass(frozen=True)
class Task:
    name: str
    user: str
    max_tokens: int
    target: str  # issue #17's target for on/off, shown beside the ratio
    prediction: str | None = None


TASKS = (
    Task(
        "code edit (prediction)",
        f"Rename the variable x to total in this code. Reply with the code only.\n\n{CODE}",
        400,
        ">= 3x",
        CODE,
    ),
    # The same edit asked the way OpenAI's Predicted Outputs guide asks it (code first, then the instruction):
    # the default model then replies with code alone, where the wording above gets ~120 tokens of prose around
    # the code that no prediction holds.
    Task(
        "code edit, code-only reply",
        f"{CODE}\nRewrite this code with the variable x renamed to total. Output the full code only.",
        400,
        ">= 3x",
        CODE,
    ),
    Task(
        "extract with quotes (n-gram)",
        f"{DOCUMENT}\n\nCopy every sentence of the text above that mentions a year, word for word, one per line.",
        160,
        ">= 1.7x",
    ),
    Task(
        "story (n-gram auto)", "Write a long story about a dragon who learns to bake bread.", 200, ">= 0.95x"
    ),
)
