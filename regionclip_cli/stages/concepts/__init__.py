"""The concept pool: object concepts parsed from a caption corpus, counted, kept, embedded.

`build_concept_pool(ConceptsConfig(...))` runs the whole stage; the modules below are its parts:
`corpus` (reading captions), `parse` (spaCy concepts), `stream` (parallel, resumable counting),
`counts` (totals and checkpoint), `pool` (selection and files), `embed` (text embeddings).
"""

from regionclip_cli.stages.concepts.build import Callbacks, ConceptsConfig, ConceptReport, build_concept_pool
from regionclip_cli.stages.concepts.embed import EmbedConfig
from regionclip_cli.stages.concepts.parse import DEFAULT_STOP_WORDS, ConceptParser, ParseConfig, concepts_in_doc
from regionclip_cli.stages.concepts.stream import CountConfig, count_concepts

__all__ = [
    "Callbacks", "ConceptsConfig", "ConceptParser", "ConceptReport", "CountConfig", "DEFAULT_STOP_WORDS",
    "EmbedConfig", "ParseConfig", "build_concept_pool", "concepts_in_doc", "count_concepts",
]
