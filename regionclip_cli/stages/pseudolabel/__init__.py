"""Stage 2: the frozen teacher names each proposed region with its best concept."""
