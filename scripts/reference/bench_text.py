"""The prompts of the decode/prefill peer benchmarks (llamacpp_decode_bench.py,
vllm_decode_bench.py): fixed windows of one English text, cut from its token ids, so every
peer decodes the same prompts when their tokenizers agree (SmolLM2's GGUF and Hugging Face
tokenizers do)."""

PROMPT_LEN = 32
PREFILL_LEN = 256

# Source text for the prompts; windows of it are cut into fixed-length prompts.
SOURCE_TEXT = (
    "The Truman Sports Complex in Kansas City, Missouri, is home to two stadiums: "
    "Arrowhead Stadium, where the Chiefs play football, and Kauffman Stadium, home "
    "of the Royals baseball team. The complex opened in the early 1970s after "
    "voters approved a bond issue to fund separate venues for each sport, a rare "
    "design at a time when most cities built shared multipurpose stadiums. Over the "
    "decades both stadiums have been renovated several times, adding new seating, "
    "video boards, and improved concourses, while keeping their original character. "
    "Search agents that answer multi-hop questions often need to connect facts like "
    "these: which teams play where, when a venue opened, and who paid for it. A good "
    "retriever returns short passages that contain the answer, and a good reader "
    "combines them into a brief, correct reply. The history of the bicycle offers "
    "another example. Early two-wheeled machines had no pedals at all; riders pushed "
    "along the ground with their feet. Later designs added cranks to the front wheel, "
    "which grew larger and larger to increase speed, until the safety bicycle, with "
    "a chain driving the rear wheel and two wheels of equal size, made cycling "
    "practical for almost everyone. Paris, the capital of France, is known for the "
    "Eiffel Tower, the Louvre museum, and the cathedral of Notre-Dame, which sits on "
    "an island in the middle of the Seine river."
)


def windows(source: list[int], g: int) -> tuple[list[list[int]], list[int]]:
    """G distinct ``PROMPT_LEN``-token prompts and one ``PREFILL_LEN``-token prompt cut from
    ``source`` (the text's token ids, repeated when a large G needs more windows)."""
    if len(source) < PREFILL_LEN or len(source) < PROMPT_LEN * g:
        source = source * (1 + (max(PREFILL_LEN, PROMPT_LEN * g) // len(source)))
    prompts = [source[s * PROMPT_LEN:(s + 1) * PROMPT_LEN] for s in range(g)]
    return prompts, source[:PREFILL_LEN]
