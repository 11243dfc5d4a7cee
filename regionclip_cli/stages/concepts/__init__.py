"""The concept pool: object concepts parsed from a caption corpus, counted, kept, embedded.

`build_concept_pool(ConceptJob(...))` runs the whole stage; the modules below are its parts:
`corpus` (reading captions), `parse` (spaCy concepts), `stream` (parallel, resumable counting),
`counts` (totals and checkpoint), `pool` (selection and files), `embed` (text embeddings).
"""

from regionclip_cli.stages.concepts.build import Callbacks, ConceptJob, ConceptReport, build_concept_pool
from regionclip_cli.stages.concepts.embed import EmbedSettings
from regionclip_cli.stages.concepts.parse import DEFAULT_STOP_WORDS, ConceptParser, ParseSettings, concepts_in_doc
from regionclip_cli.stages.concepts.stream import CountSettings, count_concepts

__all__ = [
    "Callbacks", "ConceptJob", "ConceptParser", "ConceptReport", "CountSettings", "DEFAULT_STOP_WORDS",
    "EmbedSettings", "ParseSettings", "build_concept_pool", "concepts_in_doc", "count_concepts",
]
