"""AI feedback in the VLFeedback format: response pools, annotators, preference pairs.

    from headvec.feedback import build_pool, annotate_file, read_feedback, build_pairs, split_pairs

The pipeline is VLFeedback's (Li et al., arXiv 2312.10665): a pool of models answers image instructions
(four responses per instruction, drawn with a seeded RNG), an annotator rates every response on
helpfulness, ethical considerations and visual faithfulness (1-5 with a rationale; the official
all-in-one prompt for LLM judges), and pairs for DPO are every pair of the four with the higher mean
rating chosen. :mod:`headvec.alignment` trains on them; :mod:`headvec.toyworld.feedback` runs the whole
loop on the toy world, with an oracle annotator reading the scene graph.
"""

from headvec.feedback.annotate import (
    ALL_IN_ONE_TEMPLATE,
    Annotation,
    AnnotationParseError,
    AnnotationStats,
    Annotator,
    OpenAIAnnotator,
    ScorerAnnotator,
    annotate_file,
    build_annotation_prompt,
    parse_all_in_one,
    ratings_from_scores,
)
from headvec.feedback.pairs import (
    PAIRINGS,
    FeedbackPair,
    PairStats,
    build_pairs,
    longest_as_best,
    official_pairs,
    random_labels,
    split_pairs,
    top_choice_as_best,
)
from headvec.feedback.pool import (
    Generator,
    Instruction,
    LocalGenerator,
    OpenAIGenerator,
    PoolStats,
    build_pool,
    draw_generators,
)
from headvec.feedback.schema import (
    ASPECTS,
    AspectAnnotation,
    Completion,
    FeedbackRow,
    ImageStore,
    load_as_dataset,
    mean_rating,
    read_feedback,
    write_rows,
)

__all__ = [
    "ALL_IN_ONE_TEMPLATE",
    "ASPECTS",
    "PAIRINGS",
    "Annotation",
    "AnnotationParseError",
    "AnnotationStats",
    "Annotator",
    "AspectAnnotation",
    "Completion",
    "FeedbackPair",
    "FeedbackRow",
    "Generator",
    "ImageStore",
    "Instruction",
    "LocalGenerator",
    "OpenAIAnnotator",
    "OpenAIGenerator",
    "PairStats",
    "PoolStats",
    "ScorerAnnotator",
    "annotate_file",
    "build_annotation_prompt",
    "build_pairs",
    "build_pool",
    "draw_generators",
    "load_as_dataset",
    "longest_as_best",
    "mean_rating",
    "official_pairs",
    "parse_all_in_one",
    "random_labels",
    "ratings_from_scores",
    "read_feedback",
    "split_pairs",
    "top_choice_as_best",
    "write_rows",
]
